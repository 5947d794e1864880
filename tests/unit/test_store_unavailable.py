"""Unit (Flask test client, a real SQLite file locked by another connection): a locked store
answers 503 `store_unavailable` with a clear JSON error after a bounded wait, not a 500
after 30 s, and the same request succeeds once the lock is gone."""

from __future__ import annotations

import os
import sqlite3

import pytest

import smartapp.db
from smartapp import create_app
from smartapp.fhir.cache import SnapshotCache
from tests.conftest import make_settings
from tests.unit.notes.views_support import fixture_snapshot, launch

pytestmark = pytest.mark.skipif(
    os.environ.get("SMARTAPP_TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="about a SQLite file",
)


def test_a_locked_store_answers_503_and_recovers(tmp_path, monkeypatch):
    monkeypatch.setattr(smartapp.db, "SQLITE_WAIT_SECONDS", 0.5)
    path = tmp_path / "locked.db"
    app = create_app(make_settings(tmp_path, SMARTAPP_DATABASE_URL=f"sqlite:///{path}"))
    app.config["TESTING"] = True
    db = app.extensions["smartapp.db"]
    client = app.test_client()
    holder = sqlite3.connect(path, timeout=0.1)
    try:
        context = launch(app, client)
        SnapshotCache(db, ttl_seconds=600).put(context.session_id, fixture_snapshot())
        [first, *_] = client.get("/api/suggestions").get_json()["suggestions"]
        url = f"/api/suggestions/{first['id']}/feedback"
        headers = {"X-CSRF-Token": context.csrf_token}
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
        locked = client.post(url, json={"action": "accept"}, headers=headers)
        assert locked.status_code == 503
        error = locked.get_json()["error"]
        assert error["code"] == "store_unavailable"
        assert "not recorded" in error["message"]
        holder.rollback()
        again = client.post(url, json={"action": "accept"}, headers=headers)
        assert again.status_code == 200, again.get_data(as_text=True)
    finally:
        holder.close()
        db.dispose()
