"""The sandbox's FHIR R4 REST endpoints under `/fhir`, behind SMART bearer tokens.

https://hl7.org/fhir/R4/http.html — JSON only (`application/fhir+json`), errors as
OperationOutcome, never a stack trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, request

from smartapp.sandbox import search
from smartapp.sandbox.fhir_service import (
    CREATABLE_TYPES,
    SUPPORTED_TYPES,
    UPDATABLE_TYPES,
    Access,
    FHIRError,
    FHIRService,
    operation_outcome,
)
from smartapp.sandbox.store import StoredResource

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir")


#: One encoder for every response (json.dumps with options builds a new one per call).
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


StoredText = Callable[[dict[str, Any]], str | None]


def encode_json(body: Any, stored_text: StoredText | None = None) -> str:
    """Compact JSON of a response. With `stored_text` (the store's), a stored resource in
    a Bundle's entries, at any depth of batch and search Bundles, is written as the text
    the store keeps of it rather than encoded again: a page of 200 Observations costs what
    copying it costs, as a real server's does, not the sandbox's Python."""
    if stored_text is None:
        return _dumps(body)
    out: list[str] = []
    _emit(body, out, stored_text)
    return "".join(out)


def _emit(value: Any, out: list[str], stored_text: StoredText) -> None:
    if type(value) is dict and "resourceType" in value:
        text = stored_text(value)
        if text is not None:
            out.append(text)
            return
        if value["resourceType"] == "Bundle" and type(value.get("entry")) is list:
            _emit_object(value, out, stored_text, nested="entry")
            return
    out.append(_dumps(value))


def _emit_object(
    value: dict[str, Any],
    out: list[str],
    stored_text: StoredText,
    *,
    nested: str,
) -> None:
    """`value` as JSON, in its own key order; its `nested` key (a Bundle's entries, an
    entry's resource) looked into, the rest encoded whole."""
    out.append("{")
    for i, (key, item) in enumerate(value.items()):
        out.append(f"{',' if i else ''}{_dumps(key)}:")
        if key != nested:
            out.append(_dumps(item))
        elif nested == "resource":
            _emit(item, out, stored_text)
        else:
            out.append("[")
            for j, entry in enumerate(item):
                if j:
                    out.append(",")
                if type(entry) is dict and "resource" in entry:
                    _emit_object(entry, out, stored_text, nested="resource")
                else:
                    out.append(_dumps(entry))
            out.append("]")
    out.append("}")


def fhir_response(
    body: Any,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    stored_text: StoredText | None = None,
) -> Response:
    response = Response(encode_json(body, stored_text), status=status, mimetype=FHIR_JSON)
    response.headers["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error_response(error: FHIRError) -> Response:
    return fhir_response(error.outcome(), error.status, error.headers)


def _resource_headers(item: StoredResource) -> dict[str, str]:
    modified = datetime.fromisoformat(item.last_updated.replace("Z", "+00:00"))
    return {
        "ETag": f'W/"{item.version}"',
        "Last-Modified": modified.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }


def capability_statement(
    *,
    fhir_base: str,
    authorize_url: str,
    token_url: str,
    published: str,
    declare_sort: bool = True,
    software: str = "smartapp sandbox EHR",
    publisher: str = "smartapp sandbox EHR (synthetic data, not for clinical use)",
) -> dict[str, Any]:
    resources = []
    for rtype in SUPPORTED_TYPES:
        interactions = [{"code": "read"}, {"code": "search-type"}]
        if rtype in CREATABLE_TYPES:
            interactions.append({"code": "create"})
        if rtype in UPDATABLE_TYPES:
            interactions.append({"code": "update"})
        entry: dict[str, Any] = {
            "type": rtype,
            "interaction": interactions,
            "versioning": "versioned",
            "readHistory": False,
            "updateCreate": rtype in UPDATABLE_TYPES,
            "conditionalCreate": rtype in CREATABLE_TYPES,
            "searchParam": [
                {"name": name, "type": param.kind}
                for name, param in search.params_for(rtype).items()
            ],
        }
        if declare_sort and rtype in search.SORT_DATE:
            # Declared so that clients may count on `_sort=date` / `-date` here.
            entry["searchParam"].append({"name": "_sort", "type": "string"})
        includes = [
            f"{rtype}:{name}"
            for name, p in search.params_for(rtype).items()
            if p.kind == "reference"
        ]
        if includes:
            entry["searchInclude"] = includes
        if rtype != "Provenance":
            entry["searchRevInclude"] = ["Provenance:target"]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "id": "sandbox-ehr",
        "status": "active",
        "date": published,
        "publisher": publisher,
        "kind": "instance",
        "software": {"name": software, "version": "1.0"},
        "implementation": {"description": "Embedded sandbox EHR for smartapp", "url": fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": True,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ],
                            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [
                                {"url": "authorize", "valueUri": authorize_url},
                                {"url": "token", "valueUri": token_url},
                            ],
                        }
                    ],
                },
                "resource": resources,
                "interaction": [{"code": "batch"}, {"code": "transaction"}],
            }
        ],
    }


def init_app(
    app: Flask,
    *,
    service: FHIRService,
    authenticate: Callable[[str | None], Access],
    capability: dict[str, Any],
) -> None:
    bp = Blueprint("fhir", __name__, url_prefix="/fhir")

    def access() -> Access:
        return authenticate(request.headers.get("Authorization"))

    def body_json() -> Any:
        mimetype = request.mimetype or ""
        if mimetype and mimetype not in _JSON_TYPES:
            raise FHIRError(
                415, "not-supported", "Send FHIR JSON (Content-Type: application/fhir+json)"
            )
        try:
            return json.loads(request.get_data(as_text=True) or "null")
        except ValueError as exc:
            raise FHIRError(400, "structure", "The request body is not valid JSON") from exc

    def strict() -> bool:
        return "handling=strict" in request.headers.get("Prefer", "")

    def written(outcome: Any) -> Response:
        item: StoredResource = outcome.stored
        headers = _resource_headers(item)
        headers["Location"] = service.full_url(item.resource_type, item.id) + (
            f"/_history/{item.version}"
        )
        prefer = request.headers.get("Prefer", "")
        if "return=minimal" in prefer:
            return Response("", status=outcome.status, headers=headers)
        if "return=OperationOutcome" in prefer:
            return fhir_response(
                operation_outcome(
                    "informational", f"{item.resource_type}/{item.id} saved", "information"
                ),
                outcome.status,
                headers,
            )
        return fhir_response(item.body, outcome.status, headers)

    @bp.get("/metadata")
    def metadata() -> Response:
        return fhir_response(capability)

    @bp.route("", methods=["POST"])
    @bp.route("/", methods=["POST"])
    def bundle() -> Response:
        who = access()
        result = service.process_bundle(who, body_json(), prefer=request.headers.get("Prefer", ""))
        return fhir_response(result, stored_text=service.store.stored_text)

    @bp.get("/<resource_type>")
    def search_type(resource_type: str) -> Response:
        who = access()
        params = list(request.args.items(multi=True))
        return fhir_response(
            service.search(who, resource_type, params, strict=strict()),
            stored_text=service.store.stored_text,
        )

    @bp.post("/<resource_type>/_search")
    def search_post(resource_type: str) -> Response:
        who = access()
        params = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
        return fhir_response(
            service.search(who, resource_type, params, strict=strict()),
            stored_text=service.store.stored_text,
        )

    @bp.post("/<resource_type>")
    def create(resource_type: str) -> Response:
        who = access()
        outcome = service.create(
            who, resource_type, body_json(), if_none_exist=request.headers.get("If-None-Exist")
        )
        return written(outcome)

    @bp.get("/<resource_type>/<resource_id>")
    def read(resource_type: str, resource_id: str) -> Response:
        who = access()
        item = service.read(who, resource_type, resource_id)
        if_none_match = request.headers.get("If-None-Match")
        headers = _resource_headers(item)
        if if_none_match and if_none_match.strip() == headers["ETag"]:
            return Response("", status=304, headers=headers)
        return fhir_response(item.body, 200, headers)

    @bp.put("/<resource_type>/<resource_id>")
    def update(resource_type: str, resource_id: str) -> Response:
        who = access()
        outcome = service.update(
            who, resource_type, resource_id, body_json(), if_match=request.headers.get("If-Match")
        )
        return written(outcome)

    @bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    def unsupported(rest: str) -> Response:
        raise FHIRError(
            405 if request.method in ("PATCH", "DELETE") else 404,
            "not-supported",
            f"{request.method} {rest[:80]} is not supported by this server",
        )

    @bp.errorhandler(FHIRError)
    def fhir_error(error: FHIRError) -> Response:
        return error_response(error)

    app.register_blueprint(bp)
