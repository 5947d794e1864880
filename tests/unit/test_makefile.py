"""Unit (make's dry run on a copy of the Makefile): `make demo` says what it installs and how
long the first run takes, and a later run reuses the environment and goes straight to the
sandbox."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from smartapp.config import PROJECT_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _dry_run(where: Path) -> str:
    # Run as a top-level make: under `make test` the inherited MAKEFLAGS/MAKELEVEL would make
    # this a sub-make that prints "Entering/Leaving directory" around its commands.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "demo"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return done.stdout


def test_first_demo_says_what_it_installs_and_a_later_one_reuses_it(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(PROJECT_ROOT / name, tmp_path / name)
    first = _dry_run(tmp_path)
    assert "creating the virtual environment .venv" in first
    assert "installing smartapp into .venv" in first
    assert "Usually 1-3 minutes" in first and "later runs reuse .venv" in first
    assert "generating the sandbox's 24 synthetic patients" in first
    assert "pip install --progress-bar off -e ." in first  # the app alone, not the test tools
    [stamp] = re.findall(r"touch (\.venv/\.installed-app-\d+)", first)

    # As the first run leaves it: the environment, its stamp and the sandbox's patients.
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n", encoding="utf-8")
    python.chmod(0o755)
    (tmp_path / stamp).touch()
    later = os.stat(tmp_path / "pyproject.toml").st_mtime + 1
    os.utime(tmp_path / stamp, (later, later))
    (tmp_path / "instance" / "sandbox").mkdir(parents=True)
    again = _dry_run(tmp_path)
    assert "pip install" not in again
    assert "-m venv" not in again
    assert again.strip().splitlines()[-1] == ".venv/bin/smartapp sandbox --port 8400"
