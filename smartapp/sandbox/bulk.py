"""The sandbox's FHIR Bulk Data `$export`: kick-off, status, NDJSON files, delete.

https://hl7.org/fhir/uv/bulkdata/export.html — system (`/fhir/$export`), all-patients
(`/fhir/Patient/$export`) and Group level (`/fhir/Group/<id>/$export`, 404: the sandbox
has no Groups); `_type` and `_since` (on lastUpdated). A job's files are written at
kick-off, in memory; the status answers 202 with `Retry-After` for the first
`polls_before_ready` polls, as a real server still busy would, then the manifest. Files
need a token of the client that asked (`requiresAccessToken: true`). Only tokens with
`system/` or `user/` read access to every type asked may export.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Flask, Response, request

from smartapp.sandbox.fhir_api import error_response
from smartapp.sandbox.fhir_service import SUPPORTED_TYPES, Access, FHIRError
from smartapp.sandbox.store import Store, now_instant

#: Resources per NDJSON file: several files per type show the client handles a list.
LINES_PER_FILE = 500
RETRY_AFTER_SECONDS = 2
#: Jobs kept at once; the oldest goes first.
MAX_JOBS = 20


@dataclass
class ExportJob:
    client_id: str | None
    request_url: str
    transaction_time: str
    files: dict[str, tuple[str, bytes]]  # name -> (type, NDJSON)
    polls_left: int
    lock: threading.Lock = field(default_factory=threading.Lock)


class BulkExports:
    def __init__(
        self,
        *,
        store: Store,
        fhir_base: str,
        authenticate: Callable[[str | None], Access],
        polls_before_ready: int = 1,
    ) -> None:
        self.store = store
        self.fhir_base = fhir_base
        self.authenticate = authenticate
        self.polls_before_ready = polls_before_ready
        self._jobs: dict[str, ExportJob] = {}
        self._lock = threading.Lock()

    # -- kick-off -------------------------------------------------------------------------
    def kick_off(self, *, patient_level: bool) -> Response:
        access = self.authenticate(request.headers.get("Authorization"))
        if "respond-async" not in request.headers.get("Prefer", ""):
            raise FHIRError(400, "invalid", "Bulk export needs 'Prefer: respond-async'")
        accept = request.headers.get("Accept", "application/fhir+json")
        if accept not in ("application/fhir+json", "*/*"):
            raise FHIRError(400, "invalid", "Bulk export answers 'Accept: application/fhir+json'")
        types = [t for t in (request.args.get("_type") or "").split(",") if t] or list(
            SUPPORTED_TYPES
        )
        unknown = [t for t in types if t not in SUPPORTED_TYPES]
        if unknown:
            raise FHIRError(400, "not-supported", f"_type: unsupported type {unknown[0][:40]}")
        for rtype in types:
            permission = access.permission(rtype, "r")
            if not permission.allowed or permission.compartment:
                raise FHIRError(
                    403, "forbidden", f"The token may not export {rtype} (system/ scope needed)"
                )
        since = request.args.get("_since")
        if since is not None and len(since) < 10:
            raise FHIRError(400, "invalid", "_since must be a FHIR instant")
        files: dict[str, tuple[str, bytes]] = {}
        for rtype in types:
            lines = [
                json.dumps(item.body, separators=(",", ":"), ensure_ascii=False)
                for item in self.store.list(rtype)
                if (since is None or item.last_updated >= _instant(since))
                and (not patient_level or item.patient is not None)
            ]
            for number, start in enumerate(range(0, len(lines), LINES_PER_FILE), start=1):
                chunk = lines[start : start + LINES_PER_FILE]
                files[f"{rtype}-{number}.ndjson"] = (rtype, ("\n".join(chunk) + "\n").encode())
        job_id = secrets.token_urlsafe(12)
        with self._lock:
            while len(self._jobs) >= MAX_JOBS:
                self._jobs.pop(next(iter(self._jobs)))
            self._jobs[job_id] = ExportJob(
                client_id=access.client_id,
                request_url=request.url,
                transaction_time=now_instant(),
                files=files,
                polls_left=self.polls_before_ready,
            )
        response = Response("", status=202)
        response.headers["Content-Location"] = f"{self.fhir_base}/$export-status/{job_id}"
        return response

    # -- status, files, delete ------------------------------------------------------------
    def status(self, job_id: str) -> Response:
        job = self._job(job_id)
        with job.lock:
            if job.polls_left > 0:
                job.polls_left -= 1
                response = Response("", status=202)
                response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
                response.headers["X-Progress"] = "writing files"
                return response
        manifest = {
            "transactionTime": job.transaction_time,
            "request": job.request_url,
            "requiresAccessToken": True,
            "output": [
                {
                    "type": rtype,
                    "url": f"{self.fhir_base}/$export-file/{job_id}/{name}",
                    "count": body.count(b"\n"),
                }
                for name, (rtype, body) in job.files.items()
            ],
            "error": [],
        }
        response = Response(json.dumps(manifest), status=200, mimetype="application/json")
        response.headers["Expires"] = "0"
        return response

    def file(self, job_id: str, name: str) -> Response:
        job = self._job(job_id)
        entry = job.files.get(name)
        if entry is None:
            raise FHIRError(404, "not-found", "No such export file")
        return Response(entry[1], status=200, mimetype="application/fhir+ndjson")

    def delete(self, job_id: str) -> Response:
        self._job(job_id)
        with self._lock:
            self._jobs.pop(job_id, None)
        return Response("", status=202)

    def _job(self, job_id: str) -> ExportJob:
        access = self.authenticate(request.headers.get("Authorization"))
        with self._lock:
            job = self._jobs.get(job_id)
        # Another client's job is as good as absent.
        if job is None or job.client_id != access.client_id:
            raise FHIRError(404, "not-found", "No such export job (finished, deleted or unknown)")
        return job


def _instant(value: str) -> str:
    # Stored lastUpdated values are UTC "…Z" instants: compare like with like.
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError as exc:
        raise FHIRError(400, "invalid", "_since must be a FHIR instant") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def init_app(app: Flask, exports: BulkExports) -> None:
    def guarded(view: Callable[[], Response]) -> Response:
        try:
            return view()
        except FHIRError as error:
            return error_response(error)

    app.add_url_rule(
        "/fhir/$export",
        "bulk_export_system",
        lambda: guarded(lambda: exports.kick_off(patient_level=False)),
    )
    app.add_url_rule(
        "/fhir/Patient/$export",
        "bulk_export_patients",
        lambda: guarded(lambda: exports.kick_off(patient_level=True)),
    )

    def group_export(group_id: str) -> Response:
        def refuse() -> Response:
            exports.authenticate(request.headers.get("Authorization"))
            raise FHIRError(404, "not-found", "The sandbox has no Groups")

        return guarded(refuse)

    app.add_url_rule("/fhir/Group/<group_id>/$export", "bulk_export_group", group_export)
    app.add_url_rule(
        "/fhir/$export-status/<job_id>",
        "bulk_export_status",
        lambda job_id: guarded(lambda: exports.status(job_id)),
    )
    app.add_url_rule(
        "/fhir/$export-status/<job_id>",
        "bulk_export_delete",
        lambda job_id: guarded(lambda: exports.delete(job_id)),
        methods=["DELETE"],
    )
    app.add_url_rule(
        "/fhir/$export-file/<job_id>/<name>",
        "bulk_export_file",
        lambda job_id, name: guarded(lambda: exports.file(job_id, name)),
    )
