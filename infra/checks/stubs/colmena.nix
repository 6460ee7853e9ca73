# A stand-in for the colmena flake input.
{
  lib.makeHive = hive: {
    _type = "colmenaHive";
    inherit hive;
  };
  packages = {
    x86_64-linux.colmena = {
      type = "derivation";
      name = "colmena";
    };
    aarch64-linux.colmena = {
      type = "derivation";
      name = "colmena";
    };
  };
}
