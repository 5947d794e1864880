"""Unit: PHI at rest (issue 11, finding 5) — an owner-only instance folder from the first
byte, snapshots, comments and edited texts encrypted with the tokens' key management, and
`smartapp purge` removing what has expired."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from smartapp import create_app
from smartapp.atrest import DecryptionFailed
from smartapp.cli import main
from smartapp.db import Database
from smartapp.feedback.forwarding import FeedbackForward
from smartapp.feedback.models import Decision, ShownSuggestion
from smartapp.fhir.cache import CachedSnapshot
from smartapp.notes.models import SavedNote
from smartapp.purge import purge
from tests.conftest import make_settings

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SECRET = "phi-at-rest-test-key-0123456789"
CHART = '{"patient": {"name": "Ada Example", "mrn": "MRN-77"}}'


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual 022 of a shell: what made the store 0644 before."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_instance_folder_and_its_files_are_owner_only_from_the_start(tmp_path, open_umask):
    settings = make_settings(
        tmp_path,
        SMARTAPP_SECRET_KEY="",  # generated and kept in the instance folder
        SMARTAPP_DATABASE_URL=f"sqlite:///{tmp_path / 'instance' / 'smartapp.db'}",
    )
    app = create_app(settings)
    try:
        assert app.test_client().get("/readyz").status_code == 200
        folder = tmp_path / "instance"
        assert _mode(folder) == 0o700
        written = [p for p in folder.iterdir() if p.is_file()]
        assert {p.name for p in written} >= {"secret_key", "smartapp.db"}
        assert {p.name: _mode(p) for p in written} == {p.name: 0o600 for p in written}
    finally:
        app.extensions["smartapp.db"].dispose()


def test_start_up_tightens_a_folder_left_open(tmp_path, open_umask, caplog):
    folder = tmp_path / "instance"
    folder.mkdir(mode=0o755)
    (folder / "old-copy.db").write_text("x")
    (folder / "old-copy.db").chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="smartapp.instance"):
        # SQLite here, whatever the run's database: this test is about files.
        app = create_app(
            make_settings(tmp_path, SMARTAPP_DATABASE_URL=f"sqlite:///{tmp_path / 'app.db'}")
        )
    app.extensions["smartapp.db"].dispose()
    assert _mode(folder) == 0o700
    assert _mode(folder / "old-copy.db") == 0o600
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


# --- encryption ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'phi.db'}", secret_key=SECRET)
    database.create_all()
    yield database
    database.dispose()


def _suggestion(s, *, at: datetime = NOW) -> ShownSuggestion:  # type: ignore[no-untyped-def]
    row = ShownSuggestion(
        launch_session_id="launch-1",
        visit_key="visit-1",
        snapshot_key="snap-1",
        site="http://ehr.test/fhir",
        fhir_user="Practitioner/1",
        patient_id="pt-1",
        position=len(s.query(ShownSuggestion).all()),
        kind="problem_summary",
        title="Problems",
        text="Type 2 diabetes",
        statements=[],
        citations=[],
        engine_name="builtin-rules",
        engine_version="1",
        shown_at=at,
    )
    s.add(row)
    s.flush()
    return row


def _decision(s, action: str, *, at: datetime, flagged: bool = False) -> Decision:  # type: ignore[no-untyped-def]
    row = Decision(
        suggestion_id=_suggestion(s, at=at).id,
        action=action,
        final_text="Ada Example has type 2 diabetes" if action == "edit" else None,
        comment="Ada's daughter says she stopped metformin",
        decided_at=at,
        seconds_to_decision=3.0,
    )
    s.add(row)
    s.flush()
    return row


def _raw(database: Database, sql: str) -> list[str]:
    with database.engine.connect() as conn:
        return [str(v) for v in conn.execute(text(sql)).scalars()]


def test_snapshots_comments_edits_notes_and_forwards_are_ciphertext_in_the_store(store):
    with store.session() as s:
        s.add(CachedSnapshot(launch_session_id="l1", data=CHART, stored_at=NOW, expires_at=NOW))
        decision = _decision(s, "edit", at=NOW)
        s.add(
            SavedNote(
                visit_key="visit-1",
                launch_session_id="l1",
                site="http://ehr.test/fhir",
                patient_id="pt-1",
                text="Ada Example, seen today",
            )
        )
        s.add(
            FeedbackForward(
                decision_id=decision.id,
                endpoint="https://llm.test/feedback",
                payload={"feedback": [{"userComment": "Ada's daughter"}]},
            )
        )
    stored = (
        _raw(store, "SELECT data FROM fhir_snapshot_cache")
        + _raw(store, "SELECT final_text FROM decision")
        + _raw(store, "SELECT comment FROM decision")
        + _raw(store, "SELECT text FROM saved_note")
        + _raw(store, "SELECT payload FROM feedback_forward")
    )
    assert len(stored) == 5
    for value in stored:
        assert value.startswith("enc1:")
        # Whole phrases: a short one ("Ada") turns up in random base64 now and then.
        assert "Ada Example" not in value and "Ada's daughter" not in value
        assert "MRN-77" not in value
    with store.session() as s:  # and the app reads them back
        assert s.get(CachedSnapshot, "l1").data == CHART
        assert s.query(Decision).one().comment == "Ada's daughter says she stopped metformin"
        assert (
            s.query(FeedbackForward).one().payload["feedback"][0]["userComment"] == "Ada's daughter"
        )


def test_a_rotated_key_still_reads_what_the_old_one_wrote(store, tmp_path):
    with store.session() as s:
        s.add(CachedSnapshot(launch_session_id="l1", data=CHART, stored_at=NOW, expires_at=NOW))
    url = store.url
    rotated = Database(url, secret_key="the-new-key-0123456789", previous_keys=(SECRET,))
    forgotten = Database(url, secret_key="the-new-key-0123456789")
    try:
        with rotated.session() as s:
            assert s.get(CachedSnapshot, "l1").data == CHART
            s.add(CachedSnapshot(launch_session_id="l2", data=CHART, stored_at=NOW, expires_at=NOW))
        with forgotten.session() as s:
            assert s.get(CachedSnapshot, "l2").data == CHART  # written under the new key
        with pytest.raises(DecryptionFailed), forgotten.session() as s:
            s.get(CachedSnapshot, "l1")
    finally:
        rotated.dispose()
        forgotten.dispose()


def test_text_stored_before_encryption_still_reads(store):
    with store.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO fhir_snapshot_cache (launch_session_id, data, stored_at, expires_at) "
                "VALUES ('old', :d, '2026-12-01 00:00:00', '2026-12-01 00:05:00')"
            ),
            {"d": CHART},
        )
    with store.session() as s:
        assert s.get(CachedSnapshot, "old").data == CHART


# --- purge -----------------------------------------------------------------------------


def test_purge_removes_what_expired_and_says_how_much(store):
    old = NOW - timedelta(days=45)
    with store.session() as s:
        s.add(CachedSnapshot(launch_session_id="gone", data=CHART, stored_at=old, expires_at=old))
        s.add(
            CachedSnapshot(
                launch_session_id="live",
                data=CHART,
                stored_at=NOW,
                expires_at=NOW + timedelta(minutes=5),
            )
        )
        _decision(s, "edit", at=old)  # cleared
        _decision(s, "reject", at=NOW)  # recent: kept
        flagged = _decision(s, "flag", at=old)  # under review: kept
        s.add(
            SavedNote(
                visit_key="visit-1",
                launch_session_id="l1",
                site="x",
                patient_id="pt-1",
                text="Ada Example, seen",
                status="in_chart",
                updated_at=old,
            )
        )
        s.add(
            SavedNote(
                visit_key="visit-2",
                launch_session_id="l2",
                site="x",
                patient_id="pt-1",
                text="still waiting",
                status="pending",
                updated_at=old,
            )
        )
    report = purge(store, retention=timedelta(days=30), now=NOW)
    assert (report.snapshots, report.decision_texts, report.note_texts) == (1, 1, 1)
    with store.session() as s:
        assert [r.launch_session_id for r in s.query(CachedSnapshot)] == ["live"]
        texts = {d.action: (d.final_text, d.comment) for d in s.query(Decision)}
        assert texts["edit"] == (None, None)
        assert texts["reject"][1] is not None
        assert s.get(Decision, flagged.id).comment is not None
        notes = {n.status: n.text for n in s.query(SavedNote)}
        assert notes == {"in_chart": "", "pending": "still waiting"}
    again = purge(store, retention=timedelta(days=30), now=NOW)
    assert (again.snapshots, again.decision_texts, again.note_texts) == (0, 0, 0)


def test_purge_command_prints_what_it_removed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMARTAPP_INSTANCE_PATH", str(tmp_path / "instance"))
    monkeypatch.setenv("SMARTAPP_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.setenv("SMARTAPP_SECRET_KEY", SECRET)
    monkeypatch.setenv("SMARTAPP_PHI_RETENTION_DAYS", "7")
    assert main(["purge"]) == 0
    out = capsys.readouterr().out
    assert "PHI retention 7 days" in out and "chart snapshots past their time to live: 0" in out
    assert main(["purge", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["retentionDays"] == 7 and counts["snapshots"] == 0


def test_a_snapshot_under_a_retired_key_is_read_again_not_an_error(store, tmp_path):
    from smartapp.fhir.cache import SnapshotCache

    with store.session() as s:
        s.add(
            CachedSnapshot(
                launch_session_id="l1",
                data=CHART,
                stored_at=NOW,
                expires_at=datetime.now(UTC) + timedelta(minutes=5),
            )
        )
    forgotten = Database(store.url, secret_key="the-new-key-0123456789")
    try:
        assert SnapshotCache(forgotten, ttl_seconds=300).get("l1") is None
        with forgotten.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM fhir_snapshot_cache")).scalar() == 0
    finally:
        forgotten.dispose()
