"""Unit: the vendor-quirks profiles (data), their detection, what they change in a read."""

from __future__ import annotations

import random
from urllib.parse import parse_qs

import pytest
import responses

from smartapp.fhir.chart import load_snapshot
from smartapp.fhir.client import FHIRClient, clear_capabilities_cache
from smartapp.quirks import KEYS, QuirksError, catalog, parse_profiles
from tests.unit.fhir.fakes import BASE, FakeFHIRServer, FakeTokens, chart_fixtures

FAMILIES = {"generic", "epic", "oracle-health", "athena", "meditech"}


def test_every_family_has_a_profile_and_every_quirk_cites_its_documentation():
    profiles = catalog().profiles
    assert set(profiles) == FAMILIES
    for profile in profiles.values():
        assert profile.quirks, profile.id
        for quirk in profile.quirks:
            assert quirk.key in KEYS
            assert quirk.cite.startswith("https://")
            assert quirk.says and quirk.app


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ({"software": {"name": "Epic"}, "publisher": "Epic Systems Corporation"}, "epic"),
        ({"publisher": "Cerner Corporation"}, "oracle-health"),
        ({"software": {"name": "Oracle Health Millennium"}}, "oracle-health"),
        ({"software": {"name": "athenaOne FHIR"}}, "athena"),
        ({"software": {"name": "MEDITECH Expanse"}}, "meditech"),
        ({"software": {"name": "HAPI FHIR Server"}}, "generic"),
        ({}, "generic"),
        (None, "generic"),
    ],
)
def test_profile_is_detected_from_software_or_publisher(statement, expected):
    assert catalog().detect(statement).id == expected


def test_site_file_choice_wins_over_detection():
    chosen = catalog().choose(configured="athena", capabilities={"publisher": "Epic"})
    assert (chosen.id, chosen.chosen_by) == ("athena", "site file")
    with pytest.raises(QuirksError, match="unknown EHR quirks profile 'nope'"):
        catalog().choose(configured="nope", capabilities=None)


def _one(quirk: dict) -> dict:
    return {"profile": [{"id": "generic", "title": "Generic", "quirk": [quirk]}]}


GOOD = {"key": "sort", "value": "never", "says": "s", "app": "a", "cite": "https://x.example/doc"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key": "sorting"}, "unknown key 'sorting'"),
        ({"value": "sometimes"}, "sort must be one of"),
        ({"cite": ""}, "cite is missing"),
        ({"cite": "http://x.example"}, "https URL"),
        ({"says": " "}, "says is missing"),
    ],
)
def test_a_malformed_profile_file_is_refused_naming_the_entry(change, message):
    parse_profiles(_one(GOOD))
    with pytest.raises(QuirksError, match=message):
        parse_profiles(_one({**GOOD, **change}))


# -- what a profile changes in the chart read ------------------------------------------


@pytest.fixture
def rsps():
    clear_capabilities_cache()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock
    clear_capabilities_cache()


def _load(rsps, statement_changes=None, **kwargs):
    server = FakeFHIRServer(chart_fixtures()).add_to(rsps)
    server.capability.update(statement_changes or {})
    client = FHIRClient(BASE, tokens=FakeTokens(), sleep=lambda _: None, rng=random.Random(1))
    snapshot = load_snapshot(
        client, patient_id="pat-1", encounter_id="enc-1", readable_types=None, **kwargs
    )
    searches = {u.split("?")[0]: parse_qs(u.split("?")[1]) for u in server.batches[0] if "?" in u}
    return snapshot, searches


def test_athena_profile_reads_medications_without_include_even_when_declared(rsps):
    _, generic = _load(rsps)
    assert generic["MedicationRequest"]["_include"] == ["MedicationRequest:medication"]
    clear_capabilities_cache()
    snapshot, athena = _load(rsps, {"software": {"name": "athenaOne"}})
    assert "_include" not in athena["MedicationRequest"]
    assert {m["id"] for m in snapshot.of_type("Medication")} >= {"med-rel", "med-abs"}


def test_a_required_search_parameter_the_app_would_not_send_is_reported_not_asked(rsps):
    from dataclasses import replace

    from smartapp.quirks import Quirk

    base = catalog().get("generic")
    needs = Quirk(
        key="required_search",
        value={"Procedure": ["date"]},
        says="s",
        app="a",
        cite="https://x.example",
    )
    snapshot, searches = _load(rsps, quirks=replace(base, quirks=(*base.quirks, needs)))
    assert "Procedure" not in searches
    [problem] = [p for p in snapshot.problems if p.resource_type == "Procedure"]
    assert problem.detail == "Procedure search needs date on this EHR; not sent"


def test_the_site_files_profile_replaces_detection_in_the_chart_read(rsps):
    _, detected = _load(rsps)  # a generic statement: _include used
    assert "_include" in detected["MedicationRequest"]
    clear_capabilities_cache()
    _, configured = _load(rsps, configured_quirks="athena")
    assert "_include" not in configured["MedicationRequest"]
