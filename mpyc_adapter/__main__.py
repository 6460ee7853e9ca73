"""``python -m mpyc_adapter PROGRAM.py [ARGS]`` (or ``-m MODULE``): run an unmodified MPyC
program with the ``--didcomm`` hook installed, whether or not ``didsession-mpyc.pth`` is.

    python -m mpyc_adapter prog.py --didcomm roster.json -I 1
    python -m mpyc_adapter prog.py -M3 --didcomm
    python -m mpyc_adapter -m mypackage.prog --didcomm roster.json
"""

from __future__ import annotations

import os
import runpy
import sys

from mpyc_adapter.hook import install

USAGE = """usage: python -m mpyc_adapter PROGRAM.py [ARGS ...]
       python -m mpyc_adapter -m MODULE [ARGS ...]

Runs an MPyC program with '--didcomm' available: every link between the parties is an
authenticated, encrypted didsession session.  MPyC options and the --didcomm options
go in ARGS, as they would after 'python PROGRAM.py'; '-H' lists them all.

  --didcomm ROSTER [-I i]   this party of the roster (identity from its didsession home)
  -M m --didcomm            m local parties with fresh identities"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    install()
    if args[0] == "-m":
        if len(args) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = [args[1], *args[2:]]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        return 0
    program = args[0]
    if not os.path.isfile(program):
        print(f"didsession: error: no such program: {program}", file=sys.stderr)
        return 2
    sys.argv = args
    sys.path[0] = os.path.dirname(os.path.abspath(program))
    runpy.run_path(program, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
