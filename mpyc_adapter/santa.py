"""The MPyC program ``didsession demo`` runs: private inputs, their sum and maximum, and a
secret-santa assignment.

    python -m mpyc_adapter santa.py VALUE --didcomm roster.json --didcomm-private-args

Each party gives one private integer VALUE.  Everybody learns the sum, the maximum and
which party holds it, nothing else about the inputs.  Then a random derangement is drawn
in secret (nobody is their own santa) and each party learns only whom it gives a present
to.  VALUE differs per party, so the parties run with ``--didcomm-private-args``.
"""

from __future__ import annotations

import sys


async def main() -> None:
    from mpyc.runtime import mpc

    value = int(sys.argv[1]) if sys.argv[1:] else 0
    secint = mpc.SecInt(32)
    await mpc.start()
    inputs = mpc.input(secint(value))
    total = await mpc.output(mpc.sum(inputs))
    who, biggest = mpc.argmax(inputs)
    print(f"sum of the inputs: {total}", flush=True)
    print(
        f"maximum: {await mpc.output(biggest)}, held by party {await mpc.output(who)}", flush=True
    )
    santa = mpc.random.random_derangement(secint, len(mpc.parties))
    mine = [await mpc.output(santa[i], receivers=i) for i in range(len(mpc.parties))]
    print(f"secret santa: party {mpc.pid} gives a present to party {mine[mpc.pid]}", flush=True)
    await mpc.shutdown()


if __name__ == "__main__":
    from mpyc.runtime import mpc

    mpc.run(main())
