"""The CDS Hooks service: a hook call in, one card out, and the chart kept for the launch.

https://cds-hooks.hl7.org/2.0/#calling-a-cds-service and https://cds-hooks.hl7.org/2.0/#feedback

A call reads the chart as the sidebar does (the prefetch, checked like any FHIR read; or,
when the prefetch is incomplete and the EHR gave `fhirAuthorization` for a server on the
allow-list, the sidebar's own chart read), records it as a chart read in the audit trail,
counts what the built-in rules have ready, and keeps a complete chart for the launch that
the card's link starts (`warm.py`).
"""

from __future__ import annotations

import logging
import re
import uuid as uuidlib
from collections.abc import Mapping
from typing import Any

import requests
from sqlalchemy.exc import IntegrityError

from smartapp import audit
from smartapp import kinds as K
from smartapp.cdshooks.cards import ReadyCounts, build_card
from smartapp.cdshooks.discovery import SERVICES, CDSService
from smartapp.cdshooks.models import CardFeedback, IssuedCard
from smartapp.cdshooks.prefetch import chart_from_prefetch
from smartapp.cdshooks.trust import VerifiedCaller
from smartapp.cdshooks.warm import WarmCharts
from smartapp.config import Settings, normalize_issuer
from smartapp.db import Database, utcnow
from smartapp.errors import AppError, BadRequest, Forbidden, NotFound, UpstreamError
from smartapp.fhir.auth import StaticToken
from smartapp.fhir.chart import load_snapshot
from smartapp.fhir.client import FHIRClient
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.governance.signal import ChangeSignal
from smartapp.identity import bound_identity
from smartapp.policy import PolicySource
from smartapp.smart.scopes import GrantedScopes
from smartapp.suggestions import safety
from smartapp.suggestions.registry import SuggestionService

log = logging.getLogger(__name__)

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_UUID = re.compile(r"(urn:uuid:)?[0-9a-fA-F-]{8,64}")
OUTCOMES = ("accepted", "overridden")
#: Feedback items read per request (a batch of one card's outcomes is a handful).
MAX_FEEDBACK_ITEMS = 100

FEEDBACK_ACTION = "cdshooks.feedback"
HOOK_ACTION = "cdshooks.call"


class ServiceUnknown(NotFound):
    code = "unknown_service"
    default_message = "No CDS service of that id here (see GET /cds-services)."


class CDSHooksService:
    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        warm: WarmCharts,
        engines: SuggestionService,
        http: requests.Session,
        signal: ChangeSignal | None = None,
    ) -> None:
        self._settings = settings
        self._db = database
        self._warm = warm
        self._engines = engines
        self._http = http
        # What a clinician gets is decided as for the sidebar (site file, dashboard rules,
        # kill switches): a kind that is off for them is counted on no card.
        self._policy = PolicySource(
            site_config=lambda: engines.config, database=database, signal=signal
        )

    def service(self, service_id: str) -> CDSService:
        found = SERVICES.get(service_id)
        if found is None:
            raise ServiceUnknown()
        return found

    # -- a hook call ---------------------------------------------------------------------

    def call(
        self, service_id: str, body: Mapping[str, Any], *, caller: VerifiedCaller, launch_url: str
    ) -> dict[str, Any]:
        service = self.service(service_id)
        if body.get("hook") != service.hook:
            raise BadRequest(f"This service answers the {service.hook} hook.")
        hook_instance = body.get("hookInstance")
        if not isinstance(hook_instance, str) or not _UUID.fullmatch(hook_instance):
            raise BadRequest("hookInstance must be a UUID.")
        fhir_server = body.get("fhirServer")
        if not isinstance(fhir_server, str) or not fhir_server:
            # The card's launch and the warmed chart belong to one FHIR server.
            raise BadRequest("fhirServer is required: the chart belongs to that server.")
        site = normalize_issuer(fhir_server)
        if site not in self._settings.allowed_issuers or not caller.client.speaks_for(site):
            raise Forbidden("This EHR may not call the service for that fhirServer.")
        context = body.get("context")
        if not isinstance(context, Mapping):
            raise BadRequest("context is required.")
        patient_id = context.get("patientId")
        if not isinstance(patient_id, str) or not _FHIR_ID.fullmatch(patient_id):
            raise BadRequest("context.patientId must be a FHIR id.")
        encounter_id = context.get("encounterId")
        if encounter_id is not None and (
            not isinstance(encounter_id, str) or not _FHIR_ID.fullmatch(encounter_id)
        ):
            raise BadRequest("context.encounterId must be a FHIR id.")
        user = context.get("userId") if isinstance(context.get("userId"), str) else None
        actor = bound_identity(site, user)

        prefetched = chart_from_prefetch(
            body.get("prefetch"),
            patient_id=patient_id,
            encounter_id=encounter_id,
            fhir_server=site,
            max_pages=self._settings.max_pages,
        )
        snapshot, complete, source = prefetched.snapshot, prefetched.complete, "prefetch"
        if not complete:
            fetched = self._read_chart(
                body.get("fhirAuthorization"),
                site=site,
                patient_id=patient_id,
                encounter_id=encounter_id,
            )
            if fetched is not None:
                snapshot, complete, source = fetched, True, "fhir"
        if snapshot is not None:
            audit.record(
                self._db,
                actor=actor,
                action=audit.Action.CHART_READ,
                site=site,
                patient=patient_id,
                detail={
                    "source": f"cds-hooks {source}",
                    "hook": service.hook,
                    "hookInstance": hook_instance,
                    "requests": snapshot.request_count,
                    "problems": len(snapshot.problems),
                    "missing": list(prefetched.missing) if source == "prefetch" else [],
                },
            )
        counts = self._counts(snapshot, iss=site, fhir_user=user) if snapshot else None
        app_context = self._warm.put(snapshot, iss=site) if snapshot and complete else None
        card_uuid = str(uuidlib.uuid4())
        card = build_card(
            uuid=card_uuid,
            counts=counts,
            launch_url=launch_url,
            app_context=app_context,
            partial=snapshot is not None and not complete,
        )
        with self._db.session() as session:
            session.add(
                IssuedCard(
                    uuid=card_uuid,
                    service_id=service.id,
                    client=caller.client.iss,
                    site=site,
                    patient_id=patient_id,
                    hook_instance=hook_instance,
                    summary={
                        **(counts.to_json() if counts else {}),
                        "warmed": app_context is not None,
                    },
                )
            )
        log.info(
            "CDS hook %s answered: chart from %s, complete=%s, warmed=%s",
            service.hook,
            source if snapshot else "nowhere",
            complete,
            app_context is not None,
        )
        return {"cards": [card]}

    def _read_chart(
        self, authorization: Any, *, site: str, patient_id: str, encounter_id: str | None
    ) -> ChartSnapshot | None:
        """The sidebar's own chart read with the EHR's `fhirAuthorization`, if it gave one."""
        if not isinstance(authorization, Mapping):
            return None
        token = authorization.get("access_token")
        if not isinstance(token, str) or not token:
            return None
        if str(authorization.get("token_type", "")).lower() != "bearer":
            return None
        bound = authorization.get("patient")
        if bound is not None and bound != patient_id:
            # A token for another patient reads nothing for this one.
            log.warning("fhirAuthorization names another patient; not used")
            return None
        scope = authorization.get("scope")
        readable = GrantedScopes(scope).readable_types() if isinstance(scope, str) else None
        client = FHIRClient(
            site,
            tokens=StaticToken(token),
            session=self._http,
            deadline=float(self._settings.fhir_deadline_seconds),
            max_response_bytes=self._settings.fhir_max_response_mb * 1024 * 1024,
        )
        try:
            return load_snapshot(
                client,
                patient_id=patient_id,
                encounter_id=encounter_id,
                readable_types=readable,
                max_pages=self._settings.max_pages,
                configured_quirks=self._engines.config.for_issuer(site).quirks,
            )
        except (UpstreamError, AppError) as exc:
            log.info("CDS hook: the chart could not be read with fhirAuthorization (%s)", exc.code)
            return None

    def _counts(self, snapshot: ChartSnapshot, *, iss: str, fhir_user: str | None) -> ReadyCounts:
        """What the built-in rules have ready (no LLM call inside a hook's time budget)."""
        effective = self._engines.config.for_issuer(iss)
        plan = self._policy.current().plan(iss=iss, fhir_user=fhir_user, now=utcnow())
        kinds = plan.enabled
        builtin = self._engines.builtin
        gaps = (
            builtin.due_care_gaps(snapshot, effective.engine_options(K.CARE_GAPS, enabled=kinds))
            if K.CARE_GAPS in kinds
            else []
        )
        hints = []
        if K.MEDICATIONS in kinds:
            for suggestion in builtin.suggest(
                snapshot, K.MEDICATIONS, effective.engine_options(K.MEDICATIONS, enabled=kinds)
            ):
                hints += [s for s in suggestion.statements if s.rule_id]
        return ReadyCounts(
            care_gaps=len(gaps),
            medication_hints=len(hints),
            care_gap_topics=tuple(dict.fromkeys(s.text.split(":")[0] for s in gaps)),
            medication_topics=tuple(dict.fromkeys(safety.topic(str(s.rule_id)) for s in hints)),
        )

    # -- feedback --------------------------------------------------------------------------

    def feedback(
        self, service_id: str, body: Mapping[str, Any], *, caller: VerifiedCaller
    ) -> dict[str, Any]:
        service = self.service(service_id)
        items = body.get("feedback")
        if not isinstance(items, list) or not items or len(items) > MAX_FEEDBACK_ITEMS:
            raise BadRequest(f"feedback must list 1 to {MAX_FEEDBACK_ITEMS} items.")
        parsed = [_feedback_item(item) for item in items]
        recorded = duplicates = 0
        for item in parsed:
            with self._db.session() as session:
                card = session.get(IssuedCard, item["card"])
                if (
                    card is None
                    or card.service_id != service.id
                    or card.client != caller.client.iss
                ):
                    raise NotFound("No card of that uuid was issued to this EHR by this service.")
                site, patient = card.site, card.patient_id
            try:
                with self._db.session() as session:
                    session.add(
                        CardFeedback(
                            card_uuid=item["card"],
                            outcome=item["outcome"],
                            outcome_timestamp=item["outcomeTimestamp"],
                            override_reason=item["reason"],
                            user_comment=item["comment"],
                            accepted_suggestions=item["accepted"],
                        )
                    )
            except IntegrityError:
                duplicates += 1  # the spec asks services to tolerate repeats: one item
                continue
            recorded += 1
            audit.record(
                self._db,
                actor=None,
                action=FEEDBACK_ACTION,
                site=site,
                patient=patient,
                detail={
                    "card": item["card"],
                    "service": service.id,
                    "outcome": item["outcome"],
                    "reason": (item["reason"] or {}).get("code"),
                    "client": caller.client.iss,
                },
            )
        return {"status": "recorded", "recorded": recorded, "duplicates": duplicates}


def _feedback_item(item: Any) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise BadRequest("Each feedback item must be an object.")
    card = item.get("card")
    if not isinstance(card, str) or not _UUID.fullmatch(card):
        raise BadRequest("feedback.card must be the card's uuid.")
    outcome = item.get("outcome")
    if outcome not in OUTCOMES:
        raise BadRequest("feedback.outcome must be accepted or overridden.")
    timestamp = item.get("outcomeTimestamp")
    if not isinstance(timestamp, str) or not 0 < len(timestamp) <= 64:
        raise BadRequest("feedback.outcomeTimestamp must be an instant.")
    accepted = item.get("acceptedSuggestions") or []
    if not isinstance(accepted, list) or not all(
        isinstance(a, Mapping) and isinstance(a.get("id"), str) for a in accepted
    ):
        raise BadRequest("feedback.acceptedSuggestions must list {id} objects.")
    reason: dict[str, str] | None = None
    comment: str | None = None
    override = item.get("overrideReason")
    if override is not None:
        if outcome != "overridden" or not isinstance(override, Mapping):
            raise BadRequest("feedback.overrideReason goes with outcome overridden only.")
        coding = override.get("reason")
        if coding is not None:
            if not isinstance(coding, Mapping):
                raise BadRequest("feedback.overrideReason.reason must be a Coding.")
            reason = {k: str(coding[k])[:256] for k in ("system", "code", "display") if k in coding}
        text = override.get("userComment")
        if text is not None:
            if not isinstance(text, str) or len(text) > 2000:
                raise BadRequest("feedback.overrideReason.userComment must be short text.")
            comment = text
    return {
        "card": card.removeprefix("urn:uuid:"),
        "outcome": outcome,
        "outcomeTimestamp": timestamp,
        "accepted": [str(a["id"])[:64] for a in accepted],
        "reason": reason,
        "comment": comment,
    }
