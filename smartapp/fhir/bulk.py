"""The FHIR Bulk Data `$export` client: kick-off, status polling, NDJSON download.

https://hl7.org/fhir/uv/bulkdata/export.html — the asynchronous request pattern
(`Prefer: respond-async`, 202 + `Content-Location`, poll honouring `Retry-After`, a JSON
manifest listing NDJSON files), at system, Patient or Group level.

Limits, as everywhere the app talks to an EHR: each request has connect and read
timeouts; kick-off, polls and the manifest are read whole under a deadline and a size cap
(`smartapp.httplimits`); files are streamed line by line, with a cap on each file's bytes
and on one line, and a deadline per file checked between chunks. Polling stops at
`max_wait_seconds`. The bearer token goes only to the FHIR base's origin, and no request
carrying it follows a redirect (`smartapp.redirects`); a file outside that origin is read
only when the manifest says it needs no token.

Errors (from `smartapp.errors`):

    TemporaryUpstreamError   no answer, 5xx at kick-off, the wait or a deadline ran out
    FatalUpstreamError
    └── BulkExportFailed     the server refused or failed the export (its OperationOutcome's
                             issue codes, never its diagnostics: servers echo data there)

Clock and sleeper are injected so tests poll without waiting.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from smartapp import httplimits
from smartapp.errors import FatalUpstreamError, TemporaryUpstreamError
from smartapp.fhir.auth import TokenProvider
from smartapp.fhir.client import parse_retry_after
from smartapp.redirects import REDIRECT_STATUSES, origin_text, same_origin

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"

#: A poll without Retry-After waits this long; a Retry-After is held to [1, max].
DEFAULT_POLL_SECONDS = 5.0
MAX_POLL_SECONDS = 300.0
#: The manifest and an OperationOutcome are small; a kick-off answer has no body to speak of.
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
#: One NDJSON line is one resource: a DocumentReference with its note inline is the largest.
MAX_LINE_BYTES = 16 * 1024 * 1024


class BulkExportFailed(FatalUpstreamError):
    """The server refused the export, or reported it failed."""

    code = "bulk_export_failed"

    def __init__(self, message: str, *, status: int, issues: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.issues = tuple(issues)


@dataclass(frozen=True, kw_only=True)
class ExportFile:
    type: str
    url: str
    count: int | None = None


@dataclass(frozen=True, kw_only=True)
class ExportManifest:
    transaction_time: str
    request: str
    requires_access_token: bool
    output: tuple[ExportFile, ...]
    error: tuple[ExportFile, ...]

    @classmethod
    def parse(cls, data: Any) -> ExportManifest:
        if not isinstance(data, dict):
            raise BulkExportFailed("The export's manifest is not a JSON object.", status=200)
        return cls(
            transaction_time=str(data.get("transactionTime") or ""),
            request=str(data.get("request") or ""),
            # Absent means "false" in the spec, but a server that forgets it still wants a
            # token more often than not; sending it is safe because it stays on the origin.
            requires_access_token=data.get("requiresAccessToken") is not False,
            output=_files(data.get("output")),
            error=_files(data.get("error")),
        )


def _files(value: Any) -> tuple[ExportFile, ...]:
    files = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            count = item.get("count")
            files.append(
                ExportFile(
                    type=str(item.get("type") or ""),
                    url=item["url"],
                    count=count if isinstance(count, int) and not isinstance(count, bool) else None,
                )
            )
    return tuple(files)


@dataclass(frozen=True)
class ExportLevel:
    """Where the export starts: the whole system, all Patients, or one Group."""

    kind: str  # "system" | "patient" | "group"
    group_id: str | None = None

    @classmethod
    def parse(cls, text: str) -> ExportLevel:
        """ "system", "patient" or "group:ID"."""
        if text in ("system", "patient"):
            return cls(text)
        if text.startswith("group:") and len(text) > len("group:"):
            return cls("group", text.split(":", 1)[1])
        raise ValueError(f"export level {text!r}: use system, patient or group:ID")

    def path(self) -> str:
        if self.kind == "patient":
            return "Patient/$export"
        if self.kind == "group":
            return f"Group/{self.group_id}/$export"
        return "$export"


class BulkDataClient:
    """One FHIR server's `$export`, with the app's token from `tokens`."""

    def __init__(
        self,
        *,
        base_url: str,
        tokens: TokenProvider,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        request_deadline: float = 60.0,
        max_wait_seconds: float = 6 * 3600.0,
        file_deadline_seconds: float = 1800.0,
        max_file_bytes: int = 1024 * 1024 * 1024,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._tokens = tokens
        self._session = session or httplimits.limited_session()
        self._clock = clock
        self._sleep = sleep
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.request_deadline = request_deadline
        self.max_wait_seconds = max_wait_seconds
        self.file_deadline_seconds = file_deadline_seconds
        self.max_file_bytes = max_file_bytes

    # -- the three steps ------------------------------------------------------------------
    def kick_off(
        self,
        *,
        types: Sequence[str],
        since: datetime | None = None,
        level: ExportLevel | None = None,
    ) -> str:
        """Start an export; the status URL (`Content-Location`) to poll."""
        params: dict[str, str] = {"_type": ",".join(types)}
        if since is not None:
            params["_since"] = since.isoformat()
        level = level or ExportLevel("system")
        url = f"{self.base_url}/{level.path()}?{urlencode(params)}"
        response = self._request(
            "GET", url, accept=FHIR_JSON, extra_headers={"Prefer": "respond-async"}
        )
        if response.status_code == 202:
            location = response.headers.get("Content-Location")
            if not location:
                raise BulkExportFailed(
                    "The export was accepted without a Content-Location to poll.", status=202
                )
            status_url = urljoin(url, location.strip())
            self._check_origin(status_url, "status URL")
            return status_url
        raise self._failure("kick-off", response)

    def wait(self, status_url: str) -> ExportManifest:
        """Poll until the export is complete, honouring `Retry-After`; the manifest."""
        self._check_origin(status_url, "status URL")
        started = self._clock()
        polls = 0
        while True:
            response = self._request("GET", status_url, accept="application/json")
            polls += 1
            status = response.status_code
            if status == 200:
                try:
                    manifest = ExportManifest.parse(response.json())
                except ValueError:
                    raise BulkExportFailed(
                        "The export's manifest is not JSON.", status=200
                    ) from None
                log.info(
                    "bulk export complete after %d poll(s): %d file(s)", polls, len(manifest.output)
                )
                return manifest
            # 202: in progress. 429 (polled too often) and 503 with Retry-After: wait and ask
            # again, as the spec allows servers to answer.
            if status == 202 or (
                status in (429, 503) and response.headers.get("Retry-After") is not None
            ):
                delay = _poll_delay(response.headers.get("Retry-After"))
                if self._clock() - started + delay > self.max_wait_seconds:
                    raise TemporaryUpstreamError(
                        f"The EHR's export did not finish within {self.max_wait_seconds:g} s "
                        f"({polls} poll(s)); run the baseline again later."
                    )
                log.info(
                    "bulk export in progress (%s); next poll in %.0f s",
                    _progress(response.headers.get("X-Progress")),
                    delay,
                )
                self._sleep(delay)
                continue
            raise self._failure("status", response)

    def delete(self, status_url: str) -> None:
        """Tell the server the files may go (or cancel a running export). Best effort."""
        self._check_origin(status_url, "status URL")
        try:
            self._request("DELETE", status_url, accept=FHIR_JSON)
        except (TemporaryUpstreamError, FatalUpstreamError) as exc:
            log.warning("bulk export delete at %s failed: %s", origin_text(status_url), exc.code)

    def records(self, file: ExportFile, *, requires_access_token: bool) -> Iterator[dict[str, Any]]:
        """The resources of one NDJSON file, streamed: never the whole file in memory."""
        on_origin = same_origin(file.url, self.base_url)
        if requires_access_token and not on_origin:
            raise BulkExportFailed(
                f"An export file needs the access token but is on another server "
                f"({origin_text(file.url)}); the token is sent only to the EHR's own address.",
                status=200,
            )
        headers = {"Accept": NDJSON}
        if requires_access_token:
            headers["Authorization"] = f"Bearer {self._tokens.access_token()}"
        deadline = self._clock() + self.file_deadline_seconds
        try:
            response = self._session.get(
                file.url,
                headers=headers,
                stream=True,
                timeout=(self.connect_timeout, self.read_timeout),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise TemporaryUpstreamError(
                f"An export file could not be downloaded ({type(exc).__name__})."
            ) from exc
        with response:
            if response.status_code != 200:
                raise self._failure("download", response)
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > self.max_file_bytes:
                raise BulkExportFailed(
                    f"An export file is larger than {self.max_file_bytes} bytes.", status=200
                )
            yield from self._lines(response, deadline=deadline, what=file.type or "file")

    # -- plumbing ---------------------------------------------------------------------------
    def _lines(
        self, response: requests.Response, *, deadline: float, what: str
    ) -> Iterator[dict[str, Any]]:
        size = 0
        pending = b""
        number = 0
        try:
            for chunk in response.iter_content(httplimits.CHUNK_BYTES):
                size += len(chunk)
                if size > self.max_file_bytes:
                    raise BulkExportFailed(
                        f"An export file ({what}) is larger than {self.max_file_bytes} bytes.",
                        status=200,
                    )
                if self._clock() > deadline:
                    raise TemporaryUpstreamError(
                        f"An export file ({what}) did not arrive within "
                        f"{self.file_deadline_seconds:g} s."
                    )
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_LINE_BYTES:
                    raise BulkExportFailed(
                        f"An export file ({what}) has a line over {MAX_LINE_BYTES} bytes.",
                        status=200,
                    )
                for line in lines:
                    number += 1
                    resource = _resource(line, what=what, number=number)
                    if resource is not None:
                        yield resource
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
            raise TemporaryUpstreamError(
                f"An export file ({what}) was cut off ({type(exc).__name__})."
            ) from exc
        resource = _resource(pending, what=what, number=number + 1)
        if resource is not None:
            yield resource

    def _request(
        self,
        method: str,
        url: str,
        *,
        accept: str,
        extra_headers: dict[str, str] | None = None,
        replayed: bool = False,
    ) -> requests.Response:
        self._check_origin(url, "request")
        token = self._tokens.refresh() if replayed else self._tokens.access_token()
        headers = {"Accept": accept, "Authorization": f"Bearer {token}", **(extra_headers or {})}
        what = f"{method} {urlsplit(url).path.rsplit('/', 1)[-1] or 'export'}"
        try:
            response = httplimits.send(
                self._session,
                method,
                url,
                deadline=time.monotonic() + self.request_deadline,
                max_bytes=MANIFEST_MAX_BYTES,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
                headers=headers,
                # A redirect could carry the token to a host nobody vetted.
                allow_redirects=False,
            )
        except httplimits.ResponseTooLarge:
            raise BulkExportFailed(
                f"The EHR's answer to {what} is larger than {MANIFEST_MAX_BYTES} bytes.", status=200
            ) from None
        except requests.RequestException as exc:
            raise TemporaryUpstreamError(
                f"The EHR's FHIR server did not answer ({what}: {type(exc).__name__})."
            ) from exc
        if response.status_code == 401 and not replayed:
            # A long export can outlive the token: one new token, one replay.
            return self._request(
                method, url, accept=accept, extra_headers=extra_headers, replayed=True
            )
        if response.status_code in REDIRECT_STATUSES:
            raise BulkExportFailed(
                f"The EHR answered {what} with a redirect (HTTP {response.status_code}); "
                "the app does not follow redirects with its token.",
                status=response.status_code,
            )
        return response

    def _check_origin(self, url: str, what: str) -> None:
        if not same_origin(url, self.base_url):
            raise BulkExportFailed(
                f"The export's {what} is on another server ({origin_text(url)}); "
                "the token is sent only to the EHR's own address.",
                status=0,
            )

    def _failure(self, step: str, response: requests.Response) -> Exception:
        status = response.status_code
        issues = _issue_codes(response)
        said = f" ({', '.join(issues)})" if issues else ""
        if status >= 500 or status == 429:
            return TemporaryUpstreamError(
                f"The EHR's bulk export {step} failed with HTTP {status}{said}; try again later."
            )
        return BulkExportFailed(
            f"The EHR refused the bulk export {step} (HTTP {status}){said}.",
            status=status,
            issues=issues,
        )


def _issue_codes(response: requests.Response) -> tuple[str, ...]:
    """An OperationOutcome's issue severities and codes: never its diagnostics."""
    try:
        body = response.json()
    except ValueError:
        return ()
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return ()
    codes = []
    for issue in body.get("issue") or []:
        if isinstance(issue, dict) and isinstance(issue.get("code"), str):
            code = issue["code"]
            if code.replace("-", "").isalpha() and len(code) <= 40:
                codes.append(f"{issue.get('severity', 'error')}: {code}")
    return tuple(codes)


def _poll_delay(retry_after: str | None) -> float:
    asked = parse_retry_after(retry_after)
    if asked is None:
        return DEFAULT_POLL_SECONDS
    return min(max(asked, 1.0), MAX_POLL_SECONDS)


def _progress(value: str | None) -> str:
    # X-Progress is free text from the server: keep it short and printable.
    text = (value or "no progress given").strip()[:60]
    return "".join(ch for ch in text if ch.isprintable())


def _resource(line: bytes, *, what: str, number: int) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        resource = json.loads(line)
    except ValueError:
        raise BulkExportFailed(
            f"Line {number} of an export file ({what}) is not JSON.", status=200
        ) from None
    if not isinstance(resource, dict):
        raise BulkExportFailed(
            f"Line {number} of an export file ({what}) is not a resource.", status=200
        )
    return resource
