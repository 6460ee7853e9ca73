# The nixpkgs overlay of this repository (flake output overlays.default).
#
#   pkgs.didsession           the `didsession` command (and the library)
#   pkgs.didsession-mediator  the same build; its main program is `didsession-mediator`
#   pkgs.didsession-python    python3 with didsession and MPyC: `python prog.py --didcomm ...`
#   python3Packages.didsession and the dependencies nixpkgs does not carry
final: prev: {
  pythonPackagesExtensions = (prev.pythonPackagesExtensions or [ ]) ++ [
    (import ./python-packages.nix)
  ];

  didsession = final.python3Packages.toPythonApplication final.python3Packages.didsession;

  # meta only: the same store path as didsession, so `lib.getExe` names the mediator.
  didsession-mediator = final.didsession.overrideAttrs (old: {
    meta = old.meta // {
      mainProgram = "didsession-mediator";
    };
  });

  didsession-python = final.python3.withPackages (ps: [ ps.didsession ]);
}
