"""Integration: the whole loop against the sandbox imitating each EHR family.

Launch, suggestions, a note, its retry after a lost response, an early refresh the EHR
refuses while the token is still valid, the tokens ended by the EHR and the note sent
with the next launch — once per imitation (smartapp/sandbox/imitations.py), with the
app choosing its quirks profile from the CapabilityStatement; and each once more in a
browser that keeps none of the app's cookies (an embedded browser blocking third-party
cookies), the launch carried by the per-window token alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import update

from smartapp.check import AppProfile, check_server
from smartapp.db import utcnow
from smartapp.notes.models import SavedNote
from smartapp.smart.crypto import hash_secret
from smartapp.smart.models import LaunchSession
from smartapp.stack import Stack
from tests.integration.conftest import Launched, ehr_launch, start_stack
from tests.integration.test_outbox import accept_first, our_notes
from tests.integration.test_window_sessions import Window, window_launch

pytestmark = pytest.mark.integration

#: imitation → (the quirks profile the app should detect, whether it reads newest first)
EXPECTED = {
    "generic": ("generic", True),
    "epic": ("epic", True),
    "oracle-health": ("oracle-health", True),
    "athena": ("athena", False),
    "meditech": ("meditech", False),
}


@pytest.fixture(params=sorted(EXPECTED))
def imitated(request, tmp_path: Path, sandbox_template: Path) -> Iterator[tuple[str, Stack]]:
    running = start_stack(tmp_path, sandbox_template, imitate=request.param)
    yield request.param, running
    running.stop()


#: How the browser carries the launch: the session cookie, or (cookies blocked) the
#: per-window token the page sends as a header.
CARRIERS = {"cookie": ehr_launch, "no-cookies": window_launch}


def _session_id(launched: Launched | Window) -> str:
    if isinstance(launched, Window):
        return hash_secret(launched.token)
    return hash_secret(launched.session.cookies.get("smartapp_session"))


def _tokens_near_expiry(stack: Stack, session_id: str, *, left: int = 5) -> None:
    """As if the access token had `left` of its 600 seconds left (negative: expired)."""
    now = utcnow()
    with stack.app.extensions["smartapp.db"].session() as s:
        s.execute(
            update(LaunchSession)
            .where(LaunchSession.id == session_id)
            .values(
                access_expires_at=now + timedelta(seconds=left),
                created_at=now - timedelta(seconds=600 - left),
                last_refreshed_at=None,
            )
        )


@pytest.mark.parametrize("carrier", sorted(CARRIERS))
def test_the_whole_loop_under_each_ehr_imitation(imitated, carrier: str):
    name, stack = imitated
    launch = CARRIERS[carrier]
    profile_id, newest_first = EXPECTED[name]
    report = check_server(
        stack.fhir_base,
        profile=AppProfile.from_env({}),
        http=requests.Session(),
        timeout=10,
    )
    lines = {line.key: line for line in report.lines}
    assert lines["quirks-profile"].detail.startswith(profile_id + " ")
    assert (lines["sort-newest"].status == "ok") is newest_first

    launched = launch(stack)
    answer = launched.api("GET", "/api/suggestions")
    assert answer.status_code == 200, answer.text[:300]
    problems = answer.json()["chart"]["problems"]
    assert not [p for p in problems if p["code"] == "search_failed"], problems
    context = launched.api("GET", "/api/context").json()
    assert context["canWriteNotes"] is True  # v1 grants (.write) count as create

    # A note, and its retry after the answer was lost: one note in the chart.
    accept_first(launched)
    saved = launched.api("POST", "/api/note")
    assert saved.status_code == 201, saved.text[:300]
    with stack.app.extensions["smartapp.db"].session() as s:
        note = s.get(SavedNote, saved.json()["note"]["id"])
        note.status, note.document_reference, note.provenance = "pending", None, None
        note.chart_revision = note.document_revision = 0
    outbox = stack.app.extensions["smartapp.outbox"]
    assert outbox.run_once(force=True).notes_delivered == 1
    assert len(our_notes(launched)) == 1

    # The token runs out, twice: each time one refresh renews it (rotated refresh token
    # or, where the EHR does not rotate, the same one again).
    for _ in range(2):
        _tokens_near_expiry(stack, _session_id(launched), left=-1)
        renewed = launched.api("POST", "/api/refresh")
        assert renewed.status_code == 200, renewed.text[:300]

    # The EHR refuses the early refresh; the still-valid token carries on.
    store = stack.ehr.extensions["smartapp.sandbox"].store
    store._execute("UPDATE tokens SET refresh_revoked = 1", ())
    _tokens_near_expiry(stack, _session_id(launched))
    again = launched.api("POST", "/api/refresh")
    assert again.status_code == 200, again.text[:300]

    # Then the EHR ends the tokens: a second note waits for the next launch, never failed.
    store._execute("UPDATE tokens SET access_revoked = 1, refresh_revoked = 1", ())
    accept_first(launched, "medications")
    waiting = launched.api("POST", "/api/note").json()
    assert waiting["note"]["status"] == "pending"
    relaunched = launch(stack)
    assert relaunched.api("GET", "/api/suggestions").status_code == 200
    assert outbox.run_once(force=True).notes_delivered == 1
    assert len(our_notes(launched)) == 1  # the same draft, revised: never a duplicate
    notes = relaunched.api("GET", "/api/notes").json()["notes"]
    assert notes and all(n["status"] == "in_chart" for n in notes)
