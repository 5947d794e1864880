"""Redirects from an EHR are followed only within the origin the request was sent to.

An allowed EHR that redirects its `.well-known/smart-configuration` (or its JWKS) to another
host would otherwise choose where the clinician signs in and whose keys the app trusts: the
allow-list would be bypassed one hop later (issue 11, finding 4). Token requests and FHIR
requests follow no redirect at all (`smartapp/smart/client.py`, `smartapp/fhir/client.py`).
Origin = scheme, host and port: https://www.rfc-editor.org/rfc/rfc6454
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urljoin, urlsplit

import requests

#: Hops followed within one origin before giving up (a loop, or a misconfigured server).
MAX_HOPS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class RedirectRefused(Exception):
    """The server redirected to another origin (or too often); the redirect was not followed.

    Not a `requests.RequestException` on purpose: callers must not mistake it for a server
    that is down and retry.
    """

    def __init__(self, url: str, target: str | None, status: int, *, reason: str) -> None:
        self.url = url
        self.target = target
        self.status = status
        self.reason = reason
        super().__init__(
            f"{origin_text(url)} answered HTTP {status} {reason}"
            + (f" ({origin_text(target)})" if target else "")
        )


def origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: no origin matches it
        return scheme, "\0invalid", None
    return scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(scheme)


def origin_text(url: str) -> str:
    """The origin for messages and logs: never a path or query (they may carry data)."""
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}" if port else f"{scheme}://{host}"


def same_origin(a: str, b: str) -> bool:
    return origin(a) == origin(b)


def get_within_origin(
    http: requests.Session,
    url: str,
    *,
    headers: Mapping[str, str],
    timeout: float | tuple[float, float],
) -> requests.Response:
    """GET `url`, following redirects only to the same origin (at most MAX_HOPS).

    Raises RedirectRefused for a redirect elsewhere, and whatever `requests` raises when the
    server does not answer.
    """
    current, status = url, 0
    for _hop in range(MAX_HOPS + 1):
        response = http.get(current, headers=dict(headers), timeout=timeout, allow_redirects=False)
        if response.status_code not in REDIRECT_STATUSES:
            return response
        status = response.status_code
        location = response.headers.get("Location")
        response.close()
        if not location:
            raise RedirectRefused(current, None, response.status_code, reason="without a Location")
        target = urljoin(current, location.strip())
        if not same_origin(target, url):
            raise RedirectRefused(current, target, response.status_code, reason="to another origin")
        current = target
    raise RedirectRefused(url, None, status, reason=f"more than {MAX_HOPS} redirects in a row")
