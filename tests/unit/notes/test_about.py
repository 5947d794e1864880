"""Unit: "About this suggestion" gives the drafting engine version's HTI-1 source attributes."""

from __future__ import annotations

from smartapp.db import utcnow
from smartapp.governance.model_cards import card_for, engine_attributes
from smartapp.governance.models import EngineVersion
from smartapp.suggestions.builtin import BUILTIN_INFO
from tests.unit.notes.test_views_note import _api, ehr  # noqa: F401 - a fixture
from tests.unit.notes.views_support import launch


def test_about_names_the_engine_that_drafted_the_kind_and_its_attributes(app, client, ehr):  # noqa: F811
    context = launch(app, client)
    shown = _api(client, context, "GET", "/api/suggestions").get_json()["suggestions"]
    kind = shown[0]["kind"]
    answer = _api(client, context, "GET", f"/api/about?kind={kind}")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["kind"] == kind
    assert body["engine"] == {"name": shown[0]["engine"]["name"], "version": BUILTIN_INFO.version}
    card = body["card"]
    assert (card["engine"], card["version"], card["status"]) == (
        BUILTIN_INFO.name,
        BUILTIN_INFO.version,
        "shipped",
    )
    attributes = card["source_attributes"]
    assert attributes["type"] == "evidence-based"
    assert attributes["intended_use"] == engine_attributes()["builtin-rules"]["intended_use"]
    assert attributes["validation_on_local_data"] == {"status": "not yet evaluated on local data"}


def test_about_refuses_an_unknown_kind_and_one_not_shown(app, client, ehr):  # noqa: F811
    context = launch(app, client)
    bad = _api(client, context, "GET", "/api/about?kind=care-gaps")
    assert bad.status_code == 400
    assert bad.get_json()["error"]["message"].startswith("kind: one of problem_summary")
    # Nothing drafted yet for this visit: no suggestion to be about.
    missing = _api(client, context, "GET", "/api/about?kind=problem_summary")
    assert missing.status_code == 404


def test_the_card_of_an_llm_version_matches_model_at_version_and_prefers_the_active(app):
    db = app.extensions["smartapp.db"]
    now = utcnow()
    with db.session() as s:
        # The same version at two sites (one per site), serving at the second.
        for site, state in (("https://a.example/fhir", "superseded"), ("*", "active")):
            s.add(
                EngineVersion(
                    engine_name="llm",
                    version="2",
                    model="m",
                    kinds=["problem_summary"],
                    site=site,
                    state=state,
                    proposed_by="test",
                    proposed_at=now,
                )
            )
    with db.session() as s:
        card = card_for(s, engine="llm", version="m@2")
        unknown = card_for(s, engine="llm", version="other@9")
    assert (card["status"], card["source_attributes"]["type"]) == ("active", "predictive")
    assert card["source_attributes"]["model"] == "m"
    assert unknown["status"] == "not in change control"
    assert unknown["source_attributes"]["type"] == "predictive"
