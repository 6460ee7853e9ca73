{
  lib,
  callPackage,
  base58,
}:

callPackage ./pypi-wheel.nix { } {
  pname = "did-peer-2";
  version = "0.1.2";
  url = "https://files.pythonhosted.org/packages/eb/3f/0b52ad724de0e5266005589a43bb0d9ef7d493848479a07ff04f55bb832f/did_peer_2-0.1.2-py3-none-any.whl";
  hash = "sha256-1ZCM2i1St8NEKKQhBEUH14R/15t43INgRBxAj0UH1hI=";
  dependencies = [ base58 ];
  pythonImportsCheck = [ "did_peer_2" ];
  homepage = "https://github.com/dbluhm/did-peer-2";
  license = lib.licenses.asl20;
  description = "did:peer:2 creation and resolution";
}
