"""Child processes that must not outlive the process that started them (Linux).

Local mode's parties ignore the signals that would stop them (party 0 kills them, see
:mod:`mpyc_adapter.launcher`), and the embedded mediator runs in its own session (see
:mod:`mpyc_adapter.embedded`): if their parent dies without cleaning up (SIGKILL, the
out-of-memory killer), nothing else would stop them.  ``PR_SET_PDEATHSIG`` makes the
kernel kill them then (strictly: when the parent *thread* that started them ends, so
start such children from the main thread).  The parent names itself in :data:`PARENT_ENV`; a child whose
parent is already gone by the time it asks exits at once.

``python -m mpyc_adapter.lifetime MODULE ARG...`` runs ``python -m MODULE ARG...`` that way.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import signal
import sys

__all__ = ["PARENT_ENV", "child_env", "die_with_parent"]

PARENT_ENV = "DIDSESSION_PARENT_PID"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) naming this process as the parent."""
    return dict(os.environ if env is None else env, **{PARENT_ENV: str(os.getpid())})


def die_with_parent() -> None:
    """If :data:`PARENT_ENV` names a parent: be killed when it dies, or exit now if it
    already has.  Elsewhere than Linux, only the second part works."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if str(os.getppid()) != parent:
        raise SystemExit(1)


if __name__ == "__main__":
    die_with_parent()
    del sys.argv[0]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
