"""Unit: the fast check vouches only for what R4B accepts (compared with R4B itself).

The sandbox population and the fixtures are the data; mutations of them (a value
replaced by a wrong one, an element removed, an unknown or duplicate key added) are what
the check must not vouch for unless R4B accepts them too.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from smartapp.fhir import fastcheck, parsing
from smartapp.sandbox.population import all_resources, generate_population

from .fakes import chart_fixtures, fixture


@cache
def _population() -> tuple[dict[str, Any], ...]:
    return tuple(all_resources(generate_population(count=6)))


def _r4b_accepts(resource: Any) -> bool:
    return parsing._r4b_error(resource) is None


def test_it_vouches_for_every_resource_of_the_population_and_the_fixtures():
    resources = [*_population(), *chart_fixtures()]
    refused = [r["id"] for r in resources if fastcheck.certainly_valid(r) is None]
    assert refused == []
    assert all(_r4b_accepts(r) for r in resources)


def test_it_does_not_vouch_for_the_invalid_fixtures():
    for name in (
        "invalid/observation-text-value.json",
        "invalid/condition-no-subject.json",
        "invalid/medicationrequest-unknown-field.json",
    ):
        assert fastcheck.certainly_valid(fixture(name)) is None, name


_WRONG: tuple[Any, ...] = (
    None,
    "",
    " ",
    "a  b",
    0,
    -1,
    1.5,
    2**31,
    10**19,
    float("nan"),
    True,
    [],
    {},
    [None],
    ["x"],
    [{}],
    {"x": 1},
    "2020-13-01",
    "2020-02-30",
    "2020-01-01T10:00:00",
    "2020-01-01T25:00:00Z",
    "0000",
    "10:00:60",
    "http://x y",
    "a\ud800",
    {"text": "a"},
    [{"url": "http://e"}],
    [{"url": "http://e", "valueString": "a", "valueBoolean": True}],
    "QUJD=",
    "2020-01-01T10:00:00.1234567Z",
    "\u00a0",
)
_ADDED_KEYS = ("bogus", "valueString", "valueBoolean", "modifierExtension", "_status", "id")


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    children = (
        value.items() if isinstance(value, dict) else enumerate(value)
        if isinstance(value, list) else ()
    )  # fmt: skip
    for key, child in children:
        yield (*prefix, key)
        yield from _paths(child, (*prefix, key))


def _mutants(seed: int, count: int) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    population = [*_population(), *chart_fixtures()]
    for _ in range(count):
        resource = copy.deepcopy(rng.choice(population))
        path = rng.choice(list(_paths(resource)))
        parent: Any = resource
        for step in path[:-1]:
            parent = parent[step]
        how = rng.choice(("replace", "replace", "remove", "add"))
        wrong = copy.deepcopy(rng.choice(_WRONG))
        if how == "remove":
            del parent[path[-1]]
        elif how == "add" and isinstance(parent, dict):
            parent[rng.choice(_ADDED_KEYS)] = wrong
        else:
            parent[path[-1]] = wrong
        yield resource


@pytest.mark.parametrize(
    "name", ["patient.json", "observation-bp.json", "medicationrequest-contained.json"]
)
def test_every_wrong_value_anywhere_is_vouched_for_only_if_r4b_accepts_it(name):
    original = fixture(name)
    for path in list(_paths(original)):
        for wrong in _WRONG:
            mutant = copy.deepcopy(original)
            parent: Any = mutant
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = copy.deepcopy(wrong)
            if fastcheck.certainly_valid(mutant) is not None:
                assert _r4b_accepts(mutant), (path, wrong)


@pytest.mark.parametrize("seed", [1, 2])
def test_what_it_vouches_for_among_mutants_r4b_accepts_with_the_same_modifiers(seed):
    vouched = 0
    for mutant in _mutants(seed, 600):
        modifiers = fastcheck.certainly_valid(mutant)
        if modifiers is None:
            continue
        vouched += 1
        assert _r4b_accepts(mutant), (mutant.get("resourceType"), parsing._r4b_error(mutant))
        assert sorted(modifiers) == sorted(parsing.unsupported_modifiers(mutant))
    # The mutants are not all invalid: some are still vouched for (the check is not "never").
    assert vouched > 0


def test_it_defers_what_r4b_coerces_or_special_cases():
    observation = fixture("observation-hba1c.json")
    for changes in (
        {"valueQuantity": {"value": "7.2"}},  # R4B coerces a string to a decimal
        {"issued": None},  # R4B reads a null as absent
        {"category": []},
        {"effectiveDateTime": "2016-12-31T23:59:60Z"},  # a leap second
    ):
        assert fastcheck.certainly_valid({**observation, **changes}) is None, changes


def test_bad_base64_is_left_to_r4b():
    document = fixture("documentreference-with-data.json")
    document["content"][0]["attachment"]["data"] = "not base64!"
    assert fastcheck.certainly_valid(document) is None
    assert parsing.validation_error(document) is not None


def test_hostile_values_are_never_vouched_for():
    observation = fixture("observation-hba1c.json")
    deep: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(40):
        deep = {"url": "http://example.org/nest", "extension": [deep]}
    for changes in (
        {"valueQuantity": {"value": 10**18, "unit": "%"}},
        {"valueQuantity": {"value": float("inf"), "unit": "%"}},
        {"code": {"text": "x" * (fastcheck.MAX_STRING_CHARS + 1)}},
        {"code": {"text": "a\udfff"}},
        {"extension": [deep]},
    ):
        assert fastcheck.certainly_valid({**observation, **changes}) is None
        assert parsing.rejection({**observation, **changes}) is not None


def test_modifier_extensions_are_reported_with_their_urls():
    observation = fixture("observation-hba1c.json")
    observation["component"] = [
        {
            "code": {"text": "part"},
            "valueString": "a",
            "modifierExtension": [{"url": "http://example.org/only-if", "valueBoolean": True}],
        }
    ]
    assert fastcheck.certainly_valid(observation) == ["http://example.org/only-if"]
    assert parsing.rejection(observation) == (
        "unsupported_modifier",
        "modifierExtension 'http://example.org/only-if'",
    )
