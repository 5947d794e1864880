"""The CDS Hooks endpoints: discovery, a service call, feedback (JSON in, JSON out).

https://cds-hooks.hl7.org/2.0/
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from smartapp import jsonsafe
from smartapp.cdshooks.discovery import discovery_document
from smartapp.cdshooks.service import CDSHooksService
from smartapp.cdshooks.trust import TrustRegistry
from smartapp.config import ConfigError, Settings
from smartapp.errors import AppError, BadRequest, error_body, http_status, public_message

bp = Blueprint("cdshooks", __name__)

EXTENSION = "smartapp.cdshooks"
#: FHIR nests deeply (contained resources, extensions) but not without end.
MAX_DEPTH = 64


def public_base(settings: Settings) -> str:
    """The app's external base URL: what the EHR calls, so what `aud` must name."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if settings.sandbox_mode:
        return request.url_root.rstrip("/")
    raise ConfigError("SMARTAPP_PUBLIC_URL is not set: the service URL cannot be built")


def launch_url(settings: Settings) -> str:
    """The app's launch URL (launch.json's `launch_uri`, resolved): the card's smart link."""
    target = settings.manifest.launch_uri
    if "://" in target:
        return target
    return public_base(settings) + "/" + target.lstrip("/")


def _parts() -> tuple[Settings, TrustRegistry, CDSHooksService]:
    found: tuple[Settings, TrustRegistry, CDSHooksService] = current_app.extensions[EXTENSION]
    return found


def _body(settings: Settings) -> dict[str, Any]:
    # Prefetch is chart data: as large as a FHIR answer may be, and no larger.
    limit = settings.fhir_max_response_mb * 1024 * 1024
    request.max_content_length = limit
    if request.mimetype != "application/json":
        raise BadRequest("Send the hook request as application/json.")
    try:
        body = jsonsafe.loads(request.get_data(cache=False), max_depth=MAX_DEPTH)
    except jsonsafe.UnsafeJSON as exc:
        raise BadRequest(f"The request is not usable JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("The request must be a JSON object.")
    return body


@bp.get("/cds-services")
def discovery() -> Response:
    return jsonify(discovery_document())


@bp.post("/cds-services/<service_id>")
def call(service_id: str) -> Response:
    settings, trust, service = _parts()
    service.service(service_id)  # an unknown id answers 404 before any check of the caller
    base = public_base(settings)
    caller = trust.verify(
        request.headers.get("Authorization"), audience=f"{base}/cds-services/{service_id}"
    )
    body = _body(settings)
    return jsonify(service.call(service_id, body, caller=caller, launch_url=launch_url(settings)))


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> Response:
    settings, trust, service = _parts()
    service.service(service_id)
    base = public_base(settings)
    url = f"{base}/cds-services/{service_id}"
    authorization = request.headers.get("Authorization")
    try:
        caller = trust.verify(authorization, audience=f"{url}/feedback")
    except AppError as exc:
        # Some EHRs name the service itself as the audience of its feedback calls.
        if "(aud)" not in exc.message:
            raise
        caller = trust.verify(authorization, audience=url)
    return jsonify(service.feedback(service_id, _body(settings), caller=caller))


@bp.errorhandler(AppError)
def app_error(exc: AppError) -> tuple[Response, int]:
    return jsonify(error_body(exc.code, public_message(exc))), http_status(exc)


@bp.errorhandler(413)
def too_large(_exc: Exception) -> tuple[Response, int]:
    return (
        jsonify(
            error_body("body_too_large", "The hook request is larger than a FHIR answer may be.")
        ),
        413,
    )
