"""Integration: the sandbox EHR over real HTTP on loopback, driven by hand with requests.

A full EHR launch as the app would perform it — the chart page's iframe URL, discovery,
authorize with PKCE S256, token, FHIR reads, a batch and a transaction — with none of the
app's own SMART or FHIR client code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import RSAKey

from smartapp.sandbox.ehr import create_ehr_app
from smartapp.sandbox.server import BackgroundServer

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
TIMEOUT = (3.05, 20)


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[tuple[BackgroundServer, BackgroundServer]]:
    """The EHR on "localhost" and a stand-in app origin on 127.0.0.1: two sites.

    Both sockets are bound first so each side knows the other's URL before its WSGI app
    is built; the "app" here only needs to exist as the redirect target's origin.
    """
    ehr_server = BackgroundServer("127.0.0.1", 0, public_host="localhost")
    app_server = BackgroundServer("127.0.0.1", 0)
    manifest = json.loads((REPO_ROOT / "launch.json").read_text(encoding="utf-8"))
    ehr_app = create_ehr_app(
        data_dir=tmp_path / "ehr",
        ehr_base_url=ehr_server.url,
        app_base_url=app_server.url,
        manifest=manifest,
        population_size=3,
    )

    def stand_in_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"the app would run here"]

    ehr_server.set_app(ehr_app)
    app_server.set_app(stand_in_app)
    with ehr_server, app_server:
        yield ehr_server, app_server
    ehr_app.extensions["smartapp.sandbox"].store.close()


def test_full_ehr_launch_over_http(sandbox):
    ehr, app = sandbox
    assert ehr.url.startswith("http://localhost:")
    assert app.url.startswith("http://127.0.0.1:")
    http = requests.Session()

    # The clinician opens a chart; the EHR renders the app's launch URL into the sidebar.
    chart = http.get(f"{ehr.url}/patients/pt-01", timeout=TIMEOUT)
    assert chart.status_code == 200
    src = unescape(re.search(r'<iframe[^>]*\bsrc="([^"]+)"', chart.text).group(1))
    assert src.startswith(f"{app.url}/launch?")
    launch_params = {k: v[0] for k, v in parse_qs(urlsplit(src).query).items()}
    iss, launch = launch_params["iss"], launch_params["launch"]
    assert iss == f"{ehr.url}/fhir"

    # Discovery.
    config = http.get(
        f"{iss}/.well-known/smart-configuration",
        headers={"Accept": "application/json"},
        timeout=TIMEOUT,
    ).json()
    assert "S256" in config["code_challenge_methods_supported"]

    # Authorize with PKCE S256, by hand.
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode()
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
        .rstrip(b"=")
        .decode()
    )
    state = secrets.token_urlsafe(24)
    redirect_uri = f"{app.url}/callback"
    authorize = http.get(
        config["authorization_endpoint"],
        params={
            "response_type": "code",
            "client_id": "smartapp",
            "redirect_uri": redirect_uri,
            "launch": launch,
            "scope": "launch openid fhirUser patient/Patient.rs "
            "patient/Observation.rs patient/Condition.rs patient/DocumentReference.crus "
            "patient/Provenance.c offline_access",
            "state": state,
            "aud": iss,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "nonce": secrets.token_urlsafe(16),
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert authorize.status_code == 302
    location = authorize.headers["Location"]
    assert location.startswith(redirect_uri)
    callback = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert callback["state"] == state

    token_response = http.post(
        config["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": callback["code"],
            "redirect_uri": redirect_uri,
            "client_id": "smartapp",
            "code_verifier": verifier,
        },
        timeout=TIMEOUT,
    )
    assert token_response.status_code == 200, token_response.text
    assert token_response.headers["Cache-Control"] == "no-store"
    token = token_response.json()
    assert token["patient"] == "pt-01"
    assert token["need_patient_banner"] is False
    auth = {"Authorization": f"Bearer {token['access_token']}", "Accept": "application/fhir+json"}

    patient = http.get(f"{iss}/Patient/{token['patient']}", headers=auth, timeout=TIMEOUT)
    assert patient.status_code == 200
    assert patient.headers["Content-Type"].startswith("application/fhir+json")

    batch = http.post(
        iss,
        headers={**auth, "Content-Type": "application/fhir+json"},
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": "Observation?patient=pt-01&_count=200"}},
                {"request": {"method": "GET", "url": "Condition?patient=pt-01"}},
            ],
        },
        timeout=TIMEOUT,
    ).json()
    assert [e["response"]["status"] for e in batch["entry"]] == ["200 OK", "200 OK"]
    observations = batch["entry"][0]["resource"]
    assert observations["total"] == len(observations["entry"])

    # Paging with the same token over HTTP.
    first = http.get(
        f"{iss}/Observation", params={"patient": "pt-01"}, headers=auth, timeout=TIMEOUT
    ).json()
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    assert nxt.startswith(iss)
    assert http.get(nxt, headers=auth, timeout=TIMEOUT).status_code == 200

    # Write a note back in one transaction; it lands in the store and on the chart.
    text = "Note written over HTTP by a hand-made client."
    document_urn = f"urn:uuid:{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}"
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": document_urn,
                "request": {"method": "POST", "url": "DocumentReference"},
                "resource": {
                    "resourceType": "DocumentReference",
                    "status": "current",
                    "docStatus": "preliminary",
                    "subject": {"reference": "Patient/pt-01"},
                    "content": [
                        {
                            "attachment": {
                                "contentType": "text/plain",
                                "data": base64.b64encode(text.encode()).decode(),
                            }
                        }
                    ],
                },
            },
            {
                "request": {"method": "POST", "url": "Provenance"},
                "resource": {
                    "resourceType": "Provenance",
                    "target": [{"reference": document_urn}],
                    "recorded": "2026-10-20T10:00:00Z",
                    "agent": [{"who": {"reference": "Practitioner/dr-ada-lovelace"}}],
                },
            },
        ],
    }
    written = http.post(
        iss,
        headers={**auth, "Content-Type": "application/fhir+json"},
        json=transaction,
        timeout=TIMEOUT,
    )
    assert written.status_code == 200, written.text
    stored = http.get(
        f"{ehr.url}/_sandbox/resources/DocumentReference",
        params={"patient": "pt-01"},
        timeout=TIMEOUT,
    ).json()
    assert any(
        base64.b64decode(d["content"][0]["attachment"]["data"]).decode() == text for d in stored
    )
    assert text in http.get(f"{ehr.url}/patients/pt-01", timeout=TIMEOUT).text

    stats = http.get(f"{ehr.url}/_sandbox/stats", timeout=TIMEOUT).json()
    assert stats["kinds"]["token"] == 1
    assert stats["kinds"]["batch"] == 1
    assert stats["kinds"]["transaction"] == 1


def test_faults_and_latency_over_http(sandbox):
    ehr, _ = sandbox
    http = requests.Session()
    assert http.post(f"{ehr.url}/_sandbox/latency", json={"ms": 5}, timeout=TIMEOUT).json() == {
        "ms": 5
    }
    http.post(
        f"{ehr.url}/_sandbox/faults",
        json={"fail_next": 1, "status": 503, "retry_after": 2},
        timeout=TIMEOUT,
    )
    failed = http.get(f"{ehr.url}/fhir/metadata", timeout=TIMEOUT)
    assert failed.status_code == 503
    assert failed.headers["Retry-After"] == "2"
    assert http.get(f"{ehr.url}/fhir/metadata", timeout=TIMEOUT).status_code == 200


def test_background_server_stops_and_frees_its_port():
    def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = BackgroundServer("127.0.0.1", 0)
    server.set_app(hello)
    with server:
        assert requests.get(server.url, timeout=TIMEOUT).text == "ok"
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=TIMEOUT)


def test_private_key_jwt_client_keys_are_fetched_from_its_jwks_uri(tmp_path: Path):
    """A confidential-asymmetric client registered with only a jwks_uri, as launch.json has."""
    key = RSAKey.generate_key(2048, private=True)
    public = {**key.as_dict(private=False), "kid": key.thumbprint(), "alg": "RS384"}

    def app_with_jwks(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/.well-known/jwks.json":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"keys": [public]}).encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not here"]

    ehr_server = BackgroundServer("127.0.0.1", 0, public_host="localhost")
    app_server = BackgroundServer("127.0.0.1", 0, app=app_with_jwks)
    manifest = json.loads((REPO_ROOT / "launch.json").read_text(encoding="utf-8"))
    manifest["token_endpoint_auth_method"] = "private_key_jwt"
    ehr_app = create_ehr_app(
        data_dir=tmp_path / "ehr",
        ehr_base_url=ehr_server.url,
        app_base_url=app_server.url,
        manifest=manifest,
        population_size=2,
    )
    ehr_server.set_app(ehr_app)
    with ehr_server, app_server:
        http = requests.Session()
        launch = http.post(
            f"{ehr_server.url}/_sandbox/launch", json={"patient": "pt-01"}, timeout=TIMEOUT
        ).json()["launch"]
        verifier = base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"=").decode()
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
            .rstrip(b"=")
            .decode()
        )
        redirect_uri = f"{app_server.url}/callback"
        authorize = http.get(
            f"{ehr_server.url}/auth/authorize",
            params={
                "response_type": "code",
                "client_id": "smartapp",
                "redirect_uri": redirect_uri,
                "launch": launch,
                "scope": "launch patient/Patient.rs",
                "state": "s" * 24,
                "aud": f"{ehr_server.url}/fhir",
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        code = parse_qs(urlsplit(authorize.headers["Location"]).query)["code"][0]
        token_url = f"{ehr_server.url}/auth/token"
        now = int(time.time())
        assertion = jwt.encode(
            {"alg": "RS384", "kid": key.thumbprint(), "typ": "JWT"},
            {
                "iss": "smartapp",
                "sub": "smartapp",
                "aud": token_url,
                "exp": now + 240,
                "jti": secrets.token_urlsafe(12),
            },
            key,
            algorithms=["RS384"],
        )
        response = http.post(
            token_url,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        assert response.json()["patient"] == "pt-01"
    ehr_app.extensions["smartapp.sandbox"].store.close()
