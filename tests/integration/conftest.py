"""Integration fixtures: the real app and the sandbox EHR on loopback ports, nothing patched.

The sandbox's synthetic population is generated once per test run and copied for each
test, so every test starts from the same chart data with a fresh EHR store and a fresh
app store.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from smartapp.stack import Stack, build_stack
from tests.conftest import test_database_url


class LoopbackBrowser(requests.Session):
    """A browser-like session on loopback: follows redirects keeping cookies, as Chromium does.

    The app's cookies are `Secure`, which Chromium sends over http to 127.0.0.1 (a secure
    context) but Python's cookie jar does not; this session drops the flag on loopback.
    """

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:  # type: ignore[override]
        follow = kwargs.pop("allow_redirects", True)
        response = super().request(method, url, *args, allow_redirects=False, **kwargs)
        self._loopback_cookies()
        hops = 0
        while follow and response.is_redirect and hops < 10:
            target = urljoin(response.url, response.headers["Location"])
            response = super().request(
                "GET", target, allow_redirects=False, timeout=kwargs.get("timeout", 30)
            )
            self._loopback_cookies()
            hops += 1
        return response

    def _loopback_cookies(self) -> None:
        for cookie in self.cookies:
            if cookie.domain in ("127.0.0.1", "localhost", "localhost.local"):
                cookie.secure = False


def browser() -> requests.Session:
    return LoopbackBrowser()


def app_environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    environ = {
        "SMARTAPP_INSTANCE_PATH": str(tmp_path / "instance"),
        "SMARTAPP_SECRET_KEY": "integration-test-secret",
        "SMARTAPP_DATABASE_URL": test_database_url(tmp_path),
    }
    environ.update(extra)
    return environ


def start_stack(tmp_path: Path, sandbox_template: Path, **kwargs: Any) -> Stack:
    data_dir = tmp_path / "sandbox"
    if not data_dir.exists():
        shutil.copytree(sandbox_template, data_dir)
    environ = kwargs.pop("environ", None) or app_environ(tmp_path)
    stack = build_stack(environ=environ, sandbox_data_dir=data_dir, **kwargs)
    db = stack.app.extensions["smartapp.db"]
    if environ["SMARTAPP_DATABASE_URL"].startswith("postgresql"):
        db.drop_all()
        db.upgrade()
    return stack.start()


@pytest.fixture
def stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    running = start_stack(tmp_path, sandbox_template)
    yield running
    running.stop()


@dataclass
class Launched:
    """A browser that completed an EHR launch: its cookies, and the sidebar's CSRF token."""

    session: requests.Session
    stack: Stack
    csrf: str
    patient: str
    page: requests.Response

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if method != "GET":
            headers.setdefault("X-CSRF-Token", self.csrf)
        return self.session.request(
            method, self.stack.app_url + path, headers=headers, timeout=30, **kwargs
        )

    def sandbox(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.stack.ehr_url + path, timeout=30, **kwargs)


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


def ehr_launch(stack: Stack, patient: str = "pt-01", *, user: str = "dr-ada-lovelace") -> Launched:
    """What the EHR page does: mint a launch for the patient and open the app's launch URL."""
    minted = requests.post(
        f"{stack.ehr_url}/_sandbox/launch", json={"patient": patient, "user": user}, timeout=30
    )
    minted.raise_for_status()
    session = browser()
    page = session.get(minted.json()["launch_url"], timeout=30)
    assert page.status_code == 200, page.text[:500]
    assert page.url == f"{stack.app_url}/"
    match = CSRF_META.search(page.text)
    assert match, "the sidebar page carries its CSRF token"
    return Launched(session=session, stack=stack, csrf=match.group(1), patient=patient, page=page)


@pytest.fixture
def launched(stack: Stack) -> Launched:
    return ehr_launch(stack)


@dataclass
class FakeEngineService:
    """An OpenAI-compatible LLM that cites the chart's first Condition, and a CDS Hooks
    feedback endpoint that records what it is told."""

    feedback: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/v1/chat/completions":
            prompt = json.dumps(json.loads(request.get_data()))
            condition = prompt.split("Condition/")[1].split('"')[0].split("\\")[0]
            answer = {
                "suggestions": [
                    {
                        "title": "Active problems",
                        "statements": [
                            {
                                "text": "An active problem is on the list.",
                                "citations": [f"Condition/{condition}"],
                            }
                        ],
                    }
                ]
            }
            body = {
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": json.dumps(answer)}}
                ]
            }
            return Response(json.dumps(body), mimetype="application/json")(environ, start_response)
        if request.path == "/cds-services/smartapp-drafts/feedback" and request.method == "POST":
            self.feedback.append(json.loads(request.get_data()))
            return Response("{}", mimetype="application/json")(environ, start_response)
        return Response("not found", status=404)(environ, start_response)


@pytest.fixture
def engine_service() -> Iterator[tuple[str, FakeEngineService]]:
    fake = FakeEngineService()
    server = make_server("127.0.0.1", 0, fake, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", fake
    server.shutdown()
    server.server_close()
