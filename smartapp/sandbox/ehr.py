"""The embedded sandbox EHR as one Flask app: SMART auth server, FHIR API, EHR screens.

https://hl7.org/fhir/smart-app-launch/ — everything a SMART app meets in a real EHR, on
loopback, with synthetic patients persisted in `data_dir`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, render_template, request
from werkzeug.exceptions import HTTPException

from smartapp.sandbox import bulk as bulk_module
from smartapp.sandbox import controls as controls_module
from smartapp.sandbox import fhir_api, pages
from smartapp.sandbox.auth import ClientRegistration, SandboxAuth, load_signing_key
from smartapp.sandbox.cds_client import SandboxCDSClient, load_cds_key
from smartapp.sandbox.fhir_service import FHIRError, FHIRService
from smartapp.sandbox.imitations import imitation
from smartapp.sandbox.pages import human_name, latest_encounter_id, practitioner_name
from smartapp.sandbox.population import (
    BENCH_PATIENT_ID,
    CLINICIANS,
    DEFAULT_SEED,
    generate_population,
    practitioner_resource,
)
from smartapp.sandbox.store import Store

log = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class SandboxEHR:
    """Handles to the running sandbox, in `app.extensions["smartapp.sandbox"]`."""

    store: Store
    service: FHIRService
    auth: SandboxAuth
    controls: controls_module.Controls
    ehr_base_url: str
    fhir_base: str
    default_client_id: str
    #: The CDS Hooks client, when the sandbox calls the app's hooks.
    cds: SandboxCDSClient | None = None


def load_population(store: Store, service: FHIRService, *, count: int, seed: int) -> None:
    """Create the synthetic patients on first start; later starts reuse what is stored."""
    if store.get_meta("population") is not None:
        return
    bundles = generate_population(count=count, seed=seed)
    with store.transaction():
        # Every EHR user exists even when the population is too small to need them all.
        for clinician in CLINICIANS:
            store.put(practitioner_resource(clinician), patient=None)
        for bundle in bundles:
            for entry in bundle["entry"]:
                resource = entry["resource"]
                if store.exists(resource["resourceType"], resource["id"]):
                    continue  # shared Practitioners and Medications appear in many charts
                store.put(resource, patient=service.patient_of(resource))
        store.set_meta("population", json.dumps({"count": count, "seed": seed}))
    log.info("sandbox EHR: created %d synthetic patients", count)


def load_documentation_history(store: Store, service: FHIRService, *, seed: int) -> None:
    """Twelve weeks of visits and notes for the baseline demo (`smartapp.sandbox.history`)."""
    from smartapp.sandbox.history import documentation_history

    if store.get_meta("documentation_history") is not None:
        return
    patients = [p.id for p in store.list("Patient") if p.id != BENCH_PATIENT_ID]
    resources = documentation_history(patients, seed=seed)
    with store.transaction():
        for resource in resources:
            store.put(resource, patient=service.patient_of(resource))
        store.set_meta("documentation_history", json.dumps({"seed": seed}))
    log.info("sandbox EHR: created %d history resources", len(resources))


def create_ehr_app(
    *,
    data_dir: Path,
    ehr_base_url: str,
    app_base_url: str,
    manifest: Mapping[str, Any],
    latency_ms: int = 0,
    population_size: int = 24,
    access_token_lifetime: int = 3600,
    extra_clients: Sequence[Mapping[str, Any]] = (),
    seed: int = DEFAULT_SEED,
    rewrite_urn_uuids: bool = False,
    imitate: str = "generic",
    cds_services_url: str | None = None,
    documentation_history: bool = False,
) -> Flask:
    """The sandbox EHR at `ehr_base_url`; its FHIR base (the SMART `iss`) is `…/fhir`.

    `manifest` is the app's launch.json: its client is registered with URIs resolved
    against `app_base_url`. `rewrite_urn_uuids` makes transactions replace urn:uuid
    fullUrls everywhere, identifiers included, as some servers do. `extra_clients`
    (same shape, plus `client_secret` or `jwks`) registers more, e.g. a confidential
    client for tests. `imitate` makes it behave like one EHR family's server
    (`smartapp.sandbox.imitations`). `cds_services_url` (the app's `/cds-services`):
    opening a chart calls its `patient-view` hook and shows the card.
    `documentation_history` adds twelve weeks of visits and notes by every clinician
    (the baseline demo, `smartapp.sandbox.history`).
    """
    behaviour = imitation(imitate)
    rewrite_urn_uuids = rewrite_urn_uuids or behaviour.rewrite_urn_uuids
    if behaviour.access_token_lifetime is not None:
        access_token_lifetime = behaviour.access_token_lifetime
    if population_size < 1:
        raise ValueError("population_size must be at least 1")
    if access_token_lifetime < 1:
        raise ValueError("access_token_lifetime must be at least one second")
    ehr_base_url = ehr_base_url.rstrip("/")
    fhir_base = f"{ehr_base_url}/fhir"
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)

    store = Store(data_dir / "sandbox-ehr.sqlite3")
    service = FHIRService(
        store,
        base_url=fhir_base,
        rewrite_urn_uuids=rewrite_urn_uuids,
        honour_sort=behaviour.sort,
        observation_needs_category=behaviour.observation_needs_category,
    )
    load_population(store, service, count=population_size, seed=seed)
    if documentation_history:
        load_documentation_history(store, service, seed=seed)

    registrations = [ClientRegistration.from_manifest(manifest, app_base_url)]
    registrations += [
        ClientRegistration.from_manifest(extra, app_base_url) for extra in extra_clients
    ]
    default_client_id = registrations[0].client_id

    def practitioners() -> list[tuple[str, str]]:
        staff = {c.id for c in CLINICIANS}
        items = store.list("Practitioner")
        # The EHR's own staff first, in their fixed order; then anyone loaded later.
        items.sort(
            key=lambda i: (
                i.id not in staff,
                [c.id for c in CLINICIANS].index(i.id) if i.id in staff else 0,
            )
        )
        return [(item.id, practitioner_name(item.body) or item.id) for item in items]

    def patients() -> list[tuple[str, str]]:
        return [(item.id, human_name(item.body) or item.id) for item in store.list("Patient")]

    def latest_encounter(patient_id: str) -> str | None:
        return latest_encounter_id(store, patient_id)

    auth = SandboxAuth(
        store=store,
        ehr_base_url=ehr_base_url,
        fhir_base=fhir_base,
        clients=registrations,
        signing_key=load_signing_key(data_dir / "sandbox-ehr-signing-key.json"),
        access_token_lifetime=access_token_lifetime,
        practitioners=practitioners,
        patients=patients,
        latest_encounter=latest_encounter,
        rotate_refresh_tokens=behaviour.rotate_refresh_tokens,
        scope_version=behaviour.scope_version,
        list_pkce_methods=behaviour.list_pkce_methods,
    )
    controls = controls_module.Controls(latency_ms)

    app = Flask(
        "smartapp.sandbox",
        root_path=str(_PACKAGE_DIR),
        template_folder="templates",
        static_folder="static",
        static_url_path="/static",
    )
    app.config.update(MAX_CONTENT_LENGTH=10 * 1024 * 1024)

    # Order matters: the controls' before_request (latency, faults, counters) runs first.
    controls_module.init_app(
        app,
        controls=controls,
        store=store,
        service=service,
        auth=auth,
        default_client_id=default_client_id,
        patient_ids=lambda: [pid for pid, _ in patients()],
        practitioner_ids=lambda: [pid for pid, _ in practitioners()],
        latest_encounter=latest_encounter,
    )
    auth.init_app(app)
    # Before the FHIR API: its `/<type>/<id>` rules would otherwise take `$export-status/…`.
    bulk_module.init_app(
        app,
        bulk_module.BulkExports(store=store, fhir_base=fhir_base, authenticate=auth.access_for),
    )
    published = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    fhir_api.init_app(
        app,
        service=service,
        authenticate=auth.access_for,
        capability=fhir_api.capability_statement(
            fhir_base=fhir_base,
            authorize_url=auth.authorization_endpoint,
            token_url=auth.token_endpoint,
            published=published,
            declare_sort=behaviour.sort,
            software=behaviour.software,
            publisher=behaviour.publisher,
        ),
    )
    cds = None
    if cds_services_url:
        cds = SandboxCDSClient(
            services_url=cds_services_url,
            issuer=ehr_base_url,
            fhir_base=fhir_base,
            service=service,
            key=load_cds_key(data_dir / "sandbox-ehr-cds-key.json"),
        )
        # The CDS service checks the EHR's request JWTs against this (CDS Hooks 2.0).
        app.add_url_rule("/cds/jwks.json", "cds_jwks", lambda: cds.jwks() if cds else {})
    pages.init_app(
        app,
        store=store,
        auth=auth,
        default_client_id=default_client_id,
        practitioners=practitioners,
        cds=cds,
    )
    _init_errors(app)

    app.extensions["smartapp.sandbox"] = SandboxEHR(
        store=store,
        service=service,
        auth=auth,
        controls=controls,
        ehr_base_url=ehr_base_url,
        fhir_base=fhir_base,
        default_client_id=default_client_id,
        cds=cds,
    )
    return app


def _init_errors(app: Flask) -> None:
    def shaped(status: int, code: str, message: str) -> Response:
        path = request.path
        if path.startswith("/fhir"):
            return fhir_api.error_response(FHIRError(status, code, message))
        if path.startswith("/_sandbox") or path.startswith("/auth/token"):
            return Response(
                json.dumps({"error": message}), status=status, mimetype="application/json"
            )
        body = render_template("sandbox/error.html", title=f"{status}", message=message)
        return Response(body, status=status, mimetype="text/html")

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = {404: "not-found", 405: "not-supported", 413: "too-costly"}.get(status, "processing")
        return shaped(status, code, error.description or error.name)

    @app.errorhandler(FHIRError)
    def fhir_error(error: FHIRError) -> Response:
        return fhir_api.error_response(error)

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        # Logged with its traceback for the developer; the client gets no internals.
        log.exception("sandbox EHR: unexpected error on %s %s", request.method, request.path)
        return shaped(500, "exception", "The sandbox EHR hit an unexpected error")
