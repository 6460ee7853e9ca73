"""Large messages: secure arrays of N elements; input and output send them whole.

    python large.py [N]       elements (default 100000: messages of more than 1 MB)

Prints the size of the largest message MPyC sent (so a test can check that more than
1 MB went out at once) and a digest of the result.
"""

import hashlib
import sys

import numpy as np
from mpyc import asyncoro
from mpyc.runtime import mpc

largest = 0
_send = asyncoro.MessageExchanger.send


def send(self, pc, payload):
    global largest
    largest = max(largest, len(payload))
    _send(self, pc, payload)


asyncoro.MessageExchanger.send = send


async def main() -> None:
    n = int(sys.argv[1]) if sys.argv[1:] else 100_000
    secint = mpc.SecInt(64)
    await mpc.start()
    shares = mpc.input(secint.array(np.arange(n, dtype=np.int64) * (mpc.pid + 1)))
    total = shares[0]
    for x in shares[1:]:
        total = total + x
    out = await mpc.output(total * 2)
    digest = hashlib.sha256(np.asarray(out, dtype=np.int64).tobytes()).hexdigest()[:16]
    print(f"parties {len(mpc.parties)} n {n} last {int(out[-1])} digest {digest}")
    print(f"largest message {largest} bytes")
    await mpc.shutdown()


mpc.run(main())
