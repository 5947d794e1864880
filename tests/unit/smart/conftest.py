"""Fixtures for the SMART unit tests: the fake EHR on `responses` and a launch helper."""

from __future__ import annotations

import pytest
import responses
from joserfc.jwk import RSAKey
from smart_fakes import FakeEHR, LaunchActions


@pytest.fixture(scope="session")
def ehr_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "ehr-key-1"})


@pytest.fixture(scope="session")
def other_key() -> RSAKey:
    """A different key that claims the same kid: signatures made with it must fail."""
    return RSAKey.generate_key(2048, parameters={"kid": "ehr-key-1"})


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def ehr(rsps, ehr_key) -> FakeEHR:
    fake = FakeEHR(rsps, ehr_key)
    fake.serve_discovery()
    fake.serve_jwks()
    fake.serve_token_endpoint()
    return fake


@pytest.fixture
def launcher(client, ehr) -> LaunchActions:
    return LaunchActions(client, ehr)
