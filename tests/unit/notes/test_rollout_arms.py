"""Unit: a saved note records the clinician's arm in each partial rollout (the control).

The real app and drafter, a fixture chart, the fake EHR of test_views_note.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from smartapp.admin.control import rollout_control
from smartapp.db import utcnow
from smartapp.governance.rollout import RuleInput, add_rule, bucket
from smartapp.notes.models import SavedNote
from tests.conftest import SANDBOX_ISS
from tests.unit.notes.test_views_note import _accept, _api, ehr  # noqa: F401 - a fixture
from tests.unit.notes.views_support import launch

KIND = "problem_summary"


def _clinician(*, inside: bool, share_bp: int = 5000) -> str:
    """The first Practitioner/N the hash puts inside (or outside) a rollout of `share_bp`."""
    for n in range(1000):
        user = f"Practitioner/{n}"
        if (bucket(site=SANDBOX_ISS, kind=KIND, fhir_user=user) < share_bp) == inside:
            return user
    raise AssertionError("no such clinician in 1,000")


def _roll_out(app: Any, percentage: float, kind: str = KIND) -> None:
    with app.extensions["smartapp.db"].session() as s:
        add_rule(
            s,
            RuleInput(site=SANDBOX_ISS, kind=kind, enabled=True, percentage=percentage),
            actor="test",
            now=utcnow(),
        )


def _save(app: Any, client: Any, user: str | None, kind: str | None) -> dict[str, str] | None:
    context = launch(app, client, fhir_user=user)
    if kind is None:
        suggestions = _api(client, context, "GET", "/api/suggestions").get_json()["suggestions"]
        kind = next(s["kind"] for s in suggestions if s["kind"] != KIND)
    _accept(client, context, kind)
    answer = _api(client, context, "POST", "/api/note")
    assert answer.status_code == 201, answer.get_json()
    with app.extensions["smartapp.db"].session() as s:
        note = s.get(SavedNote, answer.get_json()["note"]["id"])
        assert note is not None
        return note.rollout_arms


def test_notes_record_the_arm_inside_and_outside_a_partial_rollout(app, client, ehr):  # noqa: F811
    _roll_out(app, 50)
    inside, outside = _clinician(inside=True), _clinician(inside=False)
    assert _save(app, client, inside, KIND) == {KIND: "inside"}
    # Left out of the summary, the clinician writes a note from another kind: the control.
    assert _save(app, client, outside, None) == {KIND: "outside"}
    with app.extensions["smartapp.db"].session() as s:
        [group] = rollout_control(s)["groups"]
    assert (group["site"], group["kind"]) == (SANDBOX_ISS, KIND)
    assert (group["inside"]["notes"], group["outside"]["notes"]) == (1, 1)
    # One clinician an arm: no interval can be drawn from it.
    assert group["difference"]["edits_per_note_ci95"] is None


def test_no_arm_without_a_partial_rollout_or_a_fhir_user(app, client, ehr):  # noqa: F811
    _roll_out(app, 100)
    assert _save(app, client, _clinician(inside=True), KIND) == {}
    _roll_out(app, 50)
    # Without a fhirUser nobody can be placed: left out, but not by the hash's draw.
    assert _save(app, client, None, None) == {}
    with app.extensions["smartapp.db"].session() as s:
        assert len(s.scalars(select(SavedNote)).all()) == 2


def test_the_site_files_partial_rollout_places_clinicians_in_arms_while_it_runs():
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from smartapp.governance.state import GovernanceState
    from smartapp.notes.drafting import plan_for
    from smartapp.siteconfig import parse_site_config

    config = parse_site_config(
        "[rollout.problem_summary]\npercent = 50\nstart = 2026-12-01\n"
        "[rollout.allergies]\nenabled = false\n"
    )
    engines: Any = SimpleNamespace(config=config)
    state = GovernanceState(version=1, rules=(), engines=(), killed=frozenset())

    def arms(user: str | None, day: tuple[int, int]) -> dict[str, str]:
        now = datetime(2026, *day, 12, tzinfo=UTC)
        plan = plan_for(engines, state, iss=SANDBOX_ISS, fhir_user=user, now=now)
        assert (KIND in plan.kinds) == (plan.arms.get(KIND) == "inside")
        return dict(plan.arms)

    inside, outside = _clinician(inside=True), _clinician(inside=False)
    assert arms(inside, (12, 2)) == {KIND: "inside"}  # allergies are off for all: no arm
    assert arms(outside, (12, 2)) == {KIND: "outside"}
    assert arms(inside, (12, 1)) == {KIND: "inside"}  # the start day is in
    # Before it starts nobody has it: not a draw of the hash, so no arm.
    assert arms(inside, (11, 30)) == {}
    assert arms(None, (12, 2)) == {}
