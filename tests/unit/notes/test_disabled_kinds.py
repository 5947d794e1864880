"""Unit: a kind that is off for the clinician lends its content to no other kind's draft.

Through the sidebar's drafting path (`GovernedDrafter.plan` then `draft`, the built-in
engine, a SQLite governance store) over every fixture chart: each kind is turned off in
turn (rolled out to 0 % on the dashboard, switched off, left out of the site file) and no
other card may carry what its rules say (their statements, rules or rule ids) or point to
its card. Care
gaps are what the assessment and plan ("HbA1c due") and the patient instructions ("You are
due for …") drew on; the medication safety flags are the medication card's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from smartapp import kinds as K
from smartapp.db import Database, utcnow
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.governance.registry import ChangeControl
from smartapp.governance.rollout import RuleInput, add_rule
from smartapp.notes.drafting import GovernedDrafter
from smartapp.siteconfig import SiteConfig, load_site_config
from smartapp.suggestions import assessment
from smartapp.suggestions.crossref import SHORT_LABELS
from smartapp.suggestions.facts import capitalize
from smartapp.suggestions.interfaces import Statement, Suggestion
from smartapp.suggestions.registry import SuggestionService
from tests.unit.suggestions.conftest import PATIENTS, load_chart

ISS = "https://ehr.example.org/fhir"
USER = "Practitioner/1"
CHARTS = sorted(p.stem for p in PATIENTS.glob("*.json"))
#: Kinds that restate the others' content for another reader (the patient's care gaps, in
#: plain words): the others are its sources, so what it shares with them is theirs.
RESTATES = frozenset({K.PATIENT_INSTRUCTIONS})


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'kinds.db'}")
    db.create_all()
    yield db
    db.dispose()


@pytest.fixture(scope="module")
def charts() -> dict[str, ChartSnapshot]:
    return {name: load_chart(name) for name in CHARTS}


@pytest.fixture(scope="module")
def full(charts: dict[str, ChartSnapshot], tmp_path_factory) -> dict[str, list[Suggestion]]:
    """Every chart drafted with every kind on."""
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('full') / 'kinds.db'}")
    db.create_all()
    try:
        return {name: _draft(db, chart) for name, chart in charts.items()}
    finally:
        db.dispose()


def _draft(
    database: Database, snapshot: ChartSnapshot, config: SiteConfig | None = None
) -> list[Suggestion]:
    drafter = GovernedDrafter(engines=SuggestionService(config or SiteConfig()), database=database)
    plan = drafter.plan(iss=ISS, fhir_user=USER)
    return drafter.draft(snapshot, iss=ISS, plan=plan).suggestions


def _off(how: str, kind: str, database: Database, tmp_path: Path) -> SiteConfig | None:
    """Turn `kind` off for USER at ISS `how`; the site file to draft with, if it changes."""
    now = utcnow()
    if how == "rollout 0 %":
        with database.session() as s:
            add_rule(
                s, RuleInput(site=ISS, kind=kind, enabled=True, percentage=0), actor="t", now=now
            )
    elif how == "kill switch":
        with database.session() as s:
            ChangeControl(min_grounding_rate=0.9).set_kill_switch(
                s, scope="kind", target=kind, engaged=True, actor="t", reason="test", now=now
            )
    else:
        kinds = ", ".join(f'"{k}"' for k in K.KINDS if k != kind)
        path = tmp_path / "site.toml"
        path.write_text(f"[suggestions]\nkinds = [{kinds}]\n", encoding="utf-8")
        return load_site_config(path)
    return None


def _statements(suggestions: list[Suggestion], kind: str) -> list[Statement]:
    return [st for s in suggestions if s.kind == kind for st in s.statements]


def _due_rules() -> frozenset[str]:
    """The assessment and plan's "… due" options, as their statements name them."""
    return frozenset(
        f"{o.cite.label}: {o.rule}" if o.rule else o.cite.label
        for o in assessment.knowledge().options
        if o.due_months is not None
    )


def _due_leads() -> tuple[str, ...]:
    return tuple(
        capitalize(o.text) for o in assessment.knowledge().options if o.due_months is not None
    )


def _says_due(statement: Statement) -> bool:
    return statement.rule in _due_rules() or statement.text.startswith(_due_leads())


def _leaks(kind: str, full: list[Suggestion], without: list[Suggestion]) -> list[str]:
    # What a rule of the kind says (a care gap, a safety flag, a plan option), not the
    # chart's facts: a result the plan stated is the results card's to state when the plan
    # is off (one fact, one card: smartapp.suggestions.crossref).
    own = (
        [] if kind in RESTATES else [st for st in _statements(full, kind) if st.rule or st.rule_id]
    )
    texts = {st.text for st in own}
    rules = {st.rule for st in own if st.rule}
    rule_ids = {st.rule_id for st in own if st.rule_id}
    label = SHORT_LABELS.get(kind)
    found: list[str] = []
    for other in K.KINDS:
        if other == kind:
            continue
        for st in _statements(without, other):
            if st.text in texts or st.rule in rules or (st.rule_id and st.rule_id in rule_ids):
                found.append(f"{other}: {st.text!r} ({st.rule or st.rule_id})")
            elif label and (st.see == label or f"see {label}" in st.text):
                found.append(f"{other} points to the {kind} card: {st.text!r}")
            elif kind == K.CARE_GAPS and _says_due(st):
                found.append(f"{other} says what is due: {st.text!r}")
    return found


def test_with_every_kind_on_the_drafts_do_share_what_the_checks_look_for(full):
    """The check below can fail: with care gaps on, the plan and the instructions say what
    is due, and the medication card raises safety flags the others could repeat."""
    drafted = full
    assert any(_says_due(st) for d in drafted.values() for st in _statements(d, K.ASSESSMENT_PLAN))
    gap_rules = {st.rule for d in drafted.values() for st in _statements(d, K.CARE_GAPS) if st.rule}
    assert any(
        st.rule in gap_rules
        for d in drafted.values()
        for st in _statements(d, K.PATIENT_INSTRUCTIONS)
    )
    assert any(st.rule_id for d in drafted.values() for st in _statements(d, K.MEDICATIONS))


@pytest.mark.parametrize("how", ["rollout 0 %", "kill switch", "site file"])
@pytest.mark.parametrize("kind", K.KINDS)
def test_a_kind_that_is_off_leaks_into_no_other_card(database, charts, full, tmp_path, kind, how):
    config = _off(how, kind, database, tmp_path)
    for name, chart in charts.items():
        without = _draft(database, chart, config)
        assert not [s for s in without if s.kind == kind], name
        assert _leaks(kind, full[name], without) == [], name


def test_a_partial_draft_keeps_the_content_of_kinds_shown_but_not_drafted_now(database, charts):
    """The sidebar drafts again only the kinds whose engine changed (`DraftPlan.only`):
    the instructions drafted alone still tell the care gaps the clinician is shown."""
    drafter = GovernedDrafter(engines=SuggestionService(SiteConfig()), database=database)
    plan = drafter.plan(iss=ISS, fhir_user=USER)
    chart = charts["diabetes_hypertension"]
    alone = drafter.draft(chart, iss=ISS, plan=plan.only((K.PATIENT_INSTRUCTIONS,))).suggestions
    full = drafter.draft(chart, iss=ISS, plan=plan).suggestions
    assert _statements(alone, K.PATIENT_INSTRUCTIONS) == _statements(full, K.PATIENT_INSTRUCTIONS)
    assert any("due for" in st.text for st in _statements(alone, K.PATIENT_INSTRUCTIONS))
