"""The lab's errors: one tree, each saying what went wrong in words a person can act on."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["CommandError", "ConfigError", "LabError", "NotRunningError"]


class LabError(Exception):
    """Anything the lab cannot do."""


class ConfigError(LabError):
    """The config (file, dict or flags) does not describe a lab that can be built."""


class NotRunningError(LabError):
    """No lab of that name is up (no state file)."""


class CommandError(LabError):
    """A system command the lab ran failed; carries its argv and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()}")
