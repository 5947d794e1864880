"""Integration (the app and the sandbox EHR on loopback, nothing patched): the whole loop in a
window whose browser keeps none of the app's cookies, carried by the per-window token."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from smartapp.stack import Stack
from tests.integration.conftest import browser

pytestmark = pytest.mark.integration

WINDOW_META = re.compile(r'<meta name="window-token" content="([^"]+)">')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@dataclass
class Window:
    """One EHR frame of a browser that blocks the app's cookies: all it has is the page."""

    session: requests.Session
    stack: Stack
    token: str
    csrf: str

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"X-Window-Token": self.token, "X-CSRF-Token": self.csrf}
        headers.update(kwargs.pop("headers", {}))
        return self.session.request(
            method, self.stack.app_url + path, headers=headers, timeout=30, **kwargs
        )

    def sandbox(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.stack.ehr_url + path, timeout=30, **kwargs)


def window_launch(stack: Stack, patient: str = "pt-01") -> Window:
    minted = requests.post(
        f"{stack.ehr_url}/_sandbox/launch",
        json={"patient": patient, "user": "dr-ada-lovelace"},
        timeout=30,
    )
    minted.raise_for_status()
    session = browser()
    # The app's host may set no cookie here; the EHR's own (first-party) still work.
    session.cookies.set_policy(
        DefaultCookiePolicy(blocked_domains=[urlsplit(stack.app_url).hostname])
    )
    session.headers["Sec-Fetch-Dest"] = "iframe"
    page = session.get(minted.json()["launch_url"], timeout=30)
    assert page.status_code == 200, page.text[:500]
    assert urlsplit(page.url).path == "/callback"  # the sidebar is the callback's answer
    assert not [c for c in session.cookies if c.domain == urlsplit(stack.app_url).hostname]
    token, csrf = WINDOW_META.search(page.text), CSRF_META.search(page.text)
    assert token and csrf
    return Window(session=session, stack=stack, token=token.group(1), csrf=csrf.group(1))


def notes_for(stack: Stack, patient: str) -> list[dict[str, Any]]:
    docs = requests.get(
        f"{stack.ehr_url}/_sandbox/resources/DocumentReference",
        params={"patient": patient},
        timeout=10,
    ).json()
    return [
        d
        for d in docs
        if any(s.get("code") == "AIAST" for s in d.get("meta", {}).get("security", []))
    ]


def test_the_whole_loop_without_cookies(stack: Stack):
    window = window_launch(stack, "pt-01")
    context = window.api("GET", "/api/context").json()
    assert context["patient"]["id"] == "pt-01"
    suggestions = window.api("GET", "/api/suggestions").json()["suggestions"]
    first = suggestions[0]
    recorded = window.api(
        "POST", f"/api/suggestions/{first['id']}/feedback", json={"action": "accept"}
    )
    assert recorded.json() == {"status": "recorded"}
    saved = window.api("POST", "/api/note", json={})
    assert saved.status_code == 201, saved.text
    # The answer lost and the save sent again: still one note in the chart.
    window.api("POST", "/api/note", json={})
    [doc] = notes_for(stack, "pt-01")
    assert doc["subject"]["reference"] == "Patient/pt-01"
    text = base64.b64decode(doc["content"][0]["attachment"]["data"]).decode()
    assert first["statements"][0]["text"].split(" (see ")[0] in text

    # Without the header, or with the token anywhere but the header, the app knows no one.
    anon = window.session
    assert anon.get(f"{stack.app_url}/api/context", timeout=30).status_code == 401
    leaked = anon.get(f"{stack.app_url}/api/context", params={"token": window.token}, timeout=30)
    assert leaked.status_code == 401

    assert window.api("POST", "/logout").json()["status"] == "signed_out"
    assert window.api("GET", "/api/context").status_code == 401


def test_two_windows_of_one_browser_keep_their_patients(stack: Stack):
    one, two = window_launch(stack, "pt-01"), window_launch(stack, "pt-02")
    assert one.api("GET", "/api/context").json()["patient"]["id"] == "pt-01"
    assert two.api("GET", "/api/context").json()["patient"]["id"] == "pt-02"
    first = one.api("GET", "/api/suggestions").json()["suggestions"][0]
    one.api("POST", f"/api/suggestions/{first['id']}/feedback", json={"action": "accept"})
    # The other window cannot decide on this window's suggestion (another launch's chart).
    crossed = two.api(
        "POST",
        f"/api/suggestions/{first['id']}/feedback",
        json={"action": "reject", "reason": "incorrect"},
    )
    assert crossed.status_code == 404
    assert one.api("POST", "/api/note", json={}).status_code == 201
    assert len(notes_for(stack, "pt-01")) == 1 and notes_for(stack, "pt-02") == []
