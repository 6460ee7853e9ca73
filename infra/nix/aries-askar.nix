# aries-askar ships its Rust library (libaries_askar.so) inside platform wheels; it needs
# only glibc and libgcc_s, which autoPatchelfHook points at the Nix store.  Building it from
# source would need a cargo vendor hash per release for no gain here.
{
  lib,
  stdenv,
  buildPythonPackage,
  fetchurl,
  autoPatchelfHook,
}:

let
  wheels = {
    x86_64-linux = {
      url = "https://files.pythonhosted.org/packages/11/b8/d7e8ea1cc6619e8731c941080cc22f3e55ae3b355c8c3134b9c1eb11ff46/aries_askar-0.5.0-py3-none-manylinux2014_x86_64.whl";
      hash = "sha256-7nNrJKz3JLhmuxvYtksHWAaznPanqzW2aPEvv3/9oHc=";
    };
    aarch64-linux = {
      url = "https://files.pythonhosted.org/packages/5a/97/f621b4133d59ccc72321696815c1e627b23d8a484553ced7c534804fface/aries_askar-0.5.0-py3-none-manylinux2014_aarch64.whl";
      hash = "sha256-vlvByJ2WM+wdniAiL5f0x4o0X2dfglUpvcKBA74p9ro=";
    };
  };
  system = stdenv.hostPlatform.system;
in
buildPythonPackage {
  pname = "aries-askar";
  version = "0.5.0";
  format = "wheel";
  src = fetchurl (wheels.${system} or (throw "aries-askar: no wheel for ${system}"));
  nativeBuildInputs = [ autoPatchelfHook ];
  buildInputs = [ stdenv.cc.cc.lib ];
  pythonImportsCheck = [ "aries_askar" ];
  meta = {
    homepage = "https://github.com/openwallet-foundation/askar";
    license = lib.licenses.asl20;
    description = "Secure key storage and cryptography for Aries (Askar), Python wrapper and library";
    platforms = builtins.attrNames wheels;
  };
}
