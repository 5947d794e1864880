"""Unit: the app's signing key, its public JWKS and the private_key_jwt client assertion."""

from __future__ import annotations

import json
import time

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from smartapp.config import ConfigError
from smartapp.smart.keys import client_assertion, load_signing_key, public_jwks, public_keyset

TOKEN_URL = "http://ehr.test/auth/token"


@pytest.fixture(scope="module")
def rsa_pem(tmp_path_factory):
    path = tmp_path_factory.mktemp("keys") / "app.pem"
    path.write_bytes(RSAKey.generate_key(2048).as_pem(private=True))
    return path


def test_rsa_pem_signs_rs384_with_a_kid(rsa_pem):
    key = load_signing_key(rsa_pem)
    assert key.alg == "RS384"
    assert key.kid


def test_ec_p384_jwk_signs_es384_and_keeps_its_kid(tmp_path):
    jwk = ECKey.generate_key("P-384").as_dict(private=True)
    jwk["kid"] = "app-key-2026"
    path = tmp_path / "app.jwk.json"
    path.write_text(json.dumps(jwk))
    key = load_signing_key(path)
    assert (key.alg, key.kid) == ("ES384", "app-key-2026")


def test_public_jwks_has_no_private_members(rsa_pem):
    document = public_jwks(load_signing_key(rsa_pem))
    (jwk,) = document["keys"]
    assert {"d", "p", "q", "dp", "dq", "qi"}.isdisjoint(jwk)
    assert jwk["alg"] == "RS384" and jwk["use"] == "sig" and jwk["kid"]


def test_no_key_gives_an_empty_set():
    assert public_jwks(None) == {"keys": []}


def test_client_assertion_claims(rsa_pem):
    key = load_signing_key(rsa_pem)
    before = int(time.time())
    first = client_assertion(key, client_id="smartapp", token_endpoint=TOKEN_URL)
    second = client_assertion(key, client_id="smartapp", token_endpoint=TOKEN_URL)
    token = jwt.decode(first, public_keyset(key), algorithms=["RS384"])
    claims = token.claims
    assert token.header["alg"] == "RS384"
    assert token.header["kid"] == key.kid
    assert claims["iss"] == claims["sub"] == "smartapp"
    assert claims["aud"] == TOKEN_URL
    assert before <= claims["iat"] and 0 < claims["exp"] - claims["iat"] <= 300
    other = jwt.decode(second, public_keyset(key), algorithms=["RS384"]).claims
    assert claims["jti"] != other["jti"]


def test_assertion_lifetime_over_five_minutes_is_refused(rsa_pem):
    with pytest.raises(ValueError, match="five minutes"):
        client_assertion(
            load_signing_key(rsa_pem), client_id="a", token_endpoint=TOKEN_URL, lifetime=301
        )


def test_unreadable_key_names_the_variable(tmp_path):
    path = tmp_path / "junk.pem"
    path.write_text("not a key")
    with pytest.raises(ConfigError, match="SMARTAPP_PRIVATE_KEY"):
        load_signing_key(path)


def test_wrong_curve_is_refused(tmp_path):
    path = tmp_path / "p256.json"
    path.write_text(json.dumps(ECKey.generate_key("P-256").as_dict(private=True)))
    with pytest.raises(ConfigError, match="P-384"):
        load_signing_key(path)


def test_public_key_alone_is_refused(tmp_path):
    path = tmp_path / "public.pem"
    path.write_bytes(RSAKey.generate_key(2048).as_pem(private=False))
    with pytest.raises(ConfigError, match="private key"):
        load_signing_key(path)
