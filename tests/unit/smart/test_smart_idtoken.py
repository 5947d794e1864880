"""Unit: id_token validation against the server's JWKS, and fhirUser normalisation."""

from __future__ import annotations

import time

import pytest
import requests
from joserfc.jwk import KeySet, RSAKey
from smart_fakes import CLIENT_ID, ISS, JWKS, FakeEHR

from smartapp.identity import normalize_fhir_user
from smartapp.smart.idtoken import IDTokenInvalid, JWKSCache, validate_id_token

NONCE = "nonce-for-this-sign-in"


@pytest.fixture
def fake(rsps, ehr_key):
    ehr = FakeEHR(rsps, ehr_key)
    ehr.serve_jwks()
    return ehr


def _validate(token, *, nonce=NONCE, jwks=None, **kwargs):
    return validate_id_token(
        token,
        issuer=kwargs.pop("issuer", ISS),
        client_id=kwargs.pop("client_id", CLIENT_ID),
        nonce=nonce,
        jwks_uri=JWKS,
        jwks=jwks or JWKSCache(),
        http=requests.Session(),
        timeout=2,
        **kwargs,
    )


def test_good_token_gives_sub_and_fhir_user(fake):
    claims = _validate(fake.id_token(nonce=NONCE))
    assert claims.sub == "user-789"
    assert claims.fhir_user == claims.fhir_user_raw == "Practitioner/prac-1"


def test_absolute_fhir_user_is_normalised_and_kept_as_given(fake):
    raw = "https://ehr.example.org/api/FHIR/R4/Practitioner/eM5CWtq15N0WJeuCet5bJlQ3"
    claims = _validate(fake.id_token(nonce=NONCE, fhirUser=raw))
    assert claims.fhir_user_raw == raw
    assert claims.fhir_user == "Practitioner/eM5CWtq15N0WJeuCet5bJlQ3"


def test_bad_signature(fake, other_key):
    # Signed by another key that claims the server's kid.
    with pytest.raises(IDTokenInvalid, match="invalid signature"):
        _validate(fake.id_token(key=other_key, nonce=NONCE))


def test_wrong_audience(fake):
    with pytest.raises(IDTokenInvalid, match="different app"):
        _validate(fake.id_token(nonce=NONCE, aud="another-app"))


def test_audience_list_containing_the_client_is_accepted(fake):
    claims = _validate(fake.id_token(nonce=NONCE, aud=[CLIENT_ID, "x"], azp=CLIENT_ID))
    assert claims.sub


def test_expired(fake):
    past = int(time.time()) - 3600
    with pytest.raises(IDTokenInvalid, match="expired"):
        _validate(fake.id_token(nonce=NONCE, iat=past - 300, exp=past))


def test_small_clock_skew_is_tolerated(fake):
    now = int(time.time())
    assert _validate(fake.id_token(nonce=NONCE, exp=now - 10)).sub


def test_wrong_nonce(fake):
    with pytest.raises(IDTokenInvalid, match="does not belong to this sign-in"):
        _validate(fake.id_token(nonce="someone-elses"))


def test_missing_nonce_when_one_was_sent(fake):
    with pytest.raises(IDTokenInvalid, match="does not belong"):
        _validate(fake.id_token())


def test_wrong_issuer(fake):
    with pytest.raises(IDTokenInvalid, match="different server"):
        _validate(fake.id_token(nonce=NONCE, iss="http://evil.test/fhir"))


def test_hs256_token_is_refused_before_any_key_lookup(fake, rsps):
    from joserfc import jwt
    from joserfc.jwk import OctKey

    forged = jwt.encode(
        {"alg": "HS256"},
        {"iss": ISS, "aud": CLIENT_ID, "sub": "x", "exp": int(time.time()) + 60, "nonce": NONCE},
        OctKey.import_key(b"k" * 32),
    )
    with pytest.raises(IDTokenInvalid, match="algorithm"):
        _validate(forged)
    assert len(rsps.calls) == 0


def test_unknown_kid_refetches_the_jwks_once(rsps, ehr_key):
    rotated = RSAKey.generate_key(2048, parameters={"kid": "ehr-key-2"})
    ehr = FakeEHR(rsps, rotated)
    # First answer: the old set; second: the rotated one.
    rsps.get(JWKS, json=KeySet([ehr_key]).as_dict(private=False))
    rsps.get(JWKS, json=KeySet([rotated]).as_dict(private=False))
    cache = JWKSCache()
    cache.get(JWKS, http=requests.Session(), timeout=2)  # warm with the old keys
    claims = _validate(ehr.id_token(nonce=NONCE), jwks=cache)
    assert claims.sub
    assert len(rsps.calls) == 2


def test_key_not_published_even_after_refetch(rsps, ehr_key):
    stranger = RSAKey.generate_key(2048, parameters={"kid": "not-published"})
    rsps.get(JWKS, json=KeySet([ehr_key]).as_dict(private=False))
    ehr = FakeEHR(rsps, stranger)
    with pytest.raises(IDTokenInvalid, match="does not publish"):
        _validate(ehr.id_token(nonce=NONCE))
    assert len(rsps.calls) == 2  # first fetch and exactly one refetch


def test_messages_never_quote_the_token(fake):
    token = fake.id_token(nonce="x")
    with pytest.raises(IDTokenInvalid) as info:
        _validate(token)
    assert token not in info.value.message
    assert token.split(".")[1] not in info.value.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Practitioner/123", "Practitioner/123"),
        ("https://ehr/fhir/Practitioner/123", "Practitioner/123"),
        ("https://ehr/fhir/Practitioner/123/_history/4", "Practitioner/123"),
        ("http://ehr/fhir/PractitionerRole/r-1/", "PractitionerRole/r-1"),
        ("Patient/p.1", "Patient/p.1"),
        ("Observation/1", None),
        ("Practitioner", None),
        ("junk/Practitioner/1", None),
    ],
)
def test_normalize_fhir_user(value, expected):
    assert normalize_fhir_user(value) == expected
