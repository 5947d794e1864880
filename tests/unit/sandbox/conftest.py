"""Fixtures for the sandbox EHR's unit tests: a populated EHR per test and a SMART client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sandbox_helpers import SmartClient, make_ehr


@pytest.fixture(scope="session")
def populated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder with the population already created, copied for each test."""
    folder = tmp_path_factory.mktemp("sandbox-template")
    app = make_ehr(folder)
    app.extensions["smartapp.sandbox"].store.close()  # checkpoints the WAL into the file
    return folder


@pytest.fixture
def ehr(tmp_path: Path, populated_dir: Path) -> Iterator[Flask]:
    app = make_ehr(tmp_path / "ehr", populated_dir)
    yield app
    app.extensions["smartapp.sandbox"].store.close()


@pytest.fixture
def client(ehr: Flask) -> FlaskClient:
    return ehr.test_client()


@pytest.fixture
def smart(client: FlaskClient) -> SmartClient:
    return SmartClient(client)
