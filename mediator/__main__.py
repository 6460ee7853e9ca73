"""``didsession-mediator``: the DIDComm v2 mediator, STUN server and session relay.

Not built yet (issue 4).  The entry point exists so that packaging and the CLI layout are
fixed; it says so plainly instead of pretending to serve.
"""

from __future__ import annotations

import sys


def main() -> int:
    print(
        "didsession-mediator: not implemented yet (mediation, STUN and relay come with the "
        "mediator issue)",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
