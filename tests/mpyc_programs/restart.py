"""Start and shut down the runtime several times, computing in each round.

python restart.py [ROUNDS]   (default 3)
"""

import sys

from mpyc.runtime import mpc


async def main() -> None:
    rounds = int(sys.argv[1]) if sys.argv[1:] else 3
    secint = mpc.SecInt(16)
    results = []
    for r in range(rounds):
        await mpc.start()
        xs = mpc.input(secint(mpc.pid + r))
        results.append(await mpc.output(mpc.prod(xs) + mpc.sum(xs)))
        await mpc.shutdown()
    print(f"parties {len(mpc.parties)} rounds {rounds} results {results}")


mpc.run(main())
