"""Secure NumPy arrays (``mpc.np_*``): input, matrix product, sum, max, argmax, sort.

    python arrays.py [N]      N x N matrices (default 6)

Deterministic output (inputs derive from the party ids), compared across transports.
"""

import sys

import numpy as np
from mpyc.runtime import mpc


async def main() -> None:
    n = int(sys.argv[1]) if sys.argv[1:] else 6
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
    print(f"parties {len(mpc.parties)} n {n} arrays {results}")
    await mpc.shutdown()


mpc.run(main())
