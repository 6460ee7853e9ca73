# didsession, its mediator and the MPyC adapter: one Python distribution, built from the
# repository's pyproject.toml (setuptools, PEP 517).  It installs three commands' worth of
# code: `didsession`, `didsession-mediator`, and the `--didcomm` hook for MPyC programs
# (mpyc_adapter/didsession-mpyc.pth at the top of site-packages).
{
  lib,
  buildPythonPackage,
  pythonOlder,
  setuptools,
  # runtime, in pyproject.toml's order
  didcomm-messaging,
  did-peer-2,
  did-peer-4,
  aries-askar,
  pydid,
  base58,
  cryptography,
  segno,
  aiohttp,
  redis,
  mpyc,
  gmpy2,
  numpy,
  # optional: the mediator runs on uvloop when it is there
  uvloop,
}:

let
  root = ../..;
  pyproject = lib.importTOML (root + "/pyproject.toml");
in
buildPythonPackage {
  pname = "didsession";
  inherit (pyproject.project) version;
  pyproject = true;
  disabled = pythonOlder "3.11";

  # Only what the wheel is built from: editing infra/ or tests/ does not rebuild it.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (root + "/pyproject.toml")
      (root + "/README.md")
      (root + "/didsession")
      (root + "/mediator")
      (root + "/mpyc_adapter")
    ];
  };

  build-system = [ setuptools ];

  dependencies = [
    didcomm-messaging
    did-peer-2
    did-peer-4
    aries-askar
    pydid
    base58
    cryptography
    segno
    aiohttp
    redis
    mpyc
    gmpy2
    numpy
    uvloop
  ];

  # The test suite drives network namespaces, coturn, Redis and real sockets: it runs in the
  # repository (./run test), not in the sandbox.  Here (buildPythonPackage runs `checkPhase`
  # after installation): the modules import and the commands start.
  pythonImportsCheck = [
    "didsession"
    "mediator"
    "mpyc_adapter"
  ];
  checkPhase = ''
    runHook preCheck
    export HOME=$TMPDIR
    $out/bin/didsession --version
    $out/bin/didsession-mediator --help > /dev/null
    # `python prog.py --didcomm ...` works through this file at the top of site-packages.
    find $out -name didsession-mpyc.pth | grep -q .
    runHook postCheck
  '';

  meta = {
    description = "DIDComm v2 identities, invitations and fast symmetric sessions for MPyC parties behind NAT";
    license = lib.licenses.mit;
    mainProgram = "didsession";
    platforms = lib.platforms.linux;
  };
}
