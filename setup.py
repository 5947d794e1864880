"""Build hook: the wheel carries what the checkout keeps at its root.

`static/` (the sidebar's JS and CSS) and `launch.json` (the registration manifest) live at
the repository root, where IT and the contract expect them; the package looks for them
there in a checkout and in `smartapp/_shipped/` when installed (`smartapp.config`).
Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
#: Copied from the repository root into the built package, as `smartapp/_shipped/<name>`.
SHIPPED = ("static", "launch.json")


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "smartapp" / "_shipped"
        for name in SHIPPED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)


setup(cmdclass={"build_py": BuildWithShippedFiles})
