"""Unit: PKCE verifier and S256 challenge (RFC 7636)."""

from __future__ import annotations

import re

import pytest

from smartapp.smart.pkce import make_verifier, s256_challenge


def test_s256_challenge_of_rfc7636_appendix_b_verifier():
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifier_is_43_to_128_unreserved_characters_and_fresh():
    verifiers = {make_verifier() for _ in range(20)}
    assert len(verifiers) == 20
    for verifier in verifiers:
        assert re.fullmatch(r"[A-Za-z0-9\-._~]{43,128}", verifier)


@pytest.mark.parametrize("bad", ["short", "x" * 129, "has space" + "x" * 40])
def test_challenge_refuses_verifier_outside_rfc_range(bad):
    with pytest.raises(ValueError, match="43-128"):
        s256_challenge(bad)
