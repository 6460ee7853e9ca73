# A stand-in for `import nixpkgs { system; overlays; }`: the packages infra/ refers to, as
# records.  Python packages are built by a stub buildPythonPackage through a callPackage
# that, like nixpkgs', passes each function argument from the package set: an argument
# that neither this repository's pythonPackagesExtensions nor `nixpkgsPython` below
# provides fails the evaluation.  `nixpkgsPython` is our claim about nixpkgs' Python
# package names (checked against nixpkgs only where Nix and the network are).
{
  system ? "x86_64-linux",
  overlays ? [ ],
  ...
}:

let
  lib = import ../lib.nix;

  fix = f: let x = f x; in x;

  drv =
    name: extra:
    let
      self = {
        type = "derivation";
        inherit name;
        outPath = "/nix/store/stub-${name}";
        meta = { };
        overrideAttrs = f: self // (f self);
      } // extra;
    in
    self;

  callPackageWith =
    scope: fn: overrides:
    let
      f = if builtins.isFunction fn then fn else import fn;
      args = builtins.intersectAttrs (builtins.functionArgs f) scope;
    in
    f (args // overrides);

  nixpkgsPython = [
    "aiohttp"
    "base58"
    "cryptography"
    "gmpy2"
    "inflection"
    "numpy"
    "pydantic"
    "redis"
    "segno"
    "setuptools"
    "typing-extensions"
    "uvloop"
  ];

  base = final: {
    inherit lib system;
    stdenv = {
      hostPlatform.system = system;
      cc.cc.lib = drv "gcc-lib" { };
    };
    fetchurl = args: drv "fetchurl" { inherit (args) url hash; };
    autoPatchelfHook = drv "autoPatchelfHook" { };
    openssh = drv "openssh" { };
    opentofu = drv "opentofu" { };
    pssh = drv "pssh" { };
    shellcheck = drv "shellcheck" { };
    jq = drv "jq" { };
    curl = drv "curl" { };
    coturn = drv "coturn" { };
    callPackage = callPackageWith final;
    runCommand = name: env: script: drv name { inherit script; };
    writeShellApplication = args: drv args.name { inherit (args) text; };
    mkShell = args: drv "shell" { inherit (args) packages; };
    testers.runNixOSTest = test: drv "nixos-test" { inherit test; };
    formats.toml = _: {
      type = lib.types.attrsOf (lib.types.str);
      generate = name: value: drv name { settings = value; };
    };
    extend = overlay: import ./. {
      inherit system;
      overlays = overlays ++ [ overlay ];
    };

    pythonPackagesExtensions = [ ];
    python3Packages = fix (
      py:
      builtins.foldl' (acc: ext: acc // ext py acc) (
        builtins.listToAttrs (map (n: lib.nameValuePair n (drv "python3-${n}" { pname = n; })) nixpkgsPython)
        // {
          callPackage = callPackageWith (final // py);
          pythonOlder = _: false;
          buildPythonPackage =
            attrs:
            drv "python3-${attrs.pname}-${attrs.version}" (
              attrs
              // {
                meta = attrs.meta or { };
              }
            );
          toPythonApplication = pkg: pkg // { application = true; };
        }
      ) final.pythonPackagesExtensions
    );
    python3 = drv "python3" {
      pkgs = final.python3Packages;
      withPackages = f: drv "python3-env" { packages = f final.python3Packages; };
    };
  };
in
fix (final: builtins.foldl' (acc: overlay: acc // overlay final acc) (base final) overlays)
