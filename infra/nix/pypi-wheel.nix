# Pure-Python dependencies that nixpkgs does not carry (or not at the version pyproject.toml
# pins), installed from their PyPI wheels.  Each file below is one call of this function.
#
# Wheels, not sdists: they need no build backend, so the derivations stay small and do not
# guess at each project's build requirements.  `url` and `hash` are the exact file and the
# sha256 PyPI's simple index lists for it.
{
  lib,
  buildPythonPackage,
  fetchurl,
}:

{
  pname,
  version,
  url,
  hash,
  dependencies ? [ ],
  pythonImportsCheck ? [ ],
  homepage,
  license,
  description,
}:

buildPythonPackage {
  inherit
    pname
    version
    dependencies
    pythonImportsCheck
    ;
  format = "wheel";
  src = fetchurl { inherit url hash; };
  meta = {
    inherit homepage license description;
  };
}
