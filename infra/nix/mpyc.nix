{
  lib,
  callPackage,
  gmpy2,
  numpy,
}:

# MPyC 0.11 exactly: the didsession adapter (mpyc_adapter/) wraps its runtime's start-up.
callPackage ./pypi-wheel.nix { } {
  pname = "mpyc";
  version = "0.11";
  url = "https://files.pythonhosted.org/packages/ed/73/20bb0cb69fdaf1f0b3e8f73f41b3ab3c0897ca2c4c565761231128912ea8/mpyc-0.11-py3-none-any.whl";
  hash = "sha256-BZ/6M5YInrt3vrQ+ovgEDyog8/x/9tPIOd87Pzwo044=";
  # Optional for MPyC, required by didsession's pyproject.toml.
  dependencies = [
    gmpy2
    numpy
  ];
  pythonImportsCheck = [ "mpyc" ];
  homepage = "https://github.com/lschoe/mpyc";
  license = lib.licenses.mit;
  description = "Multiparty computation in Python";
}
