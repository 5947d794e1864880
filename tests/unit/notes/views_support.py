"""Helpers for the sidebar view tests: a launch session in the store, a chart snapshot source.

The launch is written the way `/callback` writes it (`smart.session.create_session`), so
the views find it through the real cookie lookup; the chart comes from fixture FHIR JSON.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask

from smartapp.db import utcnow
from smartapp.fhir.parsing import build_snapshot
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.kinds import KINDS
from smartapp.notes.drafting import DraftPlan, Drafts
from smartapp.notes.service import SidebarService
from smartapp.smart.client import TokenResponse
from smartapp.smart.idtoken import IDTokenClaims
from smartapp.smart.models import PendingAuthorization
from smartapp.smart.services import get_services
from smartapp.smart.session import SESSION_COOKIES, LaunchContext, create_session
from tests.conftest import SANDBOX_ISS
from tests.unit.fhir.fakes import chart_fixtures

SCOPE = (
    "launch openid fhirUser patient/Patient.rs patient/Observation.rs patient/Condition.rs "
    "patient/MedicationRequest.rs patient/Medication.rs patient/AllergyIntolerance.rs "
    "patient/Procedure.rs patient/Immunization.rs patient/DocumentReference.rs "
    "patient/DocumentReference.c"
)


class SnapshotSource:
    def __init__(self, snapshot: ChartSnapshot) -> None:
        self.chart = snapshot
        self.calls: list[bool] = []  # the `refresh` flag of each call

    def snapshot(
        self, launch: LaunchContext, *, refresh: bool = False, reread: bool = False
    ) -> ChartSnapshot:
        self.calls.append(refresh)
        return self.chart

    def cached(self, launch: LaunchContext) -> ChartSnapshot | None:
        return self.chart

    def patient(self, launch: LaunchContext) -> dict[str, Any]:
        return self.chart.patient


class NoDrafts:
    """A drafter (notes.service's `Drafter`) that plans every kind and drafts nothing."""

    def plan(
        self, *, iss: str, fhir_user: str | None, governance_version: int | None = None
    ) -> DraftPlan:
        return DraftPlan(kinds=KINDS)

    def draft(self, snapshot: ChartSnapshot, *, iss: str, plan: DraftPlan) -> Drafts:
        return Drafts(suggestions=[])


def fixture_snapshot() -> ChartSnapshot:
    """Patient pat-1's chart from tests/fixtures/fhir (the fhir/ unit tests' fixtures)."""
    return build_snapshot(chart_fixtures(), patient_id="pat-1", fetched_at=utcnow())


def use_chart(app: Flask, snapshot: ChartSnapshot) -> SnapshotSource:
    """Serve `snapshot` as every launch's chart; nothing is fetched from an EHR."""
    source = SnapshotSource(snapshot)

    def no_ehr(launch: LaunchContext) -> Any:
        raise AssertionError("the sidebar views under test must not talk to the EHR")

    app.extensions["smartapp.sidebar"] = SidebarService(
        database=app.extensions["smartapp.db"],
        snapshots=source,
        drafter=NoDrafts(),
        fhir_for=no_ehr,
    )
    return source


def launch(
    app: Flask,
    client: Any,
    *,
    patient: str = "pat-1",
    scope: str = SCOPE,
    smart_style_url: str | None = None,
    need_patient_banner: bool = False,
    fhir_user: str | None = None,
) -> LaunchContext:
    """A live clinician launch, its cookie set on `client` as the browser would hold it."""
    now = utcnow()
    pending = PendingAuthorization(
        state_hash="0" * 64,
        binding_hash="1" * 64,
        iss=SANDBOX_ISS,
        code_verifier_enc="",
        requested_scope=scope,
        redirect_uri="http://app.test/callback",
        authorization_endpoint="http://ehr.test/auth/authorize",
        token_endpoint="http://ehr.test/auth/token",
        purpose="clinician",
        expires_at=now + timedelta(minutes=5),
    )
    token = TokenResponse(
        access_token="at-not-used-here",
        token_type="Bearer",
        expires_in=3600,
        expires_at=now + timedelta(hours=1),
        scope=scope,
        scope_from_server=True,
        patient=patient,
        encounter=None,
        need_patient_banner=need_patient_banner,
        smart_style_url=smart_style_url,
    )
    # The ID token's fhirUser, when the test needs a clinician (a rollout places people).
    claims = (
        IDTokenClaims(sub=fhir_user, fhir_user_raw=fhir_user, fhir_user=fhir_user, claims={})
        if fhir_user
        else None
    )
    cookie, context = create_session(
        get_services(app), pending=pending, token=token, id_claims=claims
    )
    client.set_cookie(SESSION_COOKIES["clinician"], cookie)
    return context
