"""Unit: the app's JSON answers and JSON columns, written and read by orjson, say exactly
what Flask's and the standard library's would."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from flask import Flask

from smartapp import fastjson
from smartapp.jsonbody import LimitedJSONProvider


@dataclass
class _Point:
    x: int


VALUES = [
    {"b": 1, "a": [1.5, "café – ok", None, True]},
    {"when": datetime(2026, 12, 3, 20, 0, tzinfo=UTC), "day": date(2026, 12, 3)},
    {"point": _Point(x=2), "amount": Decimal("1.10")},
    {"big": 2**70},  # beyond 64 bits: json's way
    {1: "a non-string key"},
]


@pytest.fixture
def flask_app() -> Flask:
    app = Flask(__name__)
    app.json = LimitedJSONProvider(app)
    return app


@pytest.mark.parametrize("value", VALUES)
def test_an_answer_holds_what_flasks_own_would(flask_app: Flask, value):
    with flask_app.app_context():
        ours = flask_app.json.response(value)
        theirs = super(LimitedJSONProvider, flask_app.json).response(value)
    assert ours.mimetype == "application/json"
    assert json.loads(ours.get_data()) == json.loads(theirs.get_data())


def test_an_answer_is_compact_with_sorted_keys(flask_app: Flask):
    with flask_app.app_context():
        body = flask_app.json.response({"b": 1, "a": {"d": 2, "c": 3}}).get_data()
    assert body == b'{"a":{"c":3,"d":2},"b":1}\n'


def test_what_orjson_cannot_write_as_json_would_is_left_to_json():
    assert fastjson.dumps_sorted({"big": 2**70}, default=str) is None
    assert fastjson.dumps_sorted({1: "x"}, default=str) is None
