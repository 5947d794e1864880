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


class LockingEHR:
    """Takes the note, then another process locks the app's store before the app can
    record that the EHR has it."""

    def __init__(self, path) -> None:
        self.path = path
        self.holder: sqlite3.Connection | None = None
        self.bundles: list[dict] = []

    def capabilities(self) -> dict:
        return {"rest": [{"mode": "server", "interaction": [{"code": "transaction"}]}]}

    def transaction(self, bundle: dict) -> dict:
        self.bundles.append(bundle)
        self.holder = sqlite3.connect(self.path, timeout=0.1)
        self.holder.execute("BEGIN EXCLUSIVE")
        return {
            "entry": [
                {"response": {"location": "DocumentReference/doc1/_history/1"}},
                {"response": {"location": "Provenance/prov1/_history/1"}},
            ]
        }


def test_a_store_failing_after_the_note_is_committed_still_says_it_is_kept(tmp_path, monkeypatch):
    """Never "not recorded" about a note that is: the answer is what the store holds."""
    from smartapp.notes.models import SavedNote
    from smartapp.notes.service import SidebarService
    from tests.unit.notes.views_support import SnapshotSource

    monkeypatch.setattr(smartapp.db, "SQLITE_WAIT_SECONDS", 0.5)
    path = tmp_path / "locked-later.db"
    app = create_app(make_settings(tmp_path, SMARTAPP_DATABASE_URL=f"sqlite:///{path}"))
    app.config["TESTING"] = True
    db = app.extensions["smartapp.db"]
    ehr = LockingEHR(path)
    real = app.extensions["smartapp.sidebar"]
    app.extensions["smartapp.sidebar"] = SidebarService(
        database=db,
        snapshots=SnapshotSource(fixture_snapshot()),
        drafter=real._drafter,
        fhir_for=lambda _launch: ehr,
        note_layout=real.note_layout,
        summary_config=real.summary_config,
    )
    client = app.test_client()
    try:
        context = launch(app, client)
        headers = {"X-CSRF-Token": context.csrf_token}
        [first, *_] = client.get("/api/suggestions", headers=headers).get_json()["suggestions"]
        client.post(
            f"/api/suggestions/{first['id']}/feedback", json={"action": "accept"}, headers=headers
        )
        saved = client.post("/api/note", json={}, headers=headers)
        assert len(ehr.bundles) == 1  # the EHR has it; the app could not record that
        assert saved.status_code == 202, saved.get_json()
        answer = saved.get_json()
        assert answer["status"] == "pending"
        assert ehr.holder is not None
        ehr.holder.rollback()
        with db.session() as s:
            note = s.get(SavedNote, answer["note"]["id"])
            assert note is not None and note.status == "pending"
    finally:
        if ehr.holder is not None:
            ehr.holder.close()
        db.dispose()
