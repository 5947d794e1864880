"""Unit: the Alembic migrations build exactly the schema the models declare (SQLite, PostgreSQL)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from smartapp.db import Base, Database, import_models
from tests.conftest import test_database_url


@pytest.fixture
def empty_db(tmp_path):
    db = Database(test_database_url(tmp_path))
    db.drop_all()
    yield db
    db.drop_all()
    db.dispose()


def test_upgrade_head_matches_the_models(empty_db):
    empty_db.upgrade()
    import_models()
    with empty_db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == [], "a model changed without a migration: alembic revision --autogenerate"


def test_upgrade_is_idempotent_and_records_its_version(empty_db):
    empty_db.upgrade()
    empty_db.upgrade()
    with empty_db.engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    from alembic.script import ScriptDirectory

    # The single head of the migration scripts: two heads would mean two unmerged branches.
    [head] = ScriptDirectory.from_config(empty_db.alembic_config()).get_heads()
    assert version == head
    assert "saved_note" in inspect(empty_db.engine).get_table_names()


def test_migrated_audit_table_refuses_updates(empty_db):
    empty_db.upgrade()
    with empty_db.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO audit_event (id, recorded, action, outcome, detail) "
                "VALUES ('a1', CURRENT_TIMESTAMP, 'launch', 'success', '{}')"
            )
        )
    with pytest.raises(Exception, match="append-only"), empty_db.engine.begin() as connection:
        connection.execute(text("UPDATE audit_event SET action = 'forged' WHERE id = 'a1'"))


def test_visits_migration_gives_existing_notes_and_suggestions_keys_of_their_own(empty_db):
    """Two notes of one launch (the first failed) both survive 0007's UNIQUE visit key."""
    from alembic import command

    with empty_db.engine.begin() as connection:
        command.upgrade(empty_db.alembic_config(connection), "0006")
        for note_id in ("n1", "n2"):
            connection.execute(
                text(
                    "INSERT INTO saved_note (id, launch_session_id, site, patient_id, text, "
                    "suggestion_ids, engines, status, revision, document_revision, "
                    "chart_revision, attempts, created_at, updated_at) VALUES (:id, :launch, "
                    "'http://ehr/fhir', 'p1', 'note', '[]', '[]', 'failed', 1, 0, 0, 1, "
                    "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": note_id, "launch": "a" * 64},
            )
        connection.execute(
            text(
                "INSERT INTO drafted_kind (launch_session_id, snapshot_key, kind, choice, "
                "drafted_at) VALUES (:launch, 'k', 'allergies', '', CURRENT_TIMESTAMP)"
            ),
            {"launch": "a" * 64},
        )
    empty_db.upgrade()
    with empty_db.engine.connect() as connection:
        notes = connection.execute(text("SELECT visit_key FROM saved_note ORDER BY id")).all()
        drafted = connection.execute(text("SELECT visit_key FROM drafted_kind")).scalar_one()
    assert [k for (k,) in notes] == ["note:n1", "note:n2"]
    assert drafted == "launch:" + "a" * 56
    unique = [
        c["column_names"] for c in inspect(empty_db.engine).get_unique_constraints("saved_note")
    ]
    assert ["visit_key"] in unique


def test_the_app_migrates_at_start_up_only_when_asked(tmp_path):
    from smartapp import create_app
    from tests.conftest import make_settings

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    app = create_app(
        make_settings(tmp_path, SMARTAPP_DATABASE_URL=url, SMARTAPP_MIGRATE_ON_START="false")
    )
    db = app.extensions["smartapp.db"]
    try:
        assert "saved_note" not in inspect(db.engine).get_table_names()
        not_ready = app.test_client().get("/readyz")
        assert not_ready.status_code == 503
        db.upgrade()  # what `smartapp db upgrade` does
        assert app.test_client().get("/readyz").status_code == 200
    finally:
        db.dispose()


def test_sandbox_mode_migrates_at_start_up_unless_told_not_to(tmp_path):
    from smartapp.config import Settings

    env = {"SMARTAPP_INSTANCE_PATH": str(tmp_path), "SMARTAPP_SECRET_KEY": "k" * 32}
    assert Settings.from_env(env, sandbox_issuer="http://localhost:1/fhir").migrate_on_start
    off = {**env, "SMARTAPP_MIGRATE_ON_START": "no"}
    assert not Settings.from_env(off, sandbox_issuer="http://localhost:1/fhir").migrate_on_start


def test_versions_registered_before_0020_get_the_attributes_file_as_it_was(empty_db):
    import json
    import tomllib

    from alembic import command

    from smartapp.governance.attributes import ATTRIBUTES_FILE

    with empty_db.engine.begin() as connection:
        command.upgrade(empty_db.alembic_config(connection), "0019")
        for row_id, engine in (("v1", "builtin-rules"), ("v2", "llm")):
            connection.execute(
                text(
                    "INSERT INTO engine_version (id, engine_name, version, kinds, site, state, "
                    "proposed_by, proposed_at, supersedes) VALUES (:id, :engine, '1', "
                    "'[\"problem_summary\"]', '*', 'active', 'test', CURRENT_TIMESTAMP, '[]')"
                ),
                {"id": row_id, "engine": engine},
            )
    empty_db.upgrade()
    with empty_db.engine.connect() as connection:
        rows = dict(
            connection.execute(text("SELECT id, source_attributes FROM engine_version")).all()
        )
    kept = {k: v if isinstance(v, dict) else json.loads(v) for k, v in rows.items()}
    engines = tomllib.loads(ATTRIBUTES_FILE.read_text())["engine"]
    assert kept == {"v1": engines["builtin-rules"], "v2": engines["llm"]}
