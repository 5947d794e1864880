"""Helpers for the sandbox EHR unit tests: constants, PKCE by hand, a SMART client.

Written with hashlib and base64 against the sandbox's HTTP surface; nothing from the app's
own SMART or FHIR client code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flask import Flask
from flask.testing import FlaskClient

from smartapp.sandbox.ehr import create_ehr_app

REPO_ROOT = Path(__file__).resolve().parents[3]
EHR_BASE = "http://localhost:8400"
FHIR_BASE = f"{EHR_BASE}/fhir"
APP_BASE = "http://127.0.0.1:8401"
REDIRECT_URI = f"{APP_BASE}/callback"
#: pt-01, pt-02, pt-03 and bench-large: small enough to build quickly, every kind of chart.
POPULATION = 4


def load_manifest() -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((REPO_ROOT / "launch.json").read_text(encoding="utf-8"))
    return manifest


def make_ehr(data_dir: Path, template: Path | None = None, **options: Any) -> Flask:
    """A sandbox EHR on `data_dir`, seeded from a populated `template` folder if given."""
    if template is not None and not (data_dir / "sandbox-ehr.sqlite3").exists():
        shutil.copytree(template, data_dir, dirs_exist_ok=True)
    options.setdefault("population_size", POPULATION)
    manifest = options.pop("manifest", None) or load_manifest()
    app = create_ehr_app(
        data_dir=data_dir,
        ehr_base_url=EHR_BASE,
        app_base_url=APP_BASE,
        manifest=manifest,
        **options,
    )
    app.config["TESTING"] = True
    return app


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), as RFC 7636 §4.1-4.2 define them."""
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode()
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def bearer(token: Mapping[str, Any] | str) -> dict[str, str]:
    value = token if isinstance(token, str) else token["access_token"]
    return {"Authorization": f"Bearer {value}"}


@dataclass
class SmartClient:
    """A hand-written SMART client driving the sandbox through Flask's test client."""

    http: FlaskClient
    client_id: str = "smartapp"
    redirect_uri: str = REDIRECT_URI
    scope: str = field(default_factory=lambda: str(load_manifest()["scope"]))
    verifier: str = ""
    state: str = ""
    nonce: str = ""

    def authorize_params(self, **overrides: str | None) -> dict[str, str]:
        self.verifier, challenge = pkce_pair()
        self.state = secrets.token_urlsafe(16)
        self.nonce = secrets.token_urlsafe(16)
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "state": self.state,
            "aud": FHIR_BASE,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "nonce": self.nonce,
        }
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def launch(self, patient: str = "pt-01", **body: Any) -> str:
        response = self.http.post(
            "/_sandbox/launch", json={"patient": patient, "client_id": self.client_id, **body}
        )
        assert response.status_code == 201, response.get_data(as_text=True)
        return str(response.get_json()["launch"])

    def authorize(self, **overrides: str | None) -> Any:
        return self.http.get("/auth/authorize", query_string=self.authorize_params(**overrides))

    def code_for_launch(self, patient: str = "pt-01", **overrides: str | None) -> str:
        response = self.authorize(launch=self.launch(patient), **overrides)
        assert response.status_code == 302, response.get_data(as_text=True)
        params = query_of(response.headers["Location"])
        assert params.get("state") == self.state
        assert "code" in params, params
        return params["code"]

    def exchange(
        self,
        code: str,
        *,
        verifier: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: str | None,
    ) -> Any:
        form: dict[str, str | None] = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.redirect_uri,
            "client_id": self.client_id,
            "code_verifier": verifier if verifier is not None else self.verifier,
        }
        form.update(extra)
        data = {k: v for k, v in form.items() if v is not None}
        return self.http.post("/auth/token", data=data, headers=dict(headers or {}))

    def token(self, patient: str = "pt-01", **overrides: str | None) -> dict[str, Any]:
        response = self.exchange(self.code_for_launch(patient, **overrides))
        assert response.status_code == 200, response.get_data(as_text=True)
        token: dict[str, Any] = response.get_json()
        return token
