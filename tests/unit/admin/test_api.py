"""Unit (Flask test client): the admin JSON API — bearer token, CSV, parameter errors,
change control end to end, and the audit of every step."""

from __future__ import annotations

import csv
import io
import re

import pytest
from fhir.resources.R4B.bundle import Bundle

from smartapp.admin.metrics import FIELDS
from smartapp.audit import AuditQuery, search
from tests.unit.admin.conftest import (
    ADMIN_1,
    ADMIN_2,
    CLINICIAN,
    FakeIdentity,
    bearer,
    csrf,
    make_admin_app,
    who,
)
from tests.unit.admin.seed import seed_feedback


@pytest.fixture
def seeded(admin_app):
    with admin_app.extensions["smartapp.db"].session() as s:
        seed_feedback(s)
    return admin_app


def audit_events(app, **criteria):
    with app.extensions["smartapp.db"].session() as s:
        events, _ = search(s, AuditQuery(**criteria))
    return events


# --- authentication ----------------------------------------------------------------------


def test_metrics_without_credentials_is_401_json(api):
    response = api.get("/admin/api/metrics?group_by=kind")
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("Bearer wrong-token", "invalid_token"),
        ("Bearer test-admin-token-012345678", "invalid_token"),  # a prefix of the real one
        ("Basic dXNlcjpwYXNz", "invalid_request"),
        ("Bearer ", "invalid_request"),
    ],
)
def test_wrong_credentials_are_refused(api, header, code):
    response = api.get("/admin/api/metrics", headers={"Authorization": header})
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"]["code"] == code
    assert set(body["error"]) == {"code", "message"}
    assert "test-admin-token" not in response.get_data(as_text=True)


def test_api_is_closed_without_a_configured_token(tmp_path):
    app = make_admin_app(tmp_path, FakeIdentity())
    response = app.test_client().get("/admin/api/metrics", headers=bearer("anything"))
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "api_closed"
    app.extensions["smartapp.db"].dispose()


def test_admin_session_may_read_and_non_admin_may_not(api, identity):
    identity.sign_in(ADMIN_2)  # listed in its absolute form
    assert api.get("/admin/api/metrics").status_code == 200
    identity.sign_in(f"http://ehr.test/fhir/{CLINICIAN}")
    response = api.get("/admin/api/metrics")
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "forbidden"
    (denied,) = audit_events(api.application, action="admin.denied")
    assert denied.actor == who(CLINICIAN) and denied.outcome == "failure"


# --- metrics -----------------------------------------------------------------------------


def test_metrics_json_matches_the_contract(seeded):
    response = seeded.test_client().get("/admin/api/metrics?group_by=site", headers=bearer())
    assert response.status_code == 200
    groups = response.get_json()["groups"]
    # The shared contract's fields, issue 12's, and where the notes' characters came from.
    parts = {"accepted", "edited", "typed"}
    extra = {f"{part}_share_of_note_chars" for part in parts}
    extra |= {"edits_per_note", "median_seconds_in_sidebar"}
    assert [set(g) for g in groups] == [set(FIELDS) | extra, set(FIELDS) | extra]
    assert groups[0]["key"] == "https://a.example/fhir"
    assert groups[0]["shown"] == 4 and groups[0]["acceptance_rate"] == 0.5
    # Is it saving time: notes, launch to saved note, and the share written by suggestions.
    assert groups[0]["notes"] == 1
    assert groups[0]["median_seconds_launch_to_note"] == 240.0
    assert groups[0]["median_seconds_in_sidebar"] == 90.0
    assert groups[0]["ai_share_of_note_chars"] == 0.75
    a = groups[0]  # one note: 400 characters, 250 accepted, 50 edited; 2 edited lines
    shares = [a[f"{part}_share_of_note_chars"] for part in ("accepted", "edited", "typed")]
    assert shares == [0.625, 0.125, 0.25] and a["edits_per_note"] == 2.0
    overall = seeded.test_client().get("/admin/api/metrics?group_by=week", headers=bearer())
    weeks = {g["key"]: g for g in overall.get_json()["groups"]}
    assert [w["ai_share_of_note_chars"] for w in weeks.values() if w["notes"]] == [0.75, 0.2]


def test_metrics_period_filter(seeded):
    client = seeded.test_client()
    response = client.get(
        "/admin/api/metrics?group_by=week&from=2026-11-23&to=2026-11-29", headers=bearer()
    )
    assert [g["key"] for g in response.get_json()["groups"]] == ["2026-W48"]
    # A bare `to` date includes that day: W48's Sunday-night suggestion is in.
    assert response.get_json()["groups"][0]["shown"] == 5


def test_metrics_csv_by_accept_header_and_by_format(seeded):
    client = seeded.test_client()
    for response in (
        client.get("/admin/api/metrics?group_by=kind", headers={**bearer(), "Accept": "text/csv"}),
        client.get("/admin/api/metrics?group_by=kind&format=csv", headers=bearer()),
    ):
        assert response.status_code == 200
        assert response.mimetype == "text/csv"
        rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
        assert tuple(rows[0]) == FIELDS
        assert rows[1][:9] == ["care_gaps", "3", "0", "1", "0", "1", "0.3333", "2.0", "36.0"]
        assert rows[1][9] == "1"  # notes drawing on care gaps (seeded: one, before this release)
        assert rows[2][0] == "problem_list" and rows[2][7] == ""  # no edits: empty median


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("group_by=patient", "group_by"),
        ("from=2026-13-01", "from"),
        ("to=yesterday", "to"),
        ("from=2026-11-20&to=2026-11-01", "to"),
        ("format=xml", "format"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(api, query, parameter):
    response = api.get(f"/admin/api/metrics?{query}", headers=bearer())
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request"
    assert error["message"].startswith(f"{parameter}:")


def test_compare_variance_and_notes_endpoints(seeded):
    client = seeded.test_client()
    compare = client.get("/admin/api/metrics/compare?pivot=2026-11-23", headers=bearer())
    summary = next(g for g in compare.get_json()["groups"] if g["key"] == "summary")
    assert summary["z"] == -2.0 and summary["significant"] is True
    assert client.get("/admin/api/metrics/compare", headers=bearer()).status_code == 400
    variance = client.get("/admin/api/metrics/variance?min_shown=1", headers=bearer()).get_json()
    assert [s["key"] for s in variance["sites"]] == [
        "https://a.example/fhir",
        "https://b.example/fhir",
    ]
    assert not any(s["outlier"] for s in variance["sites"])
    notes = client.get("/admin/api/notes?group_by=site", headers=bearer()).get_json()
    assert notes["groups"][0] == {"key": "https://a.example/fhir", "saved": 1, "in_chart": 1}


# --- flagged suggestions (PHI) -----------------------------------------------------------


def test_flagged_list_has_no_clinical_text_and_the_detail_view_is_audited(seeded):
    client = seeded.test_client()
    listing = client.get("/admin/api/flagged", headers=bearer()).get_json()["flagged"]
    assert [f["id"] for f in listing] == ["s005"]
    assert "text" not in listing[0] and "patient" not in listing[0]
    assert audit_events(seeded, action="admin.flagged.view") == []

    detail = client.get("/admin/api/flagged/s005", headers=bearer()).get_json()["suggestion"]
    assert detail["text"] == "Suggested text" and detail["patient"] == "Patient/p1"
    (event,) = audit_events(seeded, action="admin.flagged.view")
    assert (event.actor, event.patient, event.site) == (
        "admin-api-token",
        "Patient/p1",
        "https://a.example/fhir",
    )
    assert event.detail["suggestion_id"] == "s005"
    # A suggestion that was not flagged is not open to this view.
    assert client.get("/admin/api/flagged/s001", headers=bearer()).status_code == 404


# --- changes: CSRF, rollout, engines, kill switches ---------------------------------------


def test_session_changes_need_the_csrf_header(api, identity):
    identity.sign_in(ADMIN_1)
    body = {"site": "*", "kind": "problem_summary", "enabled": False}
    refused = api.post("/admin/api/rollout", json=body)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "csrf_failed"
    assert api.post("/admin/api/rollout", json=body, headers=csrf()).status_code == 201
    # The token carries no cookie: it needs no CSRF header.
    assert api.post("/admin/api/rollout", json=body, headers=bearer()).status_code == 201


def test_rollout_rules_through_the_api(api):
    created = api.post(
        "/admin/api/rollout",
        json={
            "site": "http://ehr.test/fhir",
            "kind": "problem_summary",
            "enabled": True,
            "percentage": 0,
            "reason": "pilot not started",
        },
        headers=bearer(),
    )
    assert created.status_code == 201
    rule = created.get_json()["rule"]
    assert rule["percentage"] == 0 and rule["createdBy"] == "admin-api-token"
    decision = api.get(
        "/admin/api/rollout/decision?site=http://ehr.test/fhir&kind=problem_summary&fhir_user=Practitioner/5",
        headers=bearer(),
    ).get_json()
    assert decision["enabled"] is False
    assert decision["reason"].startswith("Not enabled for you yet")
    assert api.delete(f"/admin/api/rollout/{rule['id']}", headers=bearer()).status_code == 200
    assert (
        api.get(
            "/admin/api/rollout/decision?site=http://ehr.test/fhir&kind=problem_summary&fhir_user=Practitioner/5",
            headers=bearer(),
        ).get_json()["enabled"]
        is True
    )
    assert api.delete(f"/admin/api/rollout/{rule['id']}", headers=bearer()).status_code == 404
    bad = api.post(
        "/admin/api/rollout",
        json={"site": "*", "kind": "x", "percentage": "lots"},
        headers=bearer(),
    )
    assert bad.status_code == 400 and bad.get_json()["error"]["message"].startswith("percentage:")
    actions = [e.action for e in audit_events(api.application)]
    assert actions.count("rollout.set") == 1 and actions.count("rollout.remove") == 2


REPORT = {
    "kinds": [
        {
            "kind": "problem_summary",
            "engine": "llm:2.0",
            "patients": 40,
            "coverage": 1.0,
            "grounding_rate": 0.98,
            "dropped": 0,
            "mean_chars": 380,
            "p50_ms": 950,
        }
    ]
}


def recorded(app, report) -> str:
    """What `smartapp evaluate --record` leaves in the app's store: the report's SHA-256."""
    from smartapp.db import utcnow
    from smartapp.governance.evaluations import record_run

    with app.extensions["smartapp.db"].session() as s:
        return record_run(
            s, report, cohort="sandbox", site=None, recorded_by="cli:ci", now=utcnow()
        ).sha256


def test_engine_change_control_end_to_end(api, identity):
    app = api.application

    def as_admin(who, method, path, **kwargs):
        identity.sign_in(who)
        return getattr(api, method)(path, headers=csrf(), **kwargs)

    def active():
        identity.sign_out()
        return api.get(
            "/admin/api/engines/active?kind=problem_summary&site=http://ehr.test/fhir",
            headers=bearer(),
        ).get_json()

    proposed = as_admin(
        ADMIN_1,
        "post",
        "/admin/api/engines",
        json={
            "engine": "llm",
            "version": "2.0",
            "model": "m-2",
            "kinds": "problem_summary",
            "reason": "new model",
        },
    )
    assert proposed.status_code == 201
    vid = proposed.get_json()["version"]["id"]

    # No approval before an evaluation.
    early = as_admin(ADMIN_2, "post", f"/admin/api/engines/{vid}/approve", json={})
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "not_evaluated"

    # A posted report is refused: only a run the app recorded counts, cited by its hash.
    posted = api.post(f"/admin/api/engines/{vid}/evaluation", json=REPORT, headers=bearer())
    assert posted.status_code == 400
    assert posted.get_json()["error"]["code"] == "report_not_accepted"
    digest = recorded(app, REPORT)
    evaluated = api.post(
        f"/admin/api/engines/{vid}/evaluation", json={"evaluation": digest}, headers=bearer()
    )
    assert evaluated.status_code == 200 and evaluated.get_json()["version"]["state"] == "evaluated"
    assert evaluated.get_json()["version"]["evaluationSha256"] == digest

    mine = as_admin(ADMIN_1, "post", f"/admin/api/engines/{vid}/approve", json={})
    assert mine.status_code == 409 and mine.get_json()["error"]["code"] == "self_approval"
    token = api.post(f"/admin/api/engines/{vid}/approve", json={}, headers=bearer())
    assert token.get_json()["error"]["code"] == "approval_needs_person"

    approved = as_admin(
        ADMIN_2, "post", f"/admin/api/engines/{vid}/approve", json={"reason": "reviewed the report"}
    )
    assert approved.get_json()["version"]["approvedBy"] == who(ADMIN_2)
    assert active()["engine"] is None
    # The token never activates; the proposer may, since another person approved.
    by_token = api.post(f"/admin/api/engines/{vid}/activate", headers=bearer())
    assert by_token.get_json()["error"]["code"] == "activation_needs_person"
    activated = as_admin(ADMIN_1, "post", f"/admin/api/engines/{vid}/activate", json={})
    assert activated.status_code == 200
    assert activated.get_json()["version"]["activatedBy"] == who(ADMIN_1)
    assert active() == {
        "engine": {
            "id": vid,
            "name": "llm",
            "version": "2.0",
            "model": "m-2",
            "kinds": ["problem_summary"],
            "site": "*",
        },
        "killed": False,
    }

    # The kill switch applies to the very next request.
    switch = api.post(
        "/admin/api/kill-switches",
        json={"scope": "engine", "target": "llm", "engaged": True, "reason": "bad output"},
        headers=bearer(),
    )
    assert switch.status_code == 200
    assert active()["killed"] is True
    api.post(
        "/admin/api/kill-switches",
        json={"scope": "engine", "target": "llm", "engaged": False},
        headers=bearer(),
    )
    assert active()["killed"] is False

    # One rollback, and the next request no longer gets the version.
    rolled = as_admin(
        ADMIN_1,
        "post",
        f"/admin/api/engines/{vid}/rollback",
        json={"reason": "clinicians report omissions"},
    )
    assert rolled.get_json()["version"]["state"] == "rolled_back"
    assert active()["engine"] is None

    history = api.get("/admin/api/engines", headers=bearer()).get_json()["versions"][0]["history"]
    assert [(h["from"], h["to"], h["actor"]) for h in history] == [
        (None, "proposed", who(ADMIN_1)),
        ("proposed", "evaluated", "admin-api-token"),
        ("evaluated", "approved", who(ADMIN_2)),
        ("approved", "active", who(ADMIN_1)),
        ("active", "rolled_back", who(ADMIN_1)),
    ]

    events = audit_events(app, action="engine.")
    assert [(e.action, e.outcome) for e in reversed(events)] == [
        ("engine.propose", "success"),
        ("engine.approve", "failure"),  # not evaluated
        ("engine.evaluate", "success"),
        ("engine.approve", "failure"),  # self-approval
        ("engine.approve", "failure"),  # token
        ("engine.approve", "success"),
        ("engine.activate", "failure"),  # token
        ("engine.activate", "success"),
        ("engine.rollback", "success"),
    ]
    refusals = [e.detail["refused"] for e in reversed(events) if e.outcome == "failure"]
    assert refusals == [
        "not_evaluated",
        "self_approval",
        "approval_needs_person",
        "activation_needs_person",
    ]
    assert len(audit_events(app, action="killswitch.set")) == 2


def test_evaluation_below_minimum_is_refused_and_audited(api):
    vid = api.post(
        "/admin/api/engines",
        json={"engine": "llm", "version": "9", "kinds": ["problem_summary"]},
        headers=bearer(),
    ).get_json()["version"]["id"]
    low = {"kinds": [{**REPORT["kinds"][0], "engine": "llm:9", "grounding_rate": 0.5}]}
    response = api.post(
        f"/admin/api/engines/{vid}/evaluation",
        json={"evaluation": recorded(api.application, low)},
        headers=bearer(),
    )
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "grounding_below_minimum"
    (event,) = audit_events(api.application, action="engine.evaluate")
    assert event.outcome == "failure" and event.detail["target"] == vid


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "/admin/api/kill-switches",
            {"scope": "kind", "target": "care-gaps", "engaged": True, "reason": "typo"},
            "target: 'care-gaps' is not a known kind; one of problem_summary,",
        ),
        (
            "/admin/api/kill-switches",
            {"scope": "engine", "target": "gpt", "engaged": True, "reason": "typo"},
            "target: 'gpt' is not a known engine; one of builtin, builtin-rules, llm.",
        ),
        (
            "/admin/api/engines",
            {"engine": "llm", "version": "9", "kinds": ["problem_summary", "care-gaps"]},
            "kinds: 'care-gaps' is not a suggestion kind; one of problem_summary,",
        ),
        (
            "/admin/api/rollout",
            {"site": "*", "kind": "care-gaps", "enabled": False},
            "kind: one of problem_summary,",
        ),
    ],
)
def test_unknown_kind_names_are_refused_everywhere(api, path, body, message):
    response = api.post(path, json=body, headers=bearer())
    assert response.status_code == 400
    assert message in response.get_json()["error"]["message"]


# --- audit log ---------------------------------------------------------------------------


def test_audit_search_and_exports(api):
    api.post(
        "/admin/api/kill-switches",
        json={"scope": "kind", "target": "problem_summary", "engaged": True, "reason": "test"},
        headers=bearer(),
    )
    listing = api.get("/admin/api/audit?action=killswitch.set", headers=bearer()).get_json()
    assert listing["total"] == 1
    assert listing["events"][0]["detail"]["target"] == "problem_summary"

    as_csv = api.get("/admin/api/audit?format=csv", headers=bearer())
    assert as_csv.mimetype == "text/csv"
    assert as_csv.get_data(as_text=True).startswith("id,recorded,actor,action,")

    fhir = api.get("/admin/api/audit", headers={**bearer(), "Accept": "application/fhir+json"})
    assert fhir.mimetype == "application/fhir+json"
    bundle = fhir.get_json()
    Bundle.model_validate(bundle)
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"AuditEvent"}

    # Reading the audit log is itself recorded.
    assert {e.action for e in audit_events(api.application)} >= {"audit.search", "audit.export"}
    bad = api.get("/admin/api/audit?from=someday", headers=bearer())
    assert bad.status_code == 400 and bad.get_json()["error"]["message"].startswith("from:")


def test_pulse_summary_by_site_and_on_the_dashboard(seeded, identity):
    from datetime import UTC, datetime

    from smartapp.notes.models import SavedNote
    from smartapp.notes.pulse import PulseResponse

    with seeded.extensions["smartapp.db"].session() as s:
        notes = s.query(SavedNote).order_by(SavedNote.created_at).all()
        at = datetime(2026, 11, 20, tzinfo=UTC)
        s.add_all(
            [
                PulseResponse(note_id=notes[0].id, site=notes[0].site, fhir_user="P/1",
                              asked_at=at, answered_at=at, saved_time=4, checking=2),
                PulseResponse(note_id=notes[1].id, site=notes[1].site, fhir_user="P/1",
                              asked_at=at, answered_at=at, skipped=True),
            ]
        )  # fmt: skip
    client = seeded.test_client()
    groups = client.get("/admin/api/pulse?group_by=all", headers=bearer()).get_json()["groups"]
    assert groups == [
        {"key": "all", "asked": 2, "answered": 1, "skipped": 1,
         "mean_saved_time": 4.0, "mean_checking": 2.0}
    ]  # fmt: skip
    assert client.get("/admin/api/pulse?group_by=kind", headers=bearer()).status_code == 400
    identity.sign_in(ADMIN_1)
    page = client.get("/admin").get_data(as_text=True)
    assert "Is it saving time" in page and "4.0" in page
    # Site A's note: 62 % accepted, 12 % edited, 25 % typed, 2.0 edited lines (by site),
    # and the same measures by kind, engine and week.
    assert re.search(r"<td>62 %</td><td>12 %</td>\s*<td>25 %</td><td>2\.0</td>", page)
    for group_by in ("kind", "engine", "week"):
        assert f'id="saving-by-{group_by}"' in page
