{
  lib,
  callPackage,
  base58,
  pydid,
  aries-askar,
  did-peer-2,
  did-peer-4,
}:

# pyproject.toml asks for didcomm-messaging[askar]: the askar extra is aries-askar.
callPackage ./pypi-wheel.nix { } {
  pname = "didcomm-messaging";
  version = "0.1.1";
  url = "https://files.pythonhosted.org/packages/8d/38/7a48af62f201a111f52a6f8d35eb367632e21f0e8b0e4ead8bddac6be8c9/didcomm_messaging-0.1.1-py3-none-any.whl";
  hash = "sha256-U1AAbTqS4IXdIIrdc41kOcKwqVDB/hkBHs5x3gV0zBo=";
  dependencies = [
    base58
    pydid
    aries-askar
    did-peer-2
    did-peer-4
  ];
  pythonImportsCheck = [ "didcomm_messaging" ];
  homepage = "https://github.com/Indicio-tech/didcomm-messaging-python";
  license = lib.licenses.asl20;
  description = "DIDComm v2 messaging with pluggable crypto (askar) and resolvers";
}
