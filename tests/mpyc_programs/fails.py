"""Party 0 raises inside ``async with mpc:`` after a first output; the others go on.

    python fails.py

MPyC's ``__aexit__`` then only closes party 0's connections (no shutdown).  Under plain
TCP the other parties wait for ever; under ``--didcomm`` they must stop, saying why.
"""

from mpyc.runtime import mpc


async def main() -> None:
    secint = mpc.SecInt(32)
    async with mpc:
        xs = mpc.input(secint(mpc.pid + 1))
        print("sum", await mpc.output(mpc.sum(xs)))
        if mpc.pid == 0:
            raise RuntimeError("party 0 fails on purpose")
        print("product", await mpc.output(mpc.prod(xs)))


mpc.run(main())
