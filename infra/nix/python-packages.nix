# Python package set extension (nixpkgs' pythonPackagesExtensions): didsession and the
# dependencies nixpkgs lacks or has at other versions than pyproject.toml pins.  Everything
# else (aiohttp, cryptography, segno, redis, gmpy2, numpy, uvloop, pydantic, ...) comes
# from nixpkgs under the same names.
pyfinal: pyprev: {
  aries-askar = pyfinal.callPackage ./aries-askar.nix { };
  did-peer-2 = pyfinal.callPackage ./did-peer-2.nix { };
  did-peer-4 = pyfinal.callPackage ./did-peer-4.nix { };
  didcomm-messaging = pyfinal.callPackage ./didcomm-messaging.nix { };
  mpyc = pyfinal.callPackage ./mpyc.nix { };
  pydid = pyfinal.callPackage ./pydid.nix { };
  didsession = pyfinal.callPackage ./didsession.nix { };
}
