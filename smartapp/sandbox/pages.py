"""The mock EHR screens: a patient list and a chart with the app launched in its sidebar.

The sidebar iframe is a real SMART EHR launch (https://hl7.org/fhir/smart-app-launch/
app-launch.html#launch-app-ehr-launch): a fresh launch id for the patient, their latest
encounter and the signed-in user. Chart data is untrusted: templates autoescape all of it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    make_response,
    redirect,
    render_template,
    request,
)

from smartapp.sandbox import search
from smartapp.sandbox.auth import SandboxAuth
from smartapp.sandbox.cds_client import SandboxCDSClient, ShownCard
from smartapp.sandbox.store import Store

Resource = dict[str, Any]
USER_COOKIE = "ehr_user"
_NOTE_TEXT_LIMIT = 6000


def concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    return ""


def human_name(resource: Resource | None) -> str:
    if not resource:
        return ""
    names = resource.get("name") or []
    if not names or not isinstance(names[0], dict):
        return str(resource.get("id", ""))
    name = names[0]
    if name.get("text"):
        return str(name["text"])
    given = " ".join(str(g) for g in name.get("given") or [])
    return f"{given} {name.get('family', '')}".strip()


def practitioner_name(resource: Resource | None) -> str:
    """ "Dr Ada Lovelace, MD": how an EHR shows its users."""
    if not resource:
        return ""
    names = resource.get("name") or []
    if not names or not isinstance(names[0], dict):
        return str(resource.get("id", ""))
    name = names[0]
    parts = [*(name.get("prefix") or []), *(name.get("given") or []), name.get("family", "")]
    text = " ".join(str(p) for p in parts if p)
    suffix = ", ".join(str(s) for s in name.get("suffix") or [])
    return f"{text}, {suffix}" if suffix else text


def mrn(patient: Resource) -> str:
    for identifier in patient.get("identifier") or []:
        codings = (identifier.get("type") or {}).get("coding") or []
        if any(c.get("code") == "MR" for c in codings):
            return str(identifier.get("value", ""))
    identifiers = patient.get("identifier") or [{}]
    return str(identifiers[0].get("value", ""))


def age_of(birth_date: str | None, today: date | None = None) -> str:
    if not birth_date:
        return ""
    try:
        born = date.fromisoformat(birth_date[:10])
    except ValueError:
        return ""
    today = today or date.today()
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return f"{years} y"


def _quantity(value: Any) -> str:
    if not isinstance(value, dict) or "value" not in value:
        return ""
    return f"{value['value']} {value.get('unit') or value.get('code') or ''}".strip()


def observation_value(observation: Resource) -> str:
    if "valueQuantity" in observation:
        return _quantity(observation["valueQuantity"])
    if "valueCodeableConcept" in observation:
        return concept_text(observation["valueCodeableConcept"])
    if "valueString" in observation:
        return str(observation["valueString"])
    components = observation.get("component") or []
    values = [c.get("valueQuantity", {}).get("value") for c in components]
    if len(values) == 2 and all(v is not None for v in values):
        unit = components[0].get("valueQuantity", {}).get("unit", "")
        return f"{values[0]}/{values[1]} {unit}".strip()
    return ", ".join(
        f"{concept_text(c.get('code'))} {_quantity(c.get('valueQuantity'))}" for c in components
    )


def _is_category(resource: Resource, code: str) -> bool:
    return any(
        isinstance(c, dict) and c.get("code") == code
        for category in resource.get("category") or []
        if isinstance(category, dict)
        for c in category.get("coding") or []
    )


def _status_code(concept: Any) -> str:
    for coding in (concept or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    return ""


class ChartReader:
    """Turns one patient's stored resources into what the chart screen shows."""

    def __init__(self, store: Store, fhir_base: str) -> None:
        self.store = store
        self.fhir_base = fhir_base

    def resources(self, resource_type: str, patient_id: str) -> list[Resource]:
        return [item.body for item in self.store.list(resource_type, patient=patient_id)]

    def medication_text(self, request_: Resource) -> str:
        if "medicationCodeableConcept" in request_:
            return concept_text(request_["medicationCodeableConcept"])
        reference = (request_.get("medicationReference") or {}).get("reference", "")
        if reference.startswith("#"):
            for contained in request_.get("contained") or []:
                if isinstance(contained, dict) and contained.get("id") == reference[1:]:
                    return concept_text(contained.get("code"))
        elif reference:
            rtype, _, rid = search.normalize_reference(reference, self.fhir_base).partition("/")
            found = self.store.get(rtype, rid) if rid else None
            if found:
                return concept_text(found.body.get("code"))
        return str((request_.get("medicationReference") or {}).get("display", "Medication"))

    def problems(self, patient_id: str) -> tuple[list[Resource], list[Resource]]:
        active: list[Resource] = []
        other: list[Resource] = []
        for condition in self.resources("Condition", patient_id):
            row = {
                "text": concept_text(condition.get("code")),
                "onset": str(condition.get("onsetDateTime", ""))[:10],
                "abated": str(condition.get("abatementDateTime", ""))[:10],
                "status": _status_code(condition.get("clinicalStatus")),
            }
            (active if row["status"] in ("active", "recurrence", "relapse") else other).append(row)
        active.sort(key=lambda r: r["onset"], reverse=True)
        other.sort(key=lambda r: r["onset"], reverse=True)
        return active, other

    def medications(self, patient_id: str) -> tuple[list[Resource], list[Resource]]:
        current: list[Resource] = []
        past: list[Resource] = []
        for med in self.resources("MedicationRequest", patient_id):
            row = {
                "text": self.medication_text(med),
                "dose": "; ".join(
                    str(d.get("text", ""))
                    for d in med.get("dosageInstruction") or []
                    if isinstance(d, dict)
                ),
                "authored": str(med.get("authoredOn", ""))[:10],
                "status": str(med.get("status", "")),
                "reason": concept_text(med.get("statusReason")),
            }
            (current if row["status"] in ("active", "on-hold") else past).append(row)
        current.sort(key=lambda r: r["text"].casefold())
        past.sort(key=lambda r: r["authored"], reverse=True)
        return current, past

    def results(self, patient_id: str, category: str) -> list[Resource]:
        """Latest value per code, with the previous one for a trend."""
        series: dict[str, list[Resource]] = {}
        for observation in self.resources("Observation", patient_id):
            if not _is_category(observation, category):
                continue
            key = concept_text(observation.get("code"))
            series.setdefault(key, []).append(observation)
        rows = []
        for name, observations in series.items():
            observations.sort(key=search.sort_key_date, reverse=True)
            latest = observations[0]
            rows.append(
                {
                    "name": name,
                    "value": observation_value(latest),
                    "date": search.sort_key_date(latest)[:10],
                    "previous": observation_value(observations[1]) if len(observations) > 1 else "",
                    "count": len(observations),
                }
            )
        rows.sort(key=lambda r: str(r["name"]).casefold())
        return rows

    def notes(self, patient_id: str) -> list[Resource]:
        provenance_targets: dict[str, int] = {}
        for provenance in self.resources("Provenance", patient_id):
            for target in provenance.get("target") or []:
                ref = search.normalize_reference(
                    str((target or {}).get("reference", "")), self.fhir_base
                ).split("/_history")[0]
                provenance_targets[ref] = provenance_targets.get(ref, 0) + 1
        rows = []
        for document in self.resources("DocumentReference", patient_id):
            texts = []
            for content in document.get("content") or []:
                attachment = (content or {}).get("attachment") or {}
                if str(attachment.get("contentType", "")).startswith("text/") and attachment.get(
                    "data"
                ):
                    try:
                        texts.append(
                            base64.b64decode(attachment["data"]).decode("utf-8", errors="replace")
                        )
                    except (binascii.Error, ValueError):
                        texts.append("(attachment could not be decoded)")
            text = "\n\n".join(texts)
            security = (document.get("meta") or {}).get("security") or []
            rows.append(
                {
                    "id": document.get("id"),
                    "title": concept_text(document.get("type"))
                    or document.get("description")
                    or "Document",
                    "date": str(document.get("date", "")),
                    "status": document.get("status", ""),
                    "doc_status": document.get("docStatus", ""),
                    "authors": ", ".join(
                        str(a.get("display") or a.get("reference", ""))
                        for a in document.get("author") or []
                        if isinstance(a, dict)
                    ),
                    "ai": any(isinstance(s, dict) and s.get("code") == "AIAST" for s in security),
                    "provenance": provenance_targets.get(
                        f"DocumentReference/{document.get('id')}", 0
                    ),
                    "text": text[:_NOTE_TEXT_LIMIT],
                    "truncated": len(text) > _NOTE_TEXT_LIMIT,
                }
            )
        rows.sort(key=lambda r: r["date"], reverse=True)
        return rows

    def simple(
        self, patient_id: str, resource_type: str, code_key: str, date_keys: Sequence[str]
    ) -> list[Resource]:
        rows = []
        for resource in self.resources(resource_type, patient_id):
            when = next((str(resource[k]) for k in date_keys if resource.get(k)), "")
            rows.append(
                {
                    "text": concept_text(resource.get(code_key)),
                    "date": when[:10],
                    "status": resource.get("status", ""),
                }
            )
        rows.sort(key=lambda r: r["date"], reverse=True)
        return rows

    def allergies(self, patient_id: str) -> list[Resource]:
        rows = []
        for allergy in self.resources("AllergyIntolerance", patient_id):
            reactions = [
                concept_text(m)
                for r in allergy.get("reaction") or []
                for m in (r or {}).get("manifestation") or []
            ]
            rows.append(
                {
                    "text": concept_text(allergy.get("code")),
                    "reaction": ", ".join(reactions),
                    "criticality": allergy.get("criticality", ""),
                }
            )
        return rows

    def encounters(self, patient_id: str) -> list[Resource]:
        rows = []
        for encounter in self.resources("Encounter", patient_id):
            types = ", ".join(concept_text(t) for t in encounter.get("type") or [])
            rows.append(
                {
                    "id": encounter.get("id"),
                    "date": str((encounter.get("period") or {}).get("start", ""))[:10],
                    "type": types or concept_text(encounter.get("class")),
                    "status": encounter.get("status", ""),
                }
            )
        rows.sort(key=lambda r: r["date"], reverse=True)
        return rows


def latest_encounter_id(store: Store, patient_id: str) -> str | None:
    encounters = store.list("Encounter", patient=patient_id)
    if not encounters:
        return None
    latest = max(encounters, key=lambda e: str((e.body.get("period") or {}).get("start", "")))
    return latest.id


def init_app(
    app: Flask,
    *,
    store: Store,
    auth: SandboxAuth,
    default_client_id: str,
    practitioners: Callable[[], list[tuple[str, str]]],
    cds: SandboxCDSClient | None = None,
) -> None:
    bp = Blueprint("ehr_pages", __name__)
    reader = ChartReader(store, auth.fhir_base)
    app_origins = sorted(
        {
            f"{urlsplit(uri).scheme}://{urlsplit(uri).netloc}"
            for client in auth.clients.values()
            for uri in (*client.redirect_uris, client.launch_uri or "")
            if uri
        }
    )

    def signed_in() -> tuple[str, str]:
        users = practitioners()
        chosen = request.cookies.get(USER_COOKIE)
        for user in users:
            if user[0] == chosen:
                return user
        return users[0]

    @bp.after_app_request
    def headers(response: Response) -> Response:
        if response.mimetype == "text/html":
            # 'self' too: the app in the sidebar goes through this EHR's own authorize endpoint.
            frames = " ".join(["'self'", *app_origins])
            actions = " ".join(["'self'", *app_origins])
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                f"frame-src {frames}; form-action {actions}; "
                "frame-ancestors 'self'; base-uri 'none'; object-src 'none'",
            )
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @bp.get("/")
    def patient_list() -> str:
        patients = []
        for item in store.list("Patient"):
            patient = item.body
            active, _ = reader.problems(item.id)
            patients.append(
                {
                    "id": item.id,
                    "name": human_name(patient),
                    "mrn": mrn(patient),
                    "birth_date": patient.get("birthDate", ""),
                    "age": age_of(patient.get("birthDate")),
                    "gender": patient.get("gender", ""),
                    "problems": [p["text"] for p in active[:3]],
                    "more": max(0, len(active) - 3),
                }
            )
        return render_template(
            "sandbox/patients.html", patients=patients, user=signed_in(), users=practitioners()
        )

    @bp.get("/patients/<patient_id>")
    def chart(patient_id: str) -> str:
        found = store.get("Patient", patient_id)
        if found is None:
            abort(404)
        patient = found.body
        user = signed_in()
        encounter = latest_encounter_id(store, patient_id)
        launch_id = auth.create_launch(
            patient=patient_id, encounter=encounter, user=user[0], client_id=default_client_id
        )
        tab_launch_id = auth.create_launch(
            patient=patient_id, encounter=encounter, user=user[0], client_id=default_client_id
        )
        active, past = reader.problems(patient_id)
        current_meds, past_meds = reader.medications(patient_id)
        cards = (
            shown_cards(
                cds.patient_view(patient_id=patient_id, encounter_id=encounter, user=user[0]),
                patient_id=patient_id,
                encounter=encounter,
                user=user[0],
            )
            if cds is not None
            else []
        )
        return render_template(
            "sandbox/chart.html",
            patient={
                "id": patient_id,
                "name": human_name(patient),
                "mrn": mrn(patient),
                "birth_date": patient.get("birthDate", ""),
                "age": age_of(patient.get("birthDate")),
                "gender": patient.get("gender", ""),
            },
            encounter=encounter,
            app_url=auth.launch_url(default_client_id, launch_id),
            tab_url=auth.launch_url(default_client_id, tab_launch_id),
            problems=active,
            past_problems=past,
            medications=current_meds,
            past_medications=past_meds,
            allergies=reader.allergies(patient_id),
            labs=reader.results(patient_id, "laboratory"),
            vitals=reader.results(patient_id, "vital-signs"),
            immunizations=reader.simple(
                patient_id, "Immunization", "vaccineCode", ("occurrenceDateTime",)
            ),
            procedures=reader.simple(patient_id, "Procedure", "code", ("performedDateTime",)),
            encounters=reader.encounters(patient_id)[:8],
            notes=reader.notes(patient_id),
            user=user,
            users=practitioners(),
            cds_cards=cards,
        )

    def shown_cards(
        cards: list[dict[str, Any]], *, patient_id: str, encounter: str | None, user: str
    ) -> list[ShownCard]:
        """The cards as the chart shows them. A smart link is honoured only when its URL is
        a registered app's launch URL: the EHR then starts a launch carrying appContext."""
        shown = []
        for card in cards[:5]:
            launch_url = label = None
            for link in card.get("links") or []:
                if not isinstance(link, dict) or link.get("type") != "smart":
                    continue
                client = next(
                    (c for c in auth.clients.values() if c.launch_uri == link.get("url")), None
                )
                if client is None:
                    continue
                context = link.get("appContext")
                launch_id = auth.create_launch(
                    patient=patient_id,
                    encounter=encounter,
                    user=user,
                    client_id=client.client_id,
                    app_context=context if isinstance(context, str) else None,
                )
                launch_url = auth.launch_url(client.client_id, launch_id)
                label = str(link.get("label") or client.client_name)[:80]
                break
            source = card["source"] if isinstance(card.get("source"), dict) else {}
            shown.append(
                ShownCard(
                    summary=str(card.get("summary", ""))[:140],
                    indicator=str(card.get("indicator", "info")),
                    source=str(source.get("label", ""))[:80],
                    detail=str(card["detail"])[:1000] if card.get("detail") else None,
                    link_label=label,
                    launch_url=launch_url,
                )
            )
        return shown

    @bp.post("/session/user")
    def switch_user() -> Response:
        chosen = request.form.get("user", "")
        target = request.form.get("next", "/")
        # Only same-site paths: never redirect to a URL taken from the request.
        if not target.startswith("/") or target.startswith("//"):
            target = "/"
        response = make_response(redirect(target, 303))
        if chosen in dict(practitioners()):
            response.set_cookie(
                USER_COOKIE, chosen, httponly=True, samesite="Lax", path="/", max_age=30 * 24 * 3600
            )
        return response

    app.register_blueprint(bp)
