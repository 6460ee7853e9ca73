"""setuptools commands that install ``didsession-mpyc.pth`` at the top of site-packages.

Named in ``pyproject.toml`` (``[tool.setuptools.cmdclass]``).  A ``.pth`` file must sit in
site-packages itself, where wheels put only packages: ``build_py`` adds it to the wheel's
root, and ``editable_wheel`` (``pip install -e``) adds it to the editable wheel, which holds
no package files.  Its one line is :data:`PTH_LINE` (kept here, not in a data file, so
that a build from an sdist has it too); see :mod:`mpyc_adapter.hook` for what it does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from setuptools.command.build_py import build_py as _build_py

PTH = "didsession-mpyc.pth"
# Run by site.py at every interpreter start: one scan of the arguments; the hook is
# imported only for -H/--HELP or a --didcomm... option.
PTH_LINE = (
    'import sys; any(a.startswith("--didcomm") or a in ("-H", "--HELP") for a in sys.argv[1:])'
    ' and __import__("mpyc_adapter.hook").hook.activate()\n'
)


class build_py(_build_py):
    def run(self) -> None:
        super().run()
        Path(self.build_lib, PTH).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


try:
    from setuptools.command.editable_wheel import editable_wheel as _editable_wheel
except ImportError:  # setuptools < 64: no PEP 660 editable installs
    editable_wheel: Any = None
else:

    class editable_wheel(_editable_wheel):  # type: ignore[no-redef]
        def _run_build_commands(self, dist_name: str, unpacked_wheel: str, *args: Any) -> Any:
            result = super()._run_build_commands(dist_name, unpacked_wheel, *args)
            Path(unpacked_wheel, PTH).write_text(PTH_LINE)
            return result
