"""The FHIR R4 REST client: the only code in the app that sends HTTP to the EHR's FHIR server.

https://hl7.org/fhir/R4/http.html

Every request has connect and read timeouts, a total deadline (retries included: a server
trickling its answer is cut off there) and a cap on the answer's size, and carries
`Accept: application/fhir+json`.
Idempotent requests (GET, PUT, a batch of reads, a create made conditional with
`If-None-Exist`) are retried with exponential backoff and jitter on 429/502/503/504 and on
connection errors and timeouts, honouring `Retry-After`; other POSTs (plain creates,
transactions) are sent once, because a lost answer does not mean the write did not happen.
A 401 costs one `TokenProvider.refresh()` and one replay, then `RelaunchRequired`.

Errors (all from `smartapp.errors`):

    TemporaryUpstreamError   timeouts, the deadline, refused connections, 5xx and 429 (after
                             the retries)
    FatalUpstreamError       a bad answer: not JSON, not the resource asked for, a redirect
    ├── FHIRRequestRefused   a 4xx other than 401/429 (`.status` holds it)
    ├── ChartTooLarge        an answer larger than the cap
    └── RelaunchRequired     401 after the refresh, or the refresh itself refused

Messages and log lines name the method and the resource type only: never a token, never
a query string or an id (they can identify a patient), never an OperationOutcome's
`diagnostics` (servers echo chart data in it).
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import requests

from smartapp import fastjson, httplimits
from smartapp.errors import (
    ChartTooLarge,
    FatalUpstreamError,
    RelaunchRequired,
    TemporaryUpstreamError,
)
from smartapp.fhir.auth import TokenProvider
from smartapp.fhir.snapshot import reference_key

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
#: Statuses that mean "try again later"; other 5xx are reported at once as temporary.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: How long a server's CapabilityStatement is reused, across clients and launches.
CAPABILITIES_TTL_SECONDS = 300.0
#: The whole of one request, retries and their waits included (SMARTAPP_FHIR_DEADLINE).
DEFAULT_DEADLINE_SECONDS = 30.0
#: The largest answer read (SMARTAPP_FHIR_MAX_MB): a chart page is far smaller.
DEFAULT_MAX_RESPONSE_BYTES = 32 * 1024 * 1024

_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
#: R4 allows 64 characters, but some EHRs (Epic) issue longer ids; the characters are what
#: keep a URL path safe.
_RESOURCE_ID = re.compile(r"[A-Za-z0-9\-.]{1,255}")
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})


def decode_json(content: bytes | str) -> Any:
    """A FHIR response's JSON: orjson's parse (a chart's pages are the app's biggest parse,
    about five times faster), read exactly as `json.loads` reads it (`smartapp.fastjson`)."""
    return fastjson.loads(content)


class FHIRRequestRefused(FatalUpstreamError):
    """The server answered 4xx (other than 401 and 429): retrying the same request won't help."""

    def __init__(self, message: str, *, status: int) -> None:
        code = {
            403: "ehr_forbidden",
            404: "ehr_not_found",
            410: "ehr_not_found",
            409: "ehr_conflict",
            412: "ehr_conflict",
        }.get(status, "ehr_error")
        super().__init__(message, code=code)
        self.status = status


@dataclass(frozen=True, kw_only=True)
class BatchRequest:
    """One batch entry; `url` is relative to the base (`Patient/1`, `Observation?patient=1`)."""

    url: str
    method: str = "GET"
    resource: dict[str, Any] | None = None
    #: Makes a POST conditional (and so safe to retry): a search that finds the existing one.
    if_none_exist: str | None = None

    @property
    def idempotent(self) -> bool:
        method = self.method.upper()
        return method in _IDEMPOTENT_METHODS or (method == "POST" and bool(self.if_none_exist))

    def to_entry(self) -> dict[str, Any]:
        request: dict[str, Any] = {"method": self.method.upper(), "url": self.url}
        if self.if_none_exist:
            request["ifNoneExist"] = self.if_none_exist
        entry: dict[str, Any] = {"request": request}
        if self.resource is not None:
            entry["resource"] = self.resource
        return entry


@dataclass(frozen=True, kw_only=True)
class BatchResponse:
    """One entry of a batch-response, in the order of the requests."""

    #: The entry's HTTP status (`response.status` "200 OK" → 200); 0 if the server sent none.
    status: int
    resource: dict[str, Any] | None = None
    location: str | None = None
    #: The server's OperationOutcome for a failed entry. Its diagnostics may quote chart
    #: data: show it to no one and never log it.
    outcome: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def split_search_bundle(
    bundle: Mapping[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(matches, includes) of a searchset Bundle; `outcome` entries (warnings) are dropped."""
    matches: list[dict[str, Any]] = []
    includes: list[dict[str, Any]] = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if mode == "include":
            includes.append(entry["resource"])
        elif mode in (None, "match"):
            matches.append(entry["resource"])
    return matches, includes


def next_link(bundle: Mapping[str, Any]) -> str | None:
    """The URL of the Bundle's `next` link, if any."""
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if isinstance(url, str) and url:
                return url
    return None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (delay-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _parse_status(value: Any) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        head = value.strip().split(" ", 1)[0]
        if head.isdigit():
            return int(head)
    return 0


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):g} MB"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


_capabilities_cache: dict[str, tuple[float, dict[str, Any]]] = {}
_capabilities_lock = threading.Lock()


def clear_capabilities_cache() -> None:
    """Forget every cached CapabilityStatement (tests; a server known to have changed)."""
    with _capabilities_lock:
        _capabilities_cache.clear()


class FHIRClient:
    """A FHIR R4 client for one server base URL and one launch's tokens. Thread-safe."""

    def __init__(
        self,
        base_url: str,
        *,
        tokens: TokenProvider,
        session: requests.Session | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 20.0,
        max_retries: int = 3,
        backoff_base: float = 0.25,
        backoff_cap: float = 8.0,
        deadline: float = DEFAULT_DEADLINE_SECONDS,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        base = base_url.strip().rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        if max_retries < 0 or backoff_base < 0 or backoff_cap < 0:
            raise ValueError("max_retries, backoff_base and backoff_cap must not be negative")
        if deadline <= 0 or max_response_bytes < 1:
            raise ValueError("deadline and max_response_bytes must be positive")
        self.base_url = base
        self._base_origin = _origin(base)
        self._base_path = parts.path.rstrip("/")
        self._tokens = tokens
        self._session = session or httplimits.limited_session()
        self._owns_session = session is None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.max_response_bytes = max_response_bytes
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._count_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._request_count = 0

    # -- bookkeeping -------------------------------------------------------------------

    @property
    def request_count(self) -> int:
        """HTTP requests actually sent by this client (retries and replays included)."""
        with self._count_lock:
            return self._request_count

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> FHIRClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- URLs ----------------------------------------------------------------------------

    def is_on_base(self, url: str) -> bool:
        """True if `url` is absolute and under this client's base (scheme, host, port and path)."""
        try:
            parts = urlsplit(url)
            origin = _origin(url)
        except ValueError:
            return False
        if origin != self._base_origin or parts.username or parts.password:
            return False
        path = parts.path
        if any(segment in (".", "..") for segment in unquote(path).split("/")):
            return False
        return path == self._base_path or path.startswith(self._base_path + "/")

    def relative_to_base(self, url: str) -> str:
        """`url` (absolute, or relative to the base) as a path relative to the base, query kept.

        Raises FatalUpstreamError for a URL on another server: the token never goes there.
        """
        absolute = urljoin(self.base_url + "/", url)
        if not self.is_on_base(absolute):
            raise FatalUpstreamError("The EHR sent a link to another server; it was not followed.")
        parts = urlsplit(absolute)
        path = parts.path[len(self._base_path) :].lstrip("/")
        return path + (f"?{parts.query}" if parts.query else "")

    def _url(self, relative: str) -> str:
        return f"{self.base_url}/{relative}"

    @staticmethod
    def _check_type(resource_type: Any) -> str:
        if not isinstance(resource_type, str) or not _RESOURCE_TYPE.fullmatch(resource_type):
            raise ValueError("not a FHIR resource type name")
        return resource_type

    @staticmethod
    def _check_id(resource_id: Any) -> str:
        if not isinstance(resource_id, str) or not _RESOURCE_ID.fullmatch(resource_id):
            raise FatalUpstreamError("The EHR gave an id that is not a valid FHIR id.")
        return resource_id

    def _describe(self, method: str, url: str) -> str:
        """`GET Observation`: what a message may say about a request (no ids, no query)."""
        try:
            relative = self.relative_to_base(url).split("?", 1)[0]
        except FatalUpstreamError:
            return f"{method} (another server)"
        first = relative.split("/", 1)[0]
        if first == "metadata" or _RESOURCE_TYPE.fullmatch(first):
            return f"{method} {first}"
        return f"{method} [base]"

    # -- the one place that sends --------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": at least half the exponential step, so retries do spread out, and
        # never more than the step, so the cap bounds every wait.
        step = min(self.backoff_cap, self.backoff_base * (2**attempt))
        return float(step / 2 + self._rng.uniform(0, step / 2))

    def _retry_delay(self, response: requests.Response, attempt: int) -> float:
        asked = parse_retry_after(response.headers.get("Retry-After"))
        if asked is not None:
            # The server knows best, but a clinician is waiting: never longer than the cap.
            return min(asked, self.backoff_cap)
        return self._backoff(attempt)

    def _count(self) -> None:
        with self._count_lock:
            self._request_count += 1

    def _token_after_401(self, rejected: str) -> str:
        # Concurrent searches can all get 401 for the same expired token; refresh once
        # and let the others replay with the new token (a rotated refresh token can be
        # used only once).
        with self._refresh_lock:
            current = self._tokens.access_token()
            if current != rejected:
                return current
            return self._tokens.refresh()

    def _send(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        if not self.is_on_base(url):
            raise FatalUpstreamError("Refused to send a request outside the EHR's FHIR base URL.")
        what = self._describe(method, url)
        data = json.dumps(body, separators=(",", ":")).encode("utf-8") if body is not None else None
        token = self._tokens.access_token()
        refreshed = False
        attempt = 0
        # One deadline for the request, its retries and their waits: the clinician is waiting.
        deadline = time.monotonic() + self.deadline
        while True:
            request_headers = {"Accept": FHIR_JSON, "Authorization": f"Bearer {token}"}
            if data is not None:
                request_headers["Content-Type"] = FHIR_JSON
            request_headers.update(headers or {})
            self._count()
            try:
                response = httplimits.send(
                    self._session,
                    method,
                    url,
                    deadline=deadline,
                    max_bytes=self.max_response_bytes,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    data=data,
                    headers=request_headers,
                    # A redirect could carry the token to a host we never vetted.
                    allow_redirects=False,
                )
            except httplimits.DeadlineExceeded:
                log.warning("FHIR %s: no whole answer within %.1fs", what, self.deadline)
                raise TemporaryUpstreamError(
                    f"The EHR's FHIR server did not answer in time ({what}: no whole answer "
                    f"within {self.deadline:g} s, {attempt + 1} attempt(s)).",
                    reason="deadline",
                ) from None
            except httplimits.ResponseTooLarge as exc:
                log.warning("FHIR %s: answer larger than %d bytes; refused", what, exc.limit)
                raise ChartTooLarge(
                    f"The chart is too large to read in one go: the EHR's answer to {what} "
                    f"was larger than {_megabytes(exc.limit)} (SMARTAPP_FHIR_MAX_MB)."
                ) from None
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                kind = (
                    "did not answer in time"
                    if isinstance(exc, requests.Timeout)
                    else ("could not be reached")
                )
                if idempotent and attempt < self.max_retries:
                    delay = self._backoff(attempt)
                    if time.monotonic() + delay < deadline:
                        log.warning(
                            "FHIR %s: %s, retry %d/%d in %.2fs",
                            what,
                            type(exc).__name__,
                            attempt + 1,
                            self.max_retries,
                            delay,
                        )
                        self._sleep(delay)
                        attempt += 1
                        continue
                # `from None`: the requests exception's text holds the full URL and query.
                raise TemporaryUpstreamError(
                    f"The EHR's FHIR server {kind} ({what}, {type(exc).__name__}, "
                    f"{attempt + 1} attempt(s)).",
                    reason="deadline" if isinstance(exc, requests.Timeout) else "unreachable",
                ) from None
            except requests.RequestException as exc:
                raise FatalUpstreamError(
                    f"The request to the EHR's FHIR server failed ({what}, {type(exc).__name__})."
                ) from None

            status = response.status_code
            if status == 401:
                if refreshed:
                    log.warning("FHIR %s: 401 again after a token refresh", what)
                    raise RelaunchRequired()
                refreshed = True
                log.info("FHIR %s: 401, refreshing the access token once", what)
                token = self._token_after_401(token)
                continue
            if status in RETRY_STATUSES or status >= 500:
                delay = self._retry_delay(response, attempt)
                if (
                    status in RETRY_STATUSES
                    and idempotent
                    and attempt < self.max_retries
                    and time.monotonic() + delay < deadline
                ):
                    log.warning(
                        "FHIR %s: HTTP %d, retry %d/%d in %.2fs",
                        what,
                        status,
                        attempt + 1,
                        self.max_retries,
                        delay,
                    )
                    self._sleep(delay)
                    attempt += 1
                    continue
                raise TemporaryUpstreamError(
                    f"The EHR's FHIR server is not answering ({what}: HTTP {status} after "
                    f"{attempt + 1} attempt(s))."
                )
            if 300 <= status < 400:
                raise FatalUpstreamError(
                    f"The EHR's FHIR server answered {what} with a redirect (HTTP {status}); "
                    "it was not followed."
                )
            if status >= 400:
                raise FHIRRequestRefused(
                    f"The EHR's FHIR server refused {what} (HTTP {status}).", status=status
                )
            return response

    def _json(
        self, response: requests.Response, *, method: str, expect: str | None
    ) -> dict[str, Any]:
        what = self._describe(method, response.url or self.base_url)
        try:
            data = decode_json(response.content)
        except ValueError:
            raise FatalUpstreamError(
                f"The EHR's FHIR server answered {what} with something other than JSON."
            ) from None
        except RecursionError:
            # Nesting no FHIR resource has (parsing.MAX_JSON_DEPTH skips deep ones that parse).
            raise FatalUpstreamError(
                f"The EHR's FHIR server answered {what} with JSON nested too deeply to read."
            ) from None
        rtype = data.get("resourceType") if isinstance(data, dict) else None
        if not isinstance(rtype, str):
            raise FatalUpstreamError(
                f"The EHR's FHIR server answered {what} with JSON that is not a FHIR resource."
            )
        if expect is not None and rtype != expect:
            shown = rtype if _RESOURCE_TYPE.fullmatch(rtype) else "something else"
            raise FatalUpstreamError(
                f"The EHR's FHIR server answered {what} with {shown} instead of {expect}."
            )
        assert isinstance(data, dict)
        return data

    # -- the FHIR interactions -----------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> dict[str, Any]:
        """GET `[base]/Type/id`."""
        rtype = self._check_type(resource_type)
        url = self._url(f"{rtype}/{self._check_id(resource_id)}")
        response = self._send("GET", url, idempotent=True)
        return self._json(response, method="GET", expect=rtype)

    def get_url(self, url: str) -> dict[str, Any]:
        """GET an absolute URL the server gave (a `next` link): only under this base URL."""
        if not urlsplit(url).scheme:
            raise ValueError("get_url needs an absolute URL")
        response = self._send("GET", url, idempotent=True)
        return self._json(response, method="GET", expect=None)

    def batch(self, requests: Sequence[BatchRequest]) -> list[BatchResponse]:
        """POST a batch Bundle: one BatchResponse per request, in order; retried if idempotent."""
        if not requests:
            return []
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [r.to_entry() for r in requests],
        }
        idempotent = all(r.idempotent for r in requests)
        response = self._send("POST", self.base_url, idempotent=idempotent, body=bundle)
        answer = self._json(response, method="POST", expect="Bundle")
        entries = answer.get("entry") or []
        if answer.get("type") != "batch-response" or len(entries) != len(requests):
            raise FatalUpstreamError(
                "The EHR's FHIR server answered a batch with something other than a "
                "batch-response of the same length."
            )
        results: list[BatchResponse] = []
        for raw in entries:
            entry: dict[str, Any] = raw if isinstance(raw, dict) else {}
            resp: dict[str, Any] = (
                entry["response"] if isinstance(entry.get("response"), dict) else {}
            )
            resource = entry.get("resource") if isinstance(entry.get("resource"), dict) else None
            outcome = resp.get("outcome") if isinstance(resp.get("outcome"), dict) else None
            status = _parse_status(resp.get("status"))
            if (
                not 200 <= status < 300
                and resource
                and resource.get("resourceType") == ("OperationOutcome")
            ):
                # Some servers put a failed entry's OperationOutcome in `resource`.
                outcome, resource = outcome or resource, None
            location = resp.get("location")
            results.append(
                BatchResponse(
                    status=status,
                    resource=resource,
                    location=location if isinstance(location, str) else None,
                    outcome=outcome,
                )
            )
        return results

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle; returns the transaction-response. Never retried."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            raise ValueError("transaction() needs a Bundle of type transaction")
        response = self._send("POST", self.base_url, idempotent=False, body=bundle)
        return self._json(response, method="POST", expect="Bundle")

    def create(
        self, resource: dict[str, Any], *, if_none_exist: str | None = None
    ) -> dict[str, Any]:
        """POST `[base]/Type`: the created (or, with `if_none_exist`, the existing) resource.

        A plain create is sent once. With `if_none_exist` (a search that finds the resource
        if it exists, e.g. `identifier=urn:ietf:rfc:3986|urn:uuid:…`) the create is
        idempotent, so it is retried like a GET.
        """
        rtype = self._check_type(resource.get("resourceType"))
        headers = {"Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        response = self._send(
            "POST", self._url(rtype), idempotent=bool(if_none_exist), body=resource, headers=headers
        )
        return self._written(response, rtype)

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        """PUT `[base]/Type/id`; returns the stored resource. Idempotent, so retried."""
        rtype = self._check_type(resource.get("resourceType"))
        rid = self._check_id(resource.get("id"))
        response = self._send(
            "PUT",
            self._url(f"{rtype}/{rid}"),
            idempotent=True,
            body=resource,
            headers={"Prefer": "return=representation"},
        )
        return self._written(response, rtype)

    def _written(self, response: requests.Response, rtype: str) -> dict[str, Any]:
        if response.content.strip():
            try:
                data = decode_json(response.content)
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, dict) and data.get("resourceType") == rtype and data.get("id"):
                return data
        # The server ignored `Prefer: return=representation`: read it back from Location.
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        if location:
            key = reference_key(urlsplit(location).path if "://" in location else location)
            parts = key.split("/")
            if len(parts) == 2 and parts[0] == rtype:
                return self.read(rtype, parts[1])
        raise FatalUpstreamError(
            f"The EHR's FHIR server stored a {rtype} but did not say where (no body, no Location)."
        )

    def capabilities(self) -> dict[str, Any]:
        """GET `[base]/metadata`, cached per base URL for a few minutes across all clients."""
        now = time.monotonic()
        with _capabilities_lock:
            cached = _capabilities_cache.get(self.base_url)
        if cached is not None and cached[0] > now:
            return cached[1]
        response = self._send("GET", self._url("metadata"), idempotent=True)
        statement = self._json(response, method="GET", expect="CapabilityStatement")
        with _capabilities_lock:
            _capabilities_cache[self.base_url] = (now + CAPABILITIES_TTL_SECONDS, statement)
        return statement
