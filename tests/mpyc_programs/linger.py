"""Start MPyC, stay connected for SECONDS, then report how many of this party's links
``didsession status`` shows as open (for the test of when links are published).

    python linger.py [SECONDS]   (default 1.5)
"""

import asyncio
import os
import sys
from pathlib import Path

from mpyc.runtime import mpc

from didsession.identity import default_home
from didsession.status import read_statuses


async def main() -> None:
    await mpc.start()
    await asyncio.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 1.5)
    home = Path(os.environ.get("DIDSESSION_HOME") or default_home())
    mine = [
        s
        for s in read_statuses(home)
        if s.program == f"mpyc party {mpc.pid}" and s.state == "open" and s.pid == os.getpid()
    ]
    print(f"party {mpc.pid} links in status: {len(mine)}")
    await mpc.shutdown()


mpc.run(main())
