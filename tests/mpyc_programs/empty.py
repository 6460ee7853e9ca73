"""Start and stop MPyC, computing nothing: what a run costs before and after the work.

    python empty.py -M3                 # plain TCP
    python empty.py -M3 --didcomm       # over sessions

bench/mpyc.py runs it as the ``startup`` program (``--programs startup``).
"""

from mpyc.runtime import mpc

mpc.run(mpc.start())
print(f"parties {len(mpc.parties)} started and stopped")
mpc.run(mpc.shutdown())
