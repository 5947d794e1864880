"""Unit: the sandbox's EHR imitations do what each switch says, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sandbox_helpers import SmartClient, bearer, make_ehr

from smartapp.sandbox.imitations import IMITATIONS, imitation


def _ehr(tmp_path: Path, populated_dir: Path, name: str) -> Flask:
    return make_ehr(tmp_path / f"ehr-{name}", populated_dir, imitate=name)


@pytest.fixture
def epic(tmp_path: Path, populated_dir: Path) -> Iterator[Flask]:
    app = _ehr(tmp_path, populated_dir, "epic")
    yield app
    app.extensions["smartapp.sandbox"].store.close()


@pytest.fixture
def athena(tmp_path: Path, populated_dir: Path) -> Iterator[Flask]:
    app = _ehr(tmp_path, populated_dir, "athena")
    yield app
    app.extensions["smartapp.sandbox"].store.close()


def _observation_sort_declared(statement: dict) -> bool:
    [obs] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Observation"]
    return any(p["name"] == "_sort" for p in obs["searchParam"])


def test_epic_imitation_refuses_observation_searches_without_category(epic: Flask) -> None:
    client = epic.test_client()
    token = bearer(SmartClient(client).token("pt-01"))
    plain = client.get("/fhir/Observation?patient=pt-01", headers=token)
    assert plain.status_code == 400
    assert "category" in plain.get_json()["issue"][0]["diagnostics"]
    ok = client.get("/fhir/Observation?patient=pt-01&category=vital-signs", headers=token)
    assert ok.status_code == 200
    statement = client.get("/fhir/metadata").get_json()
    assert statement["software"]["name"].startswith("Epic")
    assert _observation_sort_declared(statement)


def test_athena_imitation_neither_declares_nor_applies_sort(athena: Flask) -> None:
    client = athena.test_client()
    token = bearer(SmartClient(client).token("pt-01"))
    assert not _observation_sort_declared(client.get("/fhir/metadata").get_json())
    page = client.get(
        "/fhir/Observation?patient=pt-01&category=vital-signs&_sort=-date&_count=5", headers=token
    ).get_json()
    [self_link] = [link["url"] for link in page["link"] if link["relation"] == "self"]
    assert "_sort" not in self_link


def _refresh(client, refresh_token: str):
    return client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": "smartapp",
        },
    )


def test_oracle_imitation_short_v1_tokens_and_a_refresh_token_that_does_not_rotate(
    tmp_path: Path, populated_dir: Path
) -> None:
    app = _ehr(tmp_path, populated_dir, "oracle-health")
    try:
        client = app.test_client()
        token = SmartClient(client).token("pt-01")
        assert token["expires_in"] == 570
        granted = token["scope"].split()
        assert "patient/Observation.read" in granted
        assert not [s for s in granted if s.endswith((".rs", ".cruds", ".c", ".cu"))]
        config = client.get("/fhir/.well-known/smart-configuration").get_json()
        assert "permission-v2" not in config["capabilities"]
        for _ in range(2):  # the same refresh token, twice: nothing new comes back
            again = _refresh(client, token["refresh_token"])
            assert again.status_code == 200, again.get_data(as_text=True)
            assert "refresh_token" not in again.get_json()
    finally:
        app.extensions["smartapp.sandbox"].store.close()


def test_generic_sandbox_rotates_refresh_tokens(ehr: Flask) -> None:
    client = ehr.test_client()
    token = SmartClient(client).token("pt-01")
    first = _refresh(client, token["refresh_token"])
    assert first.get_json()["refresh_token"] != token["refresh_token"]
    assert _refresh(client, token["refresh_token"]).status_code == 400  # spent


def test_athena_imitation_lists_no_pkce_methods(athena: Flask) -> None:
    config = athena.test_client().get("/fhir/.well-known/smart-configuration").get_json()
    assert "code_challenge_methods_supported" not in config


def test_an_unknown_imitation_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of generic, epic"):
        imitation("allscripts")
    assert set(IMITATIONS) == {"generic", "epic", "oracle-health", "athena", "meditech"}
