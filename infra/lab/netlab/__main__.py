"""``python -m netlab`` (what ``infra/lab/lab`` runs)."""

from __future__ import annotations

import sys

from netlab.cli import main

sys.exit(main())
