"""The test workload: scalar, NumPy and large-message sections, one runtime start each.

    python workload.py [SCALARS] [N] [ELEMENTS]   (defaults 1000, 6, 100000)

* scalar: SCALARS rounds of a secure multiplication and a secure comparison (thousands of
  small messages);
* arrays: N x N secure integer matrices through ``mpc.np_*`` (product, sum, max, argmax,
  sort, minimum);
* large: a secure array of ELEMENTS 64-bit integers input and output whole (messages of
  more than 1 MB with the default).

Every section starts and shuts the runtime down (repeated start/shutdown).  Inputs derive
from the party ids, so the output is deterministic: runs over any transport must print the
same lines.  The last line is the largest message MPyC sent, in bytes.
"""

import hashlib
import sys

import numpy as np
from mpyc import asyncoro
from mpyc.runtime import mpc

largest = 0
_send = asyncoro.MessageExchanger.send


def _counting_send(self, pc, payload):
    global largest
    largest = max(largest, len(payload))
    _send(self, pc, payload)


asyncoro.MessageExchanger.send = _counting_send


async def scalar(rounds: int) -> str:
    secint = mpc.SecInt(32)
    await mpc.start()
    xs = mpc.input(secint(7 * mpc.pid + 3))
    total = await mpc.output(mpc.sum(xs))
    biggest = await mpc.output(mpc.max(xs))
    acc = secint(0)
    below = secint(0)
    for i in range(rounds):
        x = xs[i % len(xs)]
        acc = acc + x * (i % 5)
        below = below + (x < i % 23)
        if i % 100 == 99:
            await mpc.barrier()  # bounds how much MPyC schedules at once
    line = f"scalar: sum {total} max {biggest} acc {await mpc.output(acc)} below {await mpc.output(below)}"
    await mpc.shutdown()
    return line


async def arrays(n: int) -> str:
    secint = mpc.SecInt(32)
    await mpc.start()
    mine = np.arange(n * n, dtype=np.int64).reshape(n, n) % 7 + mpc.pid
    shares = mpc.input(secint.array(mine))
    total = shares[0]
    for a in shares[1:]:
        total = total + a
    product = total @ total.T
    flat = product.reshape(n * n)
    results = [
        await mpc.output(mpc.np_sum(product)),
        await mpc.output(mpc.np_amax(flat)),
        await mpc.output(mpc.np_argmax(flat)),
        (await mpc.output(mpc.np_sort(total[0]))).tolist(),
        (await mpc.output(mpc.np_minimum(total[0], total[1]))).tolist(),
    ]
    await mpc.shutdown()
    return f"arrays: {results}"


async def large(elements: int) -> str:
    secint = mpc.SecInt(64)
    await mpc.start()
    shares = mpc.input(secint.array(np.arange(elements, dtype=np.int64) * (mpc.pid + 1)))
    total = shares[0]
    for x in shares[1:]:
        total = total + x
    out = await mpc.output(total * 2)
    digest = hashlib.sha256(np.asarray(out, dtype=np.int64).tobytes()).hexdigest()[:16]
    await mpc.shutdown()
    return f"large: last {int(out[-1])} digest {digest}"


async def main() -> None:
    args = [int(a) for a in sys.argv[1:]]
    rounds, n, elements = args + [1000, 6, 100_000][len(args) :]
    print(f"parties {len(mpc.parties)}")
    print(await scalar(rounds))
    print(await arrays(n))
    print(await large(elements))
    print(f"largest message {largest}")


mpc.run(main())
