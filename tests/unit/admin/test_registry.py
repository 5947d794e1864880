"""Unit (store): engine change control, rollback and kill switches (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from smartapp.errors import BadRequest
from smartapp.governance.evaluations import record_run
from smartapp.governance.registry import ChangeControl, ChangeRefused, active_engine, is_killed
from smartapp.identity import TOKEN_ACTOR

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
SITE = "https://a.example/fhir"
#: People are issuer-bound, as the admin area records them.
ALICE = f"{SITE}|Practitioner/alice"
BOB = f"{SITE}|Practitioner/bob"


def report(engine: str = "llm:2.0", **rates: float) -> dict:
    return {
        "kinds": [
            {
                "kind": kind,
                "engine": engine,
                "patients": 50,
                "coverage": 1.0,
                "grounding_rate": rate,
                "dropped": 0,
                "mean_chars": 400,
                "p50_ms": 900,
            }
            for kind, rate in rates.items()
        ]
    }


@pytest.fixture
def cc() -> ChangeControl:
    return ChangeControl(min_grounding_rate=0.9)


def propose(db, cc, version="2.0", kinds=("problem_summary",), site=None, by=ALICE, at=T0):
    with db.session() as s:
        return cc.propose(
            s,
            engine="llm",
            version=version,
            model="m",
            kinds=list(kinds),
            site=site,
            actor=by,
            reason="better summaries",
            now=at,
        ).id


def recorded(db, rep: dict) -> str:
    """Store a report as `smartapp evaluate --record` does; its SHA-256."""
    with db.session() as s:
        return record_run(s, rep, cohort="sandbox", site=None, recorded_by="cli:ci", now=T0).sha256


def step(db, cc, name, version_id, by, at=T0, **kwargs):
    if "report" in kwargs:  # the app's own run of that report, cited by hash
        kwargs["evaluation"] = recorded(db, kwargs.pop("report"))
    with db.session() as s:
        return getattr(cc, name)(s, version_id, actor=by, reason=None, now=at, **kwargs)


def make_active(db, cc, version="2.0", kinds=("problem_summary",), site=None, at=T0):
    vid = propose(db, cc, version, kinds, site, at=at)
    rep = report(f"llm:{version}", **dict.fromkeys(kinds, 0.97))
    step(db, cc, "evaluate", vid, ALICE, at, report=rep)
    step(db, cc, "approve", vid, BOB, at)
    step(db, cc, "activate", vid, BOB, at)
    return vid


def current(db, kind="problem_summary", site=SITE):
    with db.session() as s:
        return active_engine(s, kind=kind, site=site)


def test_version_goes_through_every_state_with_history(database, cc):
    vid = make_active(database, cc)
    engine = current(database)
    assert engine is not None and (engine.name, engine.version, engine.model) == ("llm", "2.0", "m")
    with database.session() as s:
        from smartapp.governance.registry import list_versions

        (row,) = list_versions(s)
        history = [(t.from_state, t.to_state, t.actor) for t in row.transitions]
    assert row.id == vid
    assert history == [
        (None, "proposed", ALICE),
        ("proposed", "evaluated", ALICE),
        ("evaluated", "approved", BOB),
        ("approved", "active", BOB),
    ]


def test_self_approval_is_refused(database, cc):
    vid = propose(database, cc)
    step(database, cc, "evaluate", vid, ALICE, report=report(problem_summary=0.99))
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "approve", vid, ALICE)
    assert refused.value.code == "self_approval"
    # The same id at another EHR is another person: their approval counts.
    other_site = "https://b.example/fhir|Practitioner/alice"
    assert step(database, cc, "approve", vid, other_site).approved_by == other_site


def test_no_approval_or_activation_without_an_evaluation(database, cc):
    vid = propose(database, cc)
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "approve", vid, BOB)
    assert refused.value.code == "not_evaluated"
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "activate", vid, BOB)
    assert refused.value.code == "not_approved"
    step(database, cc, "evaluate", vid, ALICE, report=report(problem_summary=0.99))
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "activate", vid, BOB)  # evaluated, not yet approved
    assert refused.value.code == "not_approved"
    assert current(database) is None


def test_evaluation_below_the_minimum_grounding_rate_is_refused(database, cc):
    vid = propose(database, cc, kinds=("problem_summary", "care_gaps"))
    with pytest.raises(ChangeRefused) as refused:
        step(
            database,
            cc,
            "evaluate",
            vid,
            ALICE,
            report=report(problem_summary=0.97, care_gaps=0.85),
        )
    assert refused.value.code == "grounding_below_minimum"
    assert "care_gaps 85.0%" in refused.value.message
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "evaluate", vid, ALICE, report=report(problem_summary=0.97))
    assert refused.value.code == "evaluation_incomplete"
    with pytest.raises(BadRequest, match="grounding_rate"):
        step(database, cc, "evaluate", vid, ALICE, report={"kinds": [{"kind": "problem_summary"}]})
    with pytest.raises(BadRequest, match="SHA-256"):
        step(database, cc, "evaluate", vid, ALICE, evaluation={"kinds": []})
    with pytest.raises(ChangeRefused):
        step(database, cc, "approve", vid, BOB)


def test_minimum_is_read_at_each_evaluation(database):
    minimum = {"value": 0.99}
    cc = ChangeControl(min_grounding_rate=lambda: minimum["value"])
    vid = propose(database, cc)
    with pytest.raises(ChangeRefused):
        step(database, cc, "evaluate", vid, ALICE, report=report(problem_summary=0.97))
    minimum["value"] = 0.95
    assert (
        step(database, cc, "evaluate", vid, ALICE, report=report(problem_summary=0.97)).state
        == "evaluated"
    )


def test_activation_supersedes_and_rollback_restores_on_the_next_read(database, cc):
    v1 = make_active(database, cc, "1.0", at=T0)
    v2 = make_active(database, cc, "2.0", at=T0 + timedelta(hours=1))
    assert current(database).version == "2.0"
    with database.session() as s:
        from smartapp.governance.models import EngineVersion

        assert s.get(EngineVersion, v1).state == "superseded"
        assert s.get(EngineVersion, v2).supersedes == [v1]

    row, restored = step(database, cc, "rollback", v2, ALICE, T0 + timedelta(hours=2))
    assert row.state == "rolled_back" and [r.id for r in restored] == [v1]
    assert current(database).version == "1.0"  # the next read sees it: nothing cached
    # Rolling back the restored version leaves the kind to the site configuration.
    step(database, cc, "rollback", v1, ALICE, T0 + timedelta(hours=3))
    assert current(database) is None
    with pytest.raises(ChangeRefused):
        step(database, cc, "rollback", v2, ALICE)  # already rolled back


def test_site_version_is_preferred_to_the_all_sites_one(database, cc):
    make_active(database, cc, "1.0", at=T0)
    make_active(database, cc, "1.1-site", site=SITE + "/", at=T0 + timedelta(hours=1))
    assert current(database).version == "1.1-site"
    assert current(database, site="https://b.example/fhir").version == "1.0"
    assert current(database, kind="care_gaps") is None


def test_duplicate_and_bad_proposals(database, cc):
    propose(database, cc)
    with pytest.raises(ChangeRefused) as refused:
        propose(database, cc)
    assert refused.value.code == "duplicate"
    with pytest.raises(BadRequest, match="kinds"):
        propose(database, cc, version="3", kinds=())


def test_kill_switch_takes_effect_on_the_next_read_and_can_be_released(database, cc):
    def set_switch(scope, target, engaged, reason="unsafe output"):
        with database.session() as s:
            cc.set_kill_switch(
                s,
                scope=scope,
                target=target,
                engaged=engaged,
                actor=ALICE,
                reason=reason,
                now=T0,
            )

    def killed(kind="problem_summary", engine="llm"):
        with database.session() as s:
            return is_killed(s, kind=kind, engine=engine)

    assert not killed()
    set_switch("kind", "problem_summary", True)
    assert killed() and killed(engine="builtin-rules")
    assert not killed(kind="care_gaps")
    set_switch("kind", "problem_summary", False)  # same timestamp: the sequence orders them
    assert not killed()
    set_switch("engine", "llm", True)
    assert killed(kind="care_gaps") and not killed(engine="builtin-rules")
    with pytest.raises(BadRequest, match="reason"):
        set_switch("engine", "llm", True, reason="")
    with pytest.raises(BadRequest, match="scope"):
        set_switch("site", "x", True)


def test_history_tables_refuse_update_and_delete_in_the_database(database, cc):
    make_active(database, cc)
    for statement in (
        "UPDATE engine_transition SET actor = 'someone else'",
        "DELETE FROM engine_transition",
    ):
        with pytest.raises(DBAPIError), database.engine.begin() as conn:
            conn.execute(text(statement))
    with database.engine.connect() as conn:
        actors = conn.execute(text("SELECT DISTINCT actor FROM engine_transition")).scalars()
        assert set(actors) == {ALICE, BOB}


# --- two people, and evaluations the app ran (issue 11, finding 3) ----------------------


def test_the_token_can_propose_and_cite_an_evaluation_but_never_approve_or_activate(database, cc):
    vid = propose(database, cc, by=TOKEN_ACTOR)
    step(database, cc, "evaluate", vid, TOKEN_ACTOR, report=report(problem_summary=0.99))
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "approve", vid, TOKEN_ACTOR)
    assert refused.value.code == "approval_needs_person"
    step(database, cc, "approve", vid, ALICE)
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "activate", vid, TOKEN_ACTOR)
    assert refused.value.code == "activation_needs_person"
    assert current(database) is None


def test_one_person_cannot_approve_and_activate_what_the_token_proposed(database, cc):
    """The finding: token proposes, evaluates and activates; one admin approves."""
    vid = propose(database, cc, by=TOKEN_ACTOR)
    step(database, cc, "evaluate", vid, TOKEN_ACTOR, report=report(problem_summary=0.99))
    step(database, cc, "approve", vid, ALICE)
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "activate", vid, ALICE)
    assert refused.value.code == "two_people"
    row = step(database, cc, "activate", vid, BOB)
    assert (row.approved_by, row.activated_by) == (ALICE, BOB)
    assert current(database).version == "2.0"


def test_an_approver_may_activate_what_another_person_proposed(database, cc):
    vid = propose(database, cc, by=ALICE)
    step(database, cc, "evaluate", vid, ALICE, report=report(problem_summary=0.99))
    step(database, cc, "approve", vid, BOB)
    assert step(database, cc, "activate", vid, BOB).activated_by == BOB


def test_an_evaluation_the_app_did_not_record_is_refused(database, cc):
    vid = propose(database, cc)
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "evaluate", vid, ALICE, evaluation="sha256:" + "ab" * 32)
    assert refused.value.code == "evaluation_unknown"


def test_a_stored_evaluation_edited_afterwards_is_refused(database, cc):
    vid = propose(database, cc)
    digest = recorded(database, report(problem_summary=0.5))
    with database.engine.begin() as conn:
        # Whoever can write to the store raises the rate; the hash no longer matches.
        conn.execute(
            text("UPDATE evaluation_run SET report = :r WHERE sha256 = :h"),
            {
                "r": '{"kinds": [{"kind": "problem_summary", "engine": "llm:2.0", '
                '"grounding_rate": 1.0}]}',
                "h": digest,
            },
        )
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "evaluate", vid, ALICE, evaluation=digest)
    assert refused.value.code == "evaluation_altered"


def test_an_evaluation_of_another_engine_version_is_refused(database, cc):
    vid = propose(database, cc, version="2.0")
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "evaluate", vid, ALICE, report=report("llm:1.9", problem_summary=0.99))
    assert refused.value.code == "evaluation_mismatch"
    assert "problem_summary (llm:1.9)" in refused.value.message
    row = step(database, cc, "evaluate", vid, ALICE, report=report("llm:2.0", problem_summary=0.99))
    assert row.evaluation_sha256 is not None and row.evaluation["kinds"][0]["engine"] == "llm:2.0"


def test_a_proposal_recorded_before_actors_were_bound_cannot_be_self_approved(database, cc):
    vid = propose(database, cc, by="Practitioner/alice")  # as older versions recorded it
    step(database, cc, "evaluate", vid, BOB, report=report(problem_summary=0.99))
    with pytest.raises(ChangeRefused) as refused:
        step(database, cc, "approve", vid, ALICE)
    assert refused.value.code == "self_approval"
