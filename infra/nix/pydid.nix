{
  lib,
  callPackage,
  inflection,
  pydantic,
  typing-extensions,
}:

callPackage ./pypi-wheel.nix { } {
  pname = "pydid";
  version = "0.5.3";
  url = "https://files.pythonhosted.org/packages/01/92/4965d0d736df5f57c758621153aa37c6a44f9cb77d1fa660b11705bf895c/pydid-0.5.3-py3-none-any.whl";
  hash = "sha256-rYhe0fy8ScNWGj9Br3HQb99w8FLtqw7b/KKmnleIORg=";
  dependencies = [
    inflection
    pydantic
    typing-extensions
  ];
  pythonImportsCheck = [ "pydid" ];
  homepage = "https://github.com/Indicio-tech/pydid";
  license = lib.licenses.asl20;
  description = "Python library for validating, constructing, and representing DIDs and DID Documents";
}
