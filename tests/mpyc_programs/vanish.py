"""Party 2 goes quiet in one of three ways; the test decides what happens around it.

    python vanish.py idle     parties 0 and 1 wait for party 2's input; party 2 waits long
                              first (the test cuts party 2's network meanwhile)
    python vanish.py busy     rounds of secure sums without pause (the test cuts party 2's
                              network meanwhile)
    python vanish.py block S  party 0 inputs 100,000 numbers; party 2 then stops its event
                              loop for S seconds (a long local computation) before reading
                              them: slow, not gone; prints the sum

Each party prints "computing" once every link is up.
"""

import asyncio
import sys
import time

from mpyc.runtime import mpc


async def main() -> None:
    mode = sys.argv[1]
    secint = mpc.SecInt(64)
    await mpc.start()
    print("computing", flush=True)
    if mode == "idle":
        if mpc.pid == 2:
            await asyncio.sleep(600)
        print(await mpc.output(mpc.input(secint(5), senders=2)))
    elif mode == "busy":
        for r in range(10**9):
            await mpc.output(mpc.sum(mpc.input(secint(r))))
    else:
        n = 100_000
        xs = mpc.input([secint(i) for i in range(n)], senders=0)  # only party 0's count
        if mpc.pid == 2:
            time.sleep(float(sys.argv[2]))
        print("sum", await mpc.output(mpc.sum(xs)), flush=True)
    await mpc.shutdown()


mpc.run(main())
