{
  lib,
  callPackage,
  base58,
}:

callPackage ./pypi-wheel.nix { } {
  pname = "did-peer-4";
  version = "0.1.4";
  url = "https://files.pythonhosted.org/packages/f2/f7/b1f05783f24fe09aef2e8e6f45b08de699e68031c7ec953cf488653334b2/did_peer_4-0.1.4-py3-none-any.whl";
  hash = "sha256-TCu0KlXk/sCP4AihWF2y8R/hnjYSH4kZmRrdAn18gW8=";
  dependencies = [ base58 ];
  pythonImportsCheck = [ "did_peer_4" ];
  homepage = "https://github.com/dbluhm/did-peer-4";
  license = lib.licenses.asl20;
  description = "did:peer:4 creation and resolution";
}
