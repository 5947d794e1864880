"""Unit: a FHIR response's JSON is parsed fast, and exactly as the standard library does."""

from __future__ import annotations

import json

import pytest

from smartapp.fhir.client import decode_json

SAME = [
    b'{"resourceType": "Bundle", "entry": [{"resource": {"valueQuantity": {"value": 5.6}}}]}',
    b'{"text": "caf\\u00e9 \\u2013 ok", "n": 12345678901234567890123}',  # beyond 64 bits
    '{"t": "café – ok"}'.encode(),  # UTF-8 as it comes
    b'{"value": NaN}',  # not JSON (RFC 8259), but what the app accepted before
    b'{"a": 1, "a": 2}',  # the last of a repeated key, as json gives it
    '\ufeff{"resourceType": "Patient"}'.encode(),  # a byte-order mark
    b'{"s": "\\ud800"}',  # a lone surrogate: orjson refuses it, json reads it
    '{"resourceType": "Patient"}',  # text as well as bytes (the snapshot cache's)
]


@pytest.mark.parametrize("content", SAME)
def test_what_is_read_is_what_json_loads_reads(content: bytes | str):
    assert repr(decode_json(content)) == repr(json.loads(content))


@pytest.mark.parametrize("content", [b"", b"<html>", b'{"a": ', b"[" * 100_000])
def test_what_json_refuses_is_refused_with_its_error(content: bytes):
    with pytest.raises((ValueError, RecursionError)) as expected:
        json.loads(content)
    with pytest.raises(expected.type):
        decode_json(content)


def test_a_decimal_beyond_64_bits_keeps_every_digit():
    value = decode_json(b'{"valueQuantity": {"value": 123456789012345678901234567890}}')
    assert value["valueQuantity"]["value"] == 123456789012345678901234567890
