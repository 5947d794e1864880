"""Integration: the wheel built from the project deploys outside the checkout.

The wheel and the sdist are built from a copy of the project's files (nothing is written
into the checkout), the wheel is installed into a fresh virtual environment in a temporary
folder — its dependencies come from the shared environment through a `.pth` line, since
the machine has no package index to install them from — then `smartapp db upgrade` and
`smartapp serve` run from there, and a real EHR launch from the sandbox EHR loads the
sidebar page, its script and the suggestions.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from smartapp.config import PROJECT_ROOT
from smartapp.sandbox.ehr import create_ehr_app
from smartapp.sandbox.server import BackgroundServer
from tests.integration.conftest import ehr_launch

pytestmark = pytest.mark.integration

#: What a build needs from the checkout (tests, docs and the venv stay behind).
SOURCES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "launch.json",
    "smartapp",
    "static",
    "config",
)


def _build(tmp_path: Path) -> tuple[Path, Path]:
    """The wheel and the sdist, built by setuptools from a copy of the project's files."""
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_shipped")
    for name in SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    dist = tmp_path / "dist"
    dist.mkdir()
    # One process per build: setuptools keeps a command's options between the two.
    wheel_name, sdist_name = (_run_build(source, dist, hook) for hook in ("wheel", "sdist"))
    return dist / wheel_name, dist / sdist_name


def _run_build(source: Path, dist: Path, hook: str) -> str:
    script = (
        "import sys; from setuptools import build_meta as b; "
        f"print('BUILT', b.build_{hook}(sys.argv[1]))"
    )
    built = subprocess.run(
        [sys.executable, "-c", script, str(dist)],
        cwd=source,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    [line] = [x for x in built.stdout.splitlines() if x.startswith("BUILT ")]
    return line.split()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMARTAPP_", "PYTHON"))}
    env.update(extra)
    return env


def _venv(tmp_path: Path, wheel: Path) -> Path:
    """A fresh environment with the wheel installed; dependencies from the shared one."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Appended after the venv's own site-packages: the wheel's smartapp is found first.
    Path(own, "zz_shared_dependencies.pth").write_text(
        sysconfig.get_path("purelib") + "\n", encoding="utf-8"
    )
    return venv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class _Sites:
    """The two URLs `ehr_launch` needs."""

    ehr_url: str
    app_url: str


def test_the_wheel_carries_what_the_app_serves(tmp_path: Path) -> None:
    wheel, sdist = _build(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "smartapp/_shipped/launch.json",
        "smartapp/_shipped/static/js/sidebar.js",
        "smartapp/_shipped/static/css/app.css",
        "smartapp/templates/sidebar.html",
        "smartapp/migrations/env.py",
        "smartapp/migrations/script.py.mako",
        "smartapp/sandbox/static/ehr.css",
        "smartapp/clinical/data/assessment.toml",
    ):
        assert expected in names, expected
    assert any(n.startswith("smartapp/migrations/versions/0001") for n in names)
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    for expected in (
        "launch.json",
        "setup.py",
        "static/js/sidebar.js",
        "smartapp/templates/sidebar.html",
        "smartapp/migrations/env.py",
        "config/site.example.toml",
    ):
        assert expected in members, expected


def test_the_installed_wheel_serves_the_sidebar_after_an_ehr_launch(
    tmp_path: Path, sandbox_template: Path
) -> None:
    wheel, _ = _build(tmp_path)
    venv = _venv(tmp_path, wheel)
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import smartapp; print(smartapp.__file__)"],
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(venv)), where  # not the checkout's package

    port = _free_port()
    app_url = f"http://127.0.0.1:{port}"
    data_dir = tmp_path / "sandbox"
    shutil.copytree(sandbox_template, data_dir)
    ehr_server = BackgroundServer("127.0.0.1", 0, public_host="localhost")
    manifest = json.loads((PROJECT_ROOT / "launch.json").read_text(encoding="utf-8"))
    ehr = create_ehr_app(
        data_dir=data_dir, ehr_base_url=ehr_server.url, app_base_url=app_url, manifest=manifest
    )
    ehr_server.set_app(ehr)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = _clean_env(
        SMARTAPP_INSTANCE_PATH=str(run_dir / "instance"),
        SMARTAPP_ALLOWED_ISSUERS=f"{ehr_server.url}/fhir",
        SMARTAPP_PUBLIC_URL=app_url,
        SMARTAPP_SECRET_KEY="wheel-test-secret-key",
        SMARTAPP_DATABASE_URL=f"sqlite:///{run_dir / 'app.db'}",
        SMARTAPP_LOG_FORMAT="text",
    )
    smartapp = str(venv / "bin" / "smartapp")
    upgraded = subprocess.run(
        [smartapp, "db", "upgrade"],
        env=env,
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    assert "at head" in upgraded.stdout

    ehr_server.start()
    server = subprocess.Popen(
        [smartapp, "serve", "--port", str(port)],
        env=env,
        cwd=run_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in server.stderr],  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        seen: list[str] = []
        while not any("Serving on" in line for line in seen):
            seen.append(lines.get(timeout=120))  # waitress says so once it listens
        launched = ehr_launch(_Sites(ehr_url=ehr_server.url, app_url=app_url))  # type: ignore[arg-type]
        assert "/static/js/sidebar.js" in launched.page.text
        script = launched.session.get(f"{app_url}/static/js/sidebar.js", timeout=30)
        assert script.status_code == 200 and "clinician sidebar" in script.text
        css = launched.session.get(f"{app_url}/static/css/app.css", timeout=30)
        assert css.status_code == 200
        drafted = launched.api("GET", "/api/suggestions", headers={"X-CSRF-Token": launched.csrf})
        assert drafted.status_code == 200, drafted.text[:500]
        assert drafted.json()["suggestions"], "the installed engines and their data draft"
        ready = requests.get(f"{app_url}/readyz", timeout=30)
        assert ready.status_code == 200, ready.text
    finally:
        server.terminate()
        server.wait(timeout=30)
        assert server.stderr is not None
        server.stderr.close()
        ehr_server.stop()
