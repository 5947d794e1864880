"""SANDBOX-ONLY test and benchmark controls under `/_sandbox/` (loopback callers only).

Fault injection, a latency knob that simulates a WAN round trip, request counters, test
data loading, a store inspector and programmatic EHR launches. A real EHR has none of
this; nothing here needs a token, so it refuses callers that are not on loopback.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, request

from smartapp.sandbox import search
from smartapp.sandbox.auth import SandboxAuth
from smartapp.sandbox.fhir_service import (
    SUPPORTED_TYPES,
    Access,
    FHIRError,
    FHIRService,
    operation_outcome,
)
from smartapp.sandbox.store import Store


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(data, ensure_ascii=False), status=status, mimetype="application/json"
    )


@dataclass
class FaultPlan:
    remaining: int = 0
    status: int = 503
    retry_after: int | None = None


class Controls:
    """Latency, faults and counters, applied to every request before its view runs."""

    def __init__(self, latency_ms: int) -> None:
        self._lock = threading.Lock()
        self.latency_ms = max(0, int(latency_ms))
        self.faults = FaultPlan()
        self.kinds: Counter[str] = Counter()
        self.faulted = 0
        #: Set: FHIR requests go through. Cleared (`POST /_sandbox/hang`): each waits
        #: until it is set again, as a hung server holds its callers.
        self.released = threading.Event()
        self.released.set()
        #: FHIR requests waiting on the hang now.
        self.hanging = 0

    # -- classification -----------------------------------------------------------------
    @staticmethod
    def kind_of(method: str, path: str, body: bytes | None) -> str | None:
        """What sort of request this is, for the counters; None for pages and controls."""
        if path == "/auth/token":
            return "token"
        if path == "/auth/authorize":
            return "authorize"
        if path.startswith("/fhir/.well-known/"):
            return "discovery"
        if path == "/fhir/metadata":
            return "metadata"
        if path in ("/fhir", "/fhir/"):
            if method != "POST":
                return "other"
            try:
                kind = json.loads(body or b"null").get("type")
            except (ValueError, AttributeError):
                return "bundle"
            return kind if kind in ("batch", "transaction") else "bundle"
        if not path.startswith("/fhir/"):
            return None
        parts = [p for p in path[len("/fhir/") :].split("/") if p]
        if method == "GET" and len(parts) == 1:
            return "search"
        if method == "POST" and len(parts) == 2 and parts[1] == "_search":
            return "search"
        if method == "GET" and len(parts) == 2:
            return "read"
        if method == "POST" and len(parts) == 1:
            return "create"
        if method == "PUT" and len(parts) == 2:
            return "update"
        return "other"

    def before_request(self) -> Response | None:
        path = request.path
        body = request.get_data(cache=True) if path in ("/fhir", "/fhir/") else None
        kind = self.kind_of(request.method, path, body)
        if kind is None:
            return None
        with self._lock:
            self.kinds[kind] += 1
            latency = self.latency_ms
            fault: FaultPlan | None = None
            is_api = path.startswith("/fhir") and kind != "discovery"
            if is_api and self.faults.remaining > 0:
                self.faults.remaining -= 1
                self.faulted += 1
                fault = FaultPlan(1, self.faults.status, self.faults.retry_after)
        if latency and (path.startswith("/fhir") or kind == "token"):
            # A WAN round trip: the sleep blocks this worker thread, as a slow network does.
            time.sleep(latency / 1000)
        if path.startswith("/fhir") and kind != "discovery" and not self.released.is_set():
            with self._lock:
                self.hanging += 1
            try:
                # Held until released (then answered as usual, whether or not the caller
                # still waits: a write it gave up on is made anyway, as a real server's is).
                self.released.wait()
            finally:
                with self._lock:
                    self.hanging -= 1
        if fault is not None:
            outcome = operation_outcome(
                "transient" if fault.status >= 500 or fault.status == 429 else "processing",
                f"Injected fault (sandbox control): HTTP {fault.status}",
            )
            response = Response(
                json.dumps(outcome), status=fault.status, mimetype="application/fhir+json"
            )
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(fault.retry_after)
            return response
        return None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            kinds = dict(sorted(self.kinds.items()))
            api = sum(n for k, n in kinds.items() if k not in ("token", "authorize", "discovery"))
            return {
                "total": sum(kinds.values()),
                "fhir": api,
                "kinds": kinds,
                "faulted": self.faulted,
                "hanging": self.hanging,
                "latency_ms": self.latency_ms,
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.kinds.clear()
            self.faulted = 0


def _is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def _int_field(
    data: dict[str, Any], name: str, default: int | None, low: int, high: int
) -> int | None:
    value = data.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ControlError(400, f"{name} must be a whole number from {low} to {high}")
    return value


def init_app(
    app: Flask,
    *,
    controls: Controls,
    store: Store,
    service: FHIRService,
    auth: SandboxAuth,
    default_client_id: str,
    patient_ids: Callable[[], list[str]],
    practitioner_ids: Callable[[], list[str]],
    latest_encounter: Callable[[str], str | None],
) -> None:
    app.before_request(controls.before_request)
    bp = Blueprint("sandbox_controls", __name__, url_prefix="/_sandbox")

    @bp.before_request
    def loopback_only() -> Response | None:
        if not _is_loopback(request.remote_addr):
            return _json({"error": "sandbox controls answer loopback callers only"}, 403)
        return None

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if data is None and request.get_data():
            raise ControlError(400, "send a JSON object")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ControlError(400, "send a JSON object")
        return data

    @bp.get("/")
    def index() -> Response:
        return _json(
            {
                "sandbox": "smartapp embedded EHR — test controls, not part of any real EHR",
                "fhir_base": service.base_url,
                "patients": patient_ids(),
                "practitioners": practitioner_ids(),
                "controls": {
                    "POST /_sandbox/faults": {
                        "fail_next": "N",
                        "status": 503,
                        "retry_after": "seconds, optional",
                    },
                    "DELETE /_sandbox/faults": "clear injected faults",
                    "POST /_sandbox/hang": "hold every FHIR request until DELETE",
                    "DELETE /_sandbox/hang": "let the held requests go on",
                    "POST /_sandbox/latency": {"ms": "N"},
                    "GET /_sandbox/stats": "request counts by kind",
                    "POST /_sandbox/stats/reset": "zero the counters",
                    "POST /_sandbox/patients": "a transaction (or collection) Bundle to load",
                    "GET /_sandbox/resources/{type}?patient={id}": "what the store holds",
                    "POST /_sandbox/launch": {
                        "patient": "id",
                        "encounter": "id | null, optional",
                        "user": "Practitioner id, optional",
                    },
                },
            }
        )

    @bp.get("/faults")
    def get_faults() -> Response:
        plan = controls.faults
        return _json(
            {"fail_next": plan.remaining, "status": plan.status, "retry_after": plan.retry_after}
        )

    @bp.post("/faults")
    def set_faults() -> Response:
        data = body()
        remaining = _int_field(data, "fail_next", None, 0, 10_000)
        if remaining is None:
            raise ControlError(400, "fail_next is required")
        status = _int_field(data, "status", 503, 400, 599)
        retry_after = _int_field(data, "retry_after", None, 0, 3600)
        with controls._lock:
            controls.faults = FaultPlan(remaining, status or 503, retry_after)
        return get_faults()

    @bp.delete("/faults")
    def clear_faults() -> Response:
        with controls._lock:
            controls.faults = FaultPlan()
        return get_faults()

    @bp.post("/hang")
    def hang() -> Response:
        controls.released.clear()
        return _json({"hanging": controls.hanging, "held": True})

    @bp.delete("/hang")
    def release() -> Response:
        controls.released.set()
        return _json({"hanging": controls.hanging, "held": False})

    @bp.get("/latency")
    def get_latency() -> Response:
        return _json({"ms": controls.latency_ms})

    @bp.post("/latency")
    def set_latency() -> Response:
        ms = _int_field(body(), "ms", None, 0, 60_000)
        if ms is None:
            raise ControlError(400, "ms is required")
        with controls._lock:
            controls.latency_ms = ms
        return get_latency()

    @bp.get("/stats")
    def stats() -> Response:
        return _json(controls.stats())

    @bp.post("/stats/reset")
    def reset_stats() -> Response:
        controls.reset_stats()
        return _json(controls.stats())

    @bp.post("/patients")
    def load_patient() -> Response:
        bundle = body()
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") not in (
            "transaction",
            "collection",
        ):
            raise ControlError(400, "send a transaction or collection Bundle")
        system = Access.system()
        if bundle["type"] == "transaction":
            result = service.process_bundle(system, bundle)
            refs = [
                e["response"]["location"].split("/_history")[0]
                for e in result.get("entry", [])
                if "location" in e.get("response", {})
            ]
        else:
            refs = []
            pending: dict[str, str | None] = {
                f"{e['resource'].get('resourceType')}/{e['resource'].get('id')}": None
                for e in bundle.get("entry") or []
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)
            }
            with store.transaction():
                ordered = sorted(
                    (e.get("resource") for e in bundle.get("entry") or []),
                    key=lambda r: (
                        0 if isinstance(r, dict) and r.get("resourceType") == "Patient" else 1
                    ),
                )
                for resource in ordered:
                    if not isinstance(resource, dict) or not resource.get("id"):
                        raise ControlError(
                            400, "every collection entry needs a resource with an id"
                        )
                    outcome = service.update(
                        system,
                        str(resource.get("resourceType")),
                        str(resource["id"]),
                        resource,
                        pending=pending,
                    )
                    assert outcome.stored is not None
                    refs.append(f"{outcome.stored.resource_type}/{outcome.stored.id}")
        patients = [r.split("/", 1)[1] for r in refs if r.startswith("Patient/")]
        return _json(
            {"patient": patients[0] if patients else None, "patients": patients, "created": refs},
            201,
        )

    @bp.get("/resources/<resource_type>")
    def list_resources(resource_type: str) -> Response:
        if resource_type not in SUPPORTED_TYPES:
            raise ControlError(404, f"unknown resource type {resource_type[:64]!r}")
        patient = request.args.get("patient")
        if patient:
            patient = search.normalize_reference(patient, service.base_url).split("/")[-1]
        if patient and resource_type == "Patient":
            found = store.get("Patient", patient)
            items = [found] if found else []
        elif patient:
            items = store.list(resource_type, patient=patient)
        else:
            items = store.list(resource_type)
        return _json([item.body for item in items])

    @bp.get("/resources/<resource_type>/<resource_id>")
    def get_resource(resource_type: str, resource_id: str) -> Response:
        found = store.get(resource_type, resource_id)
        if found is None:
            raise ControlError(404, f"{resource_type[:64]}/{resource_id[:64]} is not in the store")
        return _json(found.body)

    @bp.post("/launch")
    def launch() -> Response:
        data = body()
        patient = data.get("patient")
        if not isinstance(patient, str) or not store.exists("Patient", patient):
            raise ControlError(400, "patient must be the id of a Patient in the sandbox")
        user = data.get("user") or practitioner_ids()[0]
        if not isinstance(user, str) or not store.exists("Practitioner", user):
            raise ControlError(400, "user must be the id of a Practitioner in the sandbox")
        if "encounter" in data:
            encounter = data["encounter"]
            if encounter is not None and (
                not isinstance(encounter, str)
                or store.patient_of("Encounter", encounter) != patient
            ):
                raise ControlError(400, "encounter must be one of this patient's Encounters")
        else:
            encounter = latest_encounter(patient)
        client_id = data.get("client_id") or default_client_id
        if not isinstance(client_id, str) or client_id not in auth.clients:
            raise ControlError(400, "client_id is not a registered client")
        launch_id = auth.create_launch(
            patient=patient, encounter=encounter, user=user, client_id=client_id
        )
        return _json(
            {
                "launch": launch_id,
                "launch_url": auth.launch_url(client_id, launch_id),
                "iss": auth.fhir_base,
                "patient": patient,
                "encounter": encounter,
                "user": user,
            },
            201,
        )

    @bp.errorhandler(ControlError)
    def control_error(error: ControlError) -> Response:
        return _json({"error": error.message}, error.status)

    @bp.errorhandler(FHIRError)
    def fhir_error(error: FHIRError) -> Response:
        return _json({"error": error.diagnostics, "outcome": error.outcome()}, error.status)

    app.register_blueprint(bp)
