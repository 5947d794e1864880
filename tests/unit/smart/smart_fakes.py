"""A fake SMART authorization server on `responses`, and a helper that launches the app.

The fake signs id_tokens with an RSA key generated here; nothing from smartapp.sandbox.
Imported by the tests as `smart_fakes` (a unique name: the test folders have no __init__).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import responses
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from smartapp.config import Settings

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "smart"

ISS = "http://ehr.test/fhir"  # the allow-listed issuer of tests/conftest.py
AUTHORIZE = "http://ehr.test/auth/authorize"
TOKEN = "http://ehr.test/auth/token"
JWKS = "http://ehr.test/auth/jwks"
CLIENT_ID = "smartapp"  # launch.json


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


class FakeEHR:
    """The authorization server's side of the launch, on `responses`."""

    def __init__(self, rsps: responses.RequestsMock, key: RSAKey) -> None:
        self.rsps = rsps
        self.key = key
        self.token_queue: list[tuple[int, dict[str, Any]]] = []
        self.token_requests: list[dict[str, Any]] = []
        self.issued: list[dict[str, Any]] = []  # token response bodies sent

    # -- documents ---------------------------------------------------------------------
    def serve_discovery(self, **overrides: Any) -> dict[str, Any]:
        config = load_fixture("smart-configuration.json")
        config.update(overrides)
        self.rsps.get(f"{ISS}/.well-known/smart-configuration", json=config)
        return config

    def serve_jwks(self, *keys: RSAKey) -> None:
        keyset = KeySet(list(keys or (self.key,)))
        self.rsps.get(JWKS, json=keyset.as_dict(private=False))

    def serve_token_endpoint(self) -> None:
        self.rsps.add_callback(responses.POST, TOKEN, callback=self._token)

    def queue_token(self, body: dict[str, Any], status: int = 200) -> None:
        self.token_queue.append((status, body))

    def _token(self, request: Any) -> tuple[int, dict[str, str], str]:
        form = {k: v[0] for k, v in parse_qs(request.body or "").items()}
        self.token_requests.append({"form": form, "headers": dict(request.headers)})
        if not self.token_queue:
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": "invalid_grant"})
        status, body = self.token_queue.pop(0)
        self.issued.append(body)
        return status, {"Content-Type": "application/json"}, json.dumps(body)

    # -- tokens ------------------------------------------------------------------------
    def id_token(self, *, key: RSAKey | None = None, alg: str = "RS256", **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": ISS,
            "sub": "user-789",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "fhirUser": "Practitioner/prac-1",
        }
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        signer = key or self.key
        return jwt.encode({"alg": alg, "kid": signer.kid}, payload, signer, algorithms=[alg])

    def token_response(self, **overrides: Any) -> dict[str, Any]:
        body = copy.deepcopy(load_fixture("token-response-ehr-launch.json"))
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}


def authorize_params(response: Any) -> dict[str, str]:
    """The query of the authorize redirect the app answered with."""
    assert response.status_code == 302, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith(AUTHORIZE + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


class LaunchActions:
    """Drives /launch and /callback like a browser the EHR sent (Flask's AuthActions idea)."""

    def __init__(self, client: Any, ehr: FakeEHR) -> None:
        self.client = client
        self.ehr = ehr

    def start(self, *, iss: str = ISS, launch: str | None = "launch-abc") -> dict[str, str]:
        query = {"iss": iss}
        if launch is not None:
            query["launch"] = launch
        return authorize_params(self.client.get("/launch", query_string=query))

    def complete(
        self, params: dict[str, str], *, token: dict[str, Any] | None = None, **id_claims: Any
    ) -> Any:
        body = token if token is not None else self.ehr.token_response()
        if "id_token" not in body and "openid" in params.get("scope", "").split():
            body["id_token"] = self.ehr.id_token(nonce=params.get("nonce"), **id_claims)
        self.ehr.queue_token(body)
        return self.client.get(
            "/callback", query_string={"code": "code-xyz", "state": params["state"]}
        )

    def launch(self, **kwargs: Any) -> Any:
        return self.complete(self.start(), **kwargs)


def make_settings(tmp_path: Path, **env: str) -> Settings:
    """The unit tests' settings (tests/conftest.py), with this file's EHR allowed."""
    from tests.conftest import make_settings as unit_settings

    return unit_settings(tmp_path, **{"SMARTAPP_ALLOWED_ISSUERS": ISS, **env})
