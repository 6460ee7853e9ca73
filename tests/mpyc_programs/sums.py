"""Sum and maximum of private inputs, then N rounds of scalar secure operations.

    python sums.py [N]        N secure multiplications and comparisons (default 200)

Each party's input is derived from its party id, so the output is deterministic: a run
over --didcomm must print exactly what a plain TCP run prints.
"""

import sys

from mpyc.runtime import mpc


async def main() -> None:
    n = int(sys.argv[1]) if sys.argv[1:] else 200
    secint = mpc.SecInt(32)
    await mpc.start()
    xs = mpc.input(secint(7 * mpc.pid + 3))
    total = await mpc.output(mpc.sum(xs))
    biggest = await mpc.output(mpc.max(xs))
    acc = secint(0)
    below = secint(0)
    for i in range(n):
        x = xs[i % len(xs)]
        acc = acc + x * (i % 5)
        below = below + (x < i % 23)
        if i % 100 == 99:
            await mpc.barrier()  # bounds how much MPyC schedules at once
    print(
        f"parties {len(mpc.parties)} sum {total} max {biggest} "
        f"acc {await mpc.output(acc)} below {await mpc.output(below)}"
    )
    await mpc.shutdown()


mpc.run(main())
