"""Unit: load_snapshot against a fake FHIR server (`responses`), with and without batch."""

from __future__ import annotations

import random
from datetime import date
from urllib.parse import parse_qs

import pytest
import responses

from smartapp.errors import FatalUpstreamError, RelaunchRequired, TemporaryUpstreamError
from smartapp.fhir.chart import load_snapshot
from smartapp.fhir.client import FHIRClient, clear_capabilities_cache
from smartapp.fhir.readers import medication_name, medication_of
from smartapp.fhir.snapshot import ChartSnapshot

from .fakes import BASE, FakeFHIRServer, FakeTokens, chart_fixtures, fixture, vital_observations

NO_BATCH = "capabilitystatement-no-batch.json"


@pytest.fixture(autouse=True)
def _fresh_capabilities():
    clear_capabilities_cache()
    yield
    clear_capabilities_cache()


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def client_for(tokens: FakeTokens | None = None) -> FHIRClient:
    return FHIRClient(
        BASE, tokens=tokens or FakeTokens(), sleep=lambda _: None, rng=random.Random(1)
    )


def serve(rsps, resources=None, **kwargs) -> FakeFHIRServer:
    return FakeFHIRServer(chart_fixtures() if resources is None else resources, **kwargs).add_to(
        rsps
    )


def load(client: FHIRClient | None = None, **kwargs) -> ChartSnapshot:
    options = {"patient_id": "pat-1", "encounter_id": "enc-1", "readable_types": None}
    options.update(kwargs)
    return load_snapshot(client or client_for(), **options)


def ids(snapshot: ChartSnapshot) -> dict[str, set[str]]:
    return {t: {r["id"] for r in snapshot.of_type(t)} for t in snapshot.resources}


def codes(snapshot: ChartSnapshot) -> set[str]:
    return {p.code for p in snapshot.problems}


EXPECTED_IDS = {
    "Condition": {"cond-dm", "cond-min", "cond-resolved"},
    "Observation": {"obs-bp", "obs-a1c", "obs-culture", "obs-min"},
    "MedicationRequest": {"mr-contained", "mr-relative", "mr-absolute", "mr-included", "mr-cc"},
    "MedicationStatement": {"ms-omeprazole"},
    "Medication": {"med-rel", "med-abs", "med-inc"},
    "AllergyIntolerance": {"allergy-1"},
    "Procedure": {"proc-1"},
    "Immunization": {"imm-1"},
    "DocumentReference": {"doc-1"},
}


# -- the batch path ------------------------------------------------------------------------


def test_batch_server_gets_the_whole_chart_in_one_batch(rsps):
    server = serve(rsps)
    snapshot = load()

    assert server.http_log == ["GET metadata", "POST [base]"]
    assert snapshot.request_count == 2
    assert snapshot.patient["id"] == "pat-1"
    assert snapshot.encounter is not None and snapshot.encounter["id"] == "enc-1"
    assert ids(snapshot) == EXPECTED_IDS
    assert snapshot.problems == ()
    assert snapshot.not_granted == ()
    batch = server.batches[0]
    assert batch[:2] == ["Patient/pat-1", "Encounter/enc-1"]
    searches = {}
    for url in batch[2:]:
        path, query = url.split("?")
        params = parse_qs(query)
        key = path + "".join(f":{c}" for c in params.get("category", []))
        if path == "MedicationRequest" and params["status"] == ["stopped,completed"]:
            key += ":history"
        searches[key] = params
    assert set(searches) == {
        "Condition",
        "Observation:vital-signs",
        "Observation:laboratory",
        "MedicationRequest",
        "MedicationRequest:history",
        "MedicationStatement",
        "AllergyIntolerance",
        "Procedure",
        "Immunization",
        "DocumentReference",
    }
    assert all(params["patient"] == ["pat-1"] for params in searches.values())
    assert searches["Observation:laboratory"]["_count"] == ["200"]
    # Current orders and drafts (shown as proposed); stopped ones in a search of their own.
    assert searches["MedicationRequest"]["status"] == ["active,on-hold,draft"]
    # This statement does not declare `authoredon`: one page, the window applied here.
    assert "authoredon" not in searches["MedicationRequest:history"]
    # Every statement, whatever its status: the engines decide what is current.
    assert "status" not in searches["MedicationStatement"]
    assert searches["MedicationRequest"]["_include"] == ["MedicationRequest:medication"]
    assert searches["DocumentReference"]["_sort"] == ["-date"]
    assert searches["DocumentReference"]["_count"] == ["10"]
    assert "content" in searches["DocumentReference"]["_elements"][0].split(",")


def test_capabilities_are_not_fetched_again_for_the_next_launch(rsps):
    server = serve(rsps)
    load()
    second = load()
    assert second.request_count == 1
    assert server.http_log == ["GET metadata", "POST [base]", "POST [base]"]


def test_next_pages_of_all_types_come_in_one_follow_up_batch_per_round(rsps):
    conditions = [{**fixture("condition-minimal.json"), "id": f"c-{i}"} for i in range(250)]
    resources = chart_fixtures() + vital_observations(450) + conditions
    server = serve(rsps, resources)

    snapshot = load()

    # 452 vital signs at 200 a page: pages at 0, 200, 400; 253 Conditions: 0, 200.
    assert server.http_log == ["GET metadata", "POST [base]", "POST [base]", "POST [base]"]
    assert snapshot.request_count == 4
    round2, round3 = server.batches[1], server.batches[2]
    assert sorted(url.split("?")[0] for url in round2) == ["Condition", "Observation"]
    assert [url.split("?")[0] for url in round3] == ["Observation"]
    assert len(snapshot.of_type("Observation")) == 454
    assert len(snapshot.of_type("Condition")) == 253
    assert "truncated" not in codes(snapshot)


def test_paging_stops_at_max_pages_and_reports_truncation(rsps):
    serve(rsps, chart_fixtures() + vital_observations(450))
    snapshot = load(max_pages=2)
    assert len(snapshot.of_type("Observation")) == 400 + 2  # + the 2 laboratory results
    [problem] = [p for p in snapshot.problems if p.code == "truncated"]
    assert problem.resource_type == "Observation"
    assert problem.detail == (
        "Observation (vital-signs): read 400 of 452 in 2 page(s); "
        "the rest was not read (max_pages=2); "
        "not read newest first: the latest may be among those not read"
    )
    assert problem.newest_first is False


def _declare_sort(server: FakeFHIRServer) -> None:
    """The statement lists `date` and `_sort` for Observation (as a server that sorts does)."""
    for rest in server.capability["rest"]:
        for resource in rest["resource"]:
            if resource["type"] == "Observation":
                resource["searchParam"] = [
                    {"name": "patient", "type": "reference"},
                    {"name": "date", "type": "date"},
                    {"name": "_sort", "type": "string"},
                ]


def _dated_vitals(count: int) -> list[dict]:
    """`count` heart rates, one a day from 2020-01-01, stored oldest first."""
    from datetime import date, timedelta

    first = date(2020, 1, 1)
    return [
        {**obs, "effectiveDateTime": (first + timedelta(days=i)).isoformat()}
        for i, obs in enumerate(vital_observations(count))
    ]


def test_observations_are_read_newest_first_where_the_server_declares_sort(rsps):
    server = serve(rsps, chart_fixtures() + _dated_vitals(450))
    _declare_sort(server)
    snapshot = load(max_pages=2)
    # Each category newest first, and (read at the same time) from its oldest end.
    firsts = [
        parse_qs(u.split("?")[1])
        for batch in server.batches
        for u in batch
        if u.startswith("Observation?") and "_offset" not in u
    ]
    assert sorted(q["_sort"][0] for q in firsts) == ["-date", "-date", "date", "date"]
    vitals = [o for o in snapshot.of_type("Observation") if o["id"].startswith("hr-")]
    assert len(snapshot.of_type("Observation")) == 400 + 2  # + the 2 laboratory results
    newest = max(o["effectiveDateTime"] for o in vitals)
    assert newest == "2021-03-25"  # day 449: the latest is among those read
    assert min(o["effectiveDateTime"] for o in vitals) >= "2020-02-19"  # day 49: the oldest not
    [problem] = [p for p in snapshot.problems if p.code == "truncated"]
    assert problem.newest_first is True
    assert problem.detail.endswith("read newest first: the oldest were not read")
    assert problem.to_json()["newestFirst"] is True


def test_a_list_of_two_pages_is_read_from_both_ends_in_one_round(rsps):
    server = serve(rsps, chart_fixtures() + _dated_vitals(300))
    _declare_sort(server)
    snapshot = load()
    # One round: the chart's batch and one batch per Observation category, at once.
    assert server.http_log == ["GET metadata", "POST [base]", "POST [base]", "POST [base]"]
    vitals = [o for o in snapshot.of_type("Observation") if o["id"].startswith("hr-")]
    assert len(vitals) == 300 and len({o["id"] for o in vitals}) == 300
    assert "truncated" not in codes(snapshot)
    [pair] = [b for b in server.batches if any("vital-signs" in u for u in b)]
    assert sorted(parse_qs(u.split("?")[1])["_sort"][0] for u in pair) == ["-date", "date"]


def test_both_ends_of_a_long_list_meet_in_the_middle_in_half_the_rounds(rsps):
    server = serve(rsps, chart_fixtures() + _dated_vitals(1000))
    _declare_sort(server)
    snapshot = load()
    vitals = [o for o in snapshot.of_type("Observation") if o["id"].startswith("hr-")]
    assert len({o["id"] for o in vitals}) == 1000
    assert "truncated" not in codes(snapshot)
    # 5 pages of 200: 3 rounds from both ends (2 + 2 + 2 pages, the last two meeting).
    rounds = [b for b in server.batches if any("vital-signs" in u for u in b)]
    assert [len(b) for b in rounds] == [2, 2, 2]


def test_a_list_that_cannot_be_read_whole_is_read_newest_first_only(rsps):
    # 702 at 200 a page do not fit in max_pages=3 from both ends: the newest 600 are read,
    # contiguous, as without both ends; what is missing is the oldest.
    server = serve(rsps, chart_fixtures() + _dated_vitals(700))
    _declare_sort(server)
    snapshot = load(max_pages=3)
    one_end = load(max_pages=3, both_ends=False)
    assert ids(snapshot) == ids(one_end)
    vitals = [o for o in snapshot.of_type("Observation") if o["id"].startswith("hr-")]
    assert min(o["effectiveDateTime"] for o in vitals) == "2020-04-11"  # day 101 of 700
    [problem] = [p for p in snapshot.problems if p.code == "truncated"]
    assert problem.newest_first is True


def test_a_refused_oldest_first_search_leaves_the_newest_first_one_to_read_the_list(rsps):
    server = serve(rsps, chart_fixtures() + _dated_vitals(300))
    _declare_sort(server)
    server.fail_query["_sort=date"] = [400, 400]
    snapshot = load()
    vitals = [o for o in snapshot.of_type("Observation") if o["id"].startswith("hr-")]
    assert len({o["id"] for o in vitals}) == 300
    assert snapshot.problems == ()


def test_observations_are_not_sorted_where_the_statement_does_not_declare_it(rsps):
    server = serve(rsps, chart_fixtures() + _dated_vitals(450))
    load(max_pages=2)
    searches = [u for u in server.batches[0] if u.startswith("Observation?")]
    assert searches and all("_sort" not in parse_qs(u.split("?")[1]) for u in searches)


def test_a_server_that_ignores_sort_is_not_taken_as_newest_first(rsps):
    server = serve(rsps, chart_fixtures() + _dated_vitals(450), ignore_sort=True)
    _declare_sort(server)
    snapshot = load(max_pages=2)
    [problem] = [p for p in snapshot.problems if p.code == "truncated"]
    assert problem.newest_first is False
    assert "not read newest first" in problem.detail


def test_server_page_cap_below_count_is_followed(rsps):
    server = serve(rsps, chart_fixtures() + vital_observations(120), page_cap=50)
    snapshot = load()
    assert len(snapshot.of_type("Observation")) == 124
    assert len(server.batches) == 3


def test_hapi_style_next_links_on_the_base_are_fetched_alongside_the_batch(rsps):
    server = serve(rsps, chart_fixtures() + vital_observations(250), hapi_next_links=True)
    snapshot = load()
    assert len(snapshot.of_type("Observation")) == 254
    assert any(line.startswith("GET ?_getpages=") for line in server.http_log)
    assert snapshot.problems == ()


# -- the same snapshot without batch ----------------------------------------------------------


def test_batch_and_non_batch_paths_give_the_same_snapshot(rsps):
    data = chart_fixtures() + vital_observations(330)
    with_batch = FakeFHIRServer(data)
    snap_batch = None
    with_batch.add_to(rsps)
    snap_batch = load()
    rsps.reset()
    clear_capabilities_cache()
    without = serve(rsps, data, capability=NO_BATCH)
    snap_plain = load()

    assert ids(snap_plain) == ids(snap_batch)
    assert snap_plain.patient == snap_batch.patient
    assert snap_plain.encounter == snap_batch.encounter
    assert snap_plain.problems == snap_batch.problems == ()
    assert without.batches == []
    assert all(line.startswith("GET ") for line in without.http_log)
    # No _include in its statement: the referenced Medications came from one _id search.
    assert any(line.startswith("GET Medication?_id=") for line in without.http_log)
    assert not any("_include" in line for line in without.http_log)


def test_non_batch_path_runs_concurrently_on_a_bounded_pool(rsps):
    server = serve(rsps, capability=NO_BATCH, latency=0.02)
    load()
    # Patient, Encounter and 7 searches at once, at most six in flight.
    assert 2 <= server.max_active <= 6


def test_batch_refused_despite_the_statement_falls_back_to_separate_requests(rsps):
    server = serve(rsps, refuse_batch=405)
    snapshot = load()
    assert ids(snapshot) == EXPECTED_IDS
    assert server.http_log[1] == "POST [base]"
    assert sum(1 for line in server.http_log if line.startswith("GET ")) >= 9


def test_server_that_refuses_searches_in_a_batch_is_searched_directly(rsps):
    server = serve(rsps, searches_in_batch=False)
    snapshot = load()
    assert ids(snapshot) == EXPECTED_IDS
    assert snapshot.problems == ()
    assert len(server.batches) == 1  # Patient and Encounter came in it; searches went direct
    assert any(line.startswith("GET Condition?") for line in server.http_log)


# -- scopes ------------------------------------------------------------------------------------


def test_types_not_granted_are_neither_requested_nor_present(rsps):
    server = serve(rsps)
    readable = {"Patient", "Encounter", "Condition", "MedicationRequest", "Medication"}
    snapshot = load(readable_types=readable)

    asked = {url.split("?")[0].split("/")[0] for url in server.gets}
    # Medications come with the MedicationRequests (_include): no request of their own.
    assert asked == {"metadata", "Patient", "Encounter", "Condition", "MedicationRequest"}
    assert set(snapshot.resources) == {"Condition", "MedicationRequest", "Medication"}
    assert snapshot.not_granted == (
        "Observation",
        "MedicationStatement",
        "AllergyIntolerance",
        "Procedure",
        "Immunization",
        "DocumentReference",
    )


def test_a_wildcard_scope_grants_every_type(rsps):
    serve(rsps)
    snapshot = load(readable_types=frozenset({"*"}))
    assert snapshot.not_granted == ()
    assert ids(snapshot) == EXPECTED_IDS


def test_medication_not_granted_leaves_references_unresolved_without_asking(rsps):
    server = serve(rsps)
    snapshot = load(readable_types={"Patient", "MedicationRequest"})
    assert not any("Medication/" in url or "_include" in url for url in server.gets)
    assert "Medication" in snapshot.not_granted
    assert "Encounter" in snapshot.not_granted and snapshot.encounter is None
    [problem] = [p for p in snapshot.problems if p.code == "unresolved_reference"]
    assert problem.count == 3  # relative, absolute, included: not readable; contained: fine
    assert "not granted" in problem.detail


def test_medication_statements_are_read_only_where_the_server_offers_them(rsps):
    capability = fixture("capabilitystatement-batch.json")
    resources = capability["rest"][0]["resource"]
    capability["rest"][0]["resource"] = [r for r in resources if r["type"] != "MedicationStatement"]
    server = serve(rsps)
    server.capability = capability
    snapshot = load(readable_types={"Patient", "MedicationRequest", "Medication"})

    assert not any(url.startswith("MedicationStatement") for url in server.gets)
    assert "MedicationStatement" not in snapshot.resources
    # Not offered by the server is not "not granted": the sidebar lists only real gaps.
    assert "MedicationStatement" not in snapshot.not_granted
    assert snapshot.problems == ()


def test_a_statement_naming_a_medication_gets_it_read_in_the_next_round(rsps):
    statement = {
        **fixture("medicationstatement.json"),
        "id": "ms-ref",
        "medicationReference": {"reference": "Medication/med-stmt"},
    }
    del statement["medicationCodeableConcept"]
    medication = {**fixture("medication-rel.json"), "id": "med-stmt"}
    server = serve(rsps, [*chart_fixtures(), statement, medication])
    snapshot = load()

    assert server.batches[1] == ["Medication/med-stmt"]
    assert medication_name(snapshot.get("MedicationStatement/ms-ref"), snapshot) == (
        medication_name(snapshot.get("MedicationRequest/mr-relative"), snapshot)
    )
    assert snapshot.problems == ()


def test_patient_not_granted_gives_a_placeholder_and_says_why(rsps):
    server = serve(rsps)
    snapshot = load(readable_types={"Condition"})
    assert not any(url.startswith("Patient") for url in server.gets)
    assert snapshot.patient == {"resourceType": "Patient", "id": "pat-1"}
    assert "scope_not_granted" in codes(snapshot)


# -- medications ----------------------------------------------------------------------------


def test_medications_resolve_contained_relative_absolute_and_included(rsps):
    serve(rsps)
    snapshot = load()
    by_id = {mr["id"]: mr for mr in snapshot.of_type("MedicationRequest")}
    assert medication_of(by_id["mr-contained"], snapshot)["code"]["coding"][0]["code"] == "197361"
    assert medication_of(by_id["mr-relative"], snapshot)["id"] == "med-rel"
    assert medication_of(by_id["mr-absolute"], snapshot)["id"] == "med-abs"
    assert medication_of(by_id["mr-included"], snapshot)["id"] == "med-inc"
    assert medication_of(by_id["mr-cc"], snapshot) is None
    assert medication_name(by_id["mr-cc"], snapshot) == "Metformin ER 500 mg"
    assert medication_name(by_id["mr-absolute"], snapshot) == "ibuprofen 200 MG Oral Tablet"


def test_medications_not_included_are_read_in_the_next_batch(rsps):
    server = serve(rsps)
    load()
    # _include brought med-inc, med-rel and med-abs (all on this server): nothing left to read.
    assert len(server.batches) == 1
    rsps.reset()
    clear_capabilities_cache()
    server = serve(rsps, reject_include=True)
    snapshot = load()
    # The _include was refused (400): the search went again without it, and the
    # Medications were read one by one in the batch after that.
    assert len(server.batches) == 3
    assert sorted(server.batches[2]) == [
        "Medication/med-abs",
        "Medication/med-inc",
        "Medication/med-rel",
    ]
    assert ids(snapshot)["Medication"] == EXPECTED_IDS["Medication"]
    assert snapshot.problems == ()


def test_medication_on_another_server_is_never_fetched(rsps):
    foreign = {
        **fixture("medicationrequest-relative.json"),
        "id": "mr-foreign",
        "medicationReference": {"reference": "https://other.example/fhir/Medication/med-x"},
    }
    server = serve(rsps, chart_fixtures() + [foreign])
    snapshot = load()
    assert not any("med-x" in url for url in server.gets)
    [problem] = [p for p in snapshot.problems if p.code == "unresolved_reference"]
    assert problem.count == 1


# -- failures -------------------------------------------------------------------------------


def test_a_failed_type_is_a_problem_not_an_exception(rsps):
    server = serve(rsps)
    server.fail_type["Procedure"] = [500, 500]
    server.fail_type["Immunization"] = [403]
    snapshot = load()
    failed = {p.resource_type: p.detail for p in snapshot.problems if p.code == "search_failed"}
    assert failed == {
        "Procedure": "Procedure search failed (HTTP 500)",
        "Immunization": "Immunization search failed (HTTP 403)",
    }
    assert "Procedure" not in snapshot.resources
    assert ids(snapshot)["Condition"] == EXPECTED_IDS["Condition"]
    # The 500 was retried once, in the next round's batch.
    assert len(server.batches) == 2 and server.batches[1][0].startswith("Procedure?")
    assert "Anna" not in " ".join(p.detail for p in snapshot.problems)


def test_a_temporary_entry_failure_is_retried_in_the_next_round(rsps):
    server = serve(rsps)
    server.fail_type["Condition"] = [503]
    snapshot = load()
    assert snapshot.problems == ()
    assert ids(snapshot)["Condition"] == EXPECTED_IDS["Condition"]


def test_failed_types_without_batch_are_problems_too(rsps):
    server = serve(rsps, capability=NO_BATCH)
    server.fail_type["Procedure"] = [500]
    snapshot = load()
    assert [p.resource_type for p in snapshot.problems if p.code == "search_failed"] == [
        "Procedure"
    ]


def test_encounter_failure_is_a_problem(rsps):
    serve(rsps)
    snapshot = load(encounter_id="enc-404")
    assert snapshot.encounter is None
    assert [(p.code, p.resource_type) for p in snapshot.problems] == [
        ("search_failed", "Encounter")
    ]


@pytest.mark.parametrize("capability", ["capabilitystatement-batch.json", NO_BATCH])
def test_patient_not_found_is_fatal(rsps, capability):
    serve(rsps, capability=capability)
    with pytest.raises(FatalUpstreamError) as excinfo:
        load(patient_id="nobody")
    assert excinfo.value.code == "ehr_not_found"


def test_patient_failing_twice_with_503_is_temporary(rsps):
    server = serve(rsps)
    server.fail_type["Patient"] = [503, 503]
    with pytest.raises(TemporaryUpstreamError):
        load()


def test_server_failing_the_next_two_requests_still_yields_the_snapshot(rsps):
    server = serve(rsps)
    server.fail_next = [503, 503]
    snapshot = load()
    assert ids(snapshot) == EXPECTED_IDS
    assert snapshot.request_count == 4  # metadata twice refused, then metadata and the batch


def test_server_down_is_a_temporary_error(rsps):
    server = serve(rsps)
    server.fail_next = [503] * 20
    with pytest.raises(TemporaryUpstreamError):
        load()


def test_expired_token_mid_load_is_refreshed_once(rsps):
    server = serve(rsps)
    server.fail_next = [401]
    tokens = FakeTokens()
    snapshot = load(client_for(tokens))
    assert tokens.refreshes == 1
    assert ids(snapshot) == EXPECTED_IDS


def test_concurrent_401s_cost_one_refresh(rsps):
    # Every concurrent GET meets the expired token; only one of them may refresh it (a
    # rotated refresh token works once), the others replay with the new token.
    server = serve(rsps, capability=NO_BATCH, latency=0.01, accept_token="token-refreshed-1")
    client_for(FakeTokens("token-refreshed-1")).capabilities()  # cached: round 1 comes first
    tokens = FakeTokens("expired")
    snapshot = load(client_for(tokens))
    assert tokens.refreshes == 1
    assert ids(snapshot) == EXPECTED_IDS
    assert server.authorizations.count("Bearer expired") >= 2


def test_token_refused_after_refresh_requires_relaunch(rsps):
    server = serve(rsps)
    server.fail_next = [401, 401]
    with pytest.raises(RelaunchRequired):
        load()


# -- what the snapshot keeps ---------------------------------------------------------------------


def test_document_attachment_data_is_dropped(rsps):
    serve(rsps)
    [doc] = load().of_type("DocumentReference")
    attachment = doc["content"][0]["attachment"]
    assert "data" not in attachment
    assert attachment["contentType"] == "text/plain"


def test_only_the_most_recent_documents_are_read(rsps):
    docs = [
        {
            **fixture("documentreference-with-data.json"),
            "id": f"d-{i}",
            "date": f"2026-01-{i + 1:02d}T10:00:00Z",
        }
        for i in range(15)
    ]
    server = serve(rsps, chart_fixtures() + docs)
    snapshot = load()
    got = ids(snapshot)["DocumentReference"]
    assert got == {"doc-1"} | {f"d-{i}" for i in range(6, 15)}
    assert len(server.batches) == 1
    assert "truncated" not in codes(snapshot)


def test_resources_of_another_patient_are_dropped(rsps):
    server = serve(rsps)

    original = server.answer_get

    def leaky(relative: str):
        status, body = original(relative)
        if relative.startswith("Condition?"):
            stray = {
                **fixture("condition-diabetes.json"),
                "id": "other",
                "subject": {"reference": "Patient/pat-2"},
            }
            body["entry"].append({"resource": stray, "search": {"mode": "match"}})
        return status, body

    server.answer_get = leaky
    snapshot = load()
    assert "other" not in ids(snapshot)["Condition"]
    [problem] = [p for p in snapshot.problems if p.code == "wrong_patient"]
    assert problem.resource_type == "Condition" and problem.count == 1


def test_invalid_resources_are_skipped_and_reported(rsps):
    bad = [
        fixture("invalid/observation-text-value.json"),
        fixture("invalid/condition-no-subject.json"),
    ]
    bad[0]["category"] = fixture("observation-hba1c.json")["category"]
    bad[1]["subject"] = {"reference": "Patient/pat-1"}
    bad[1]["clinicalStatus"] = "active"  # a string where a CodeableConcept belongs
    serve(rsps, chart_fixtures() + bad)
    snapshot = load()
    invalid = {p.resource_type: p.count for p in snapshot.problems if p.code == "invalid_resource"}
    assert invalid == {"Observation": 1, "Condition": 1}
    assert ids(snapshot)["Observation"] == EXPECTED_IDS["Observation"]
    assert all("Anna" not in p.detail for p in snapshot.problems)


def test_a_fifty_entry_page_with_three_invalid_gives_47_and_reports_3(rsps):
    vitals = vital_observations(47)
    broken = [dict(o, id=f"broken-{i}") for i, o in enumerate(vital_observations(3, start=47))]
    broken[0]["valueQuantity"] = {"value": "Anna's pulse was fast"}
    broken[1]["status"] = 7
    broken[2]["nurseComment"] = "Anna Example"
    server = serve(rsps, [fixture("patient.json"), *vitals, *broken])
    snapshot = load(encounter_id=None)
    assert len([url for url in server.gets if "vital-signs" in url]) == 1
    assert len(server.http_log) == 2  # the 50 came in one page of one batch
    assert len(snapshot.of_type("Observation")) == 47
    [problem] = snapshot.problems
    assert (problem.code, problem.resource_type, problem.count) == (
        "invalid_resource",
        "Observation",
        3,
    )
    assert "Anna" not in problem.detail


def test_a_next_link_to_another_host_is_not_followed(rsps):
    server = serve(rsps, chart_fixtures() + vital_observations(250))
    original = server.next_url
    server.next_url = lambda rtype, params, offset: original(rtype, params, offset).replace(
        BASE, "https://evil.example/fhir"
    )
    evil = rsps.add(responses.GET, "https://evil.example/fhir/Observation")
    snapshot = load()
    assert evil.call_count == 0
    assert len(server.batches) == 1
    assert len(snapshot.of_type("Observation")) == 200 + 2
    [problem] = snapshot.problems
    assert problem.code == "truncated"
    assert (
        problem.detail
        == "Observation (vital-signs): the next page is on another server; not followed"
    )


def test_snapshot_round_trips_through_json(rsps):
    serve(rsps)
    snapshot = load()
    again = ChartSnapshot.from_json(snapshot.to_json())
    assert again == snapshot
    assert again.get(f"{BASE}/Medication/med-abs") is not None


MRN = {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-0001"}
CONTAINED_ME = [{"resourceType": "Patient", "id": "p", "identifier": [MRN]}]
CONTAINED_OTHER = [{"resourceType": "Patient", "id": "p", "identifier": [{**MRN, "value": "X"}]}]


@pytest.mark.parametrize(
    ("subject", "contained", "kept"),
    [
        ({"reference": "Patient/pat-1"}, None, True),
        ({"reference": "Patient/pat-1/_history/3"}, None, True),
        ({"reference": "https://ehr.example/fhir/Patient/pat-1"}, None, True),
        ({"reference": "HTTPS://EHR.EXAMPLE/fhir/Patient/pat-1"}, None, True),
        ({"identifier": MRN}, None, True),
        ({"reference": "#p", "type": "Patient"}, CONTAINED_ME, True),
        # Everything below names someone else, or no one this app can confirm.
        ({"reference": "Patient/pat-2"}, None, False),
        ({"reference": "Patient/PAT-1"}, None, False),  # FHIR ids are case-sensitive
        ({"reference": "https://other.example/fhir/Patient/pat-1"}, None, False),
        ({"reference": "https://ehr.example/other/Patient/pat-1"}, None, False),
        ({"reference": "urn:uuid:5f1c0e9a-0000-4000-8000-000000000001"}, None, False),
        ({"reference": "Group/ward-3"}, None, False),
        ({"identifier": {**MRN, "value": "MRN-0002"}}, None, False),
        ({"identifier": {"value": "MRN-0001"}}, None, False),  # no system: not an identity
        ({"display": "Anna Example"}, None, False),
        (None, None, False),
        ({"reference": "#p"}, CONTAINED_OTHER, False),
        ({"reference": "#p"}, [{"resourceType": "Group", "id": "p"}], False),
    ],
)  # fmt: skip
def test_only_the_launch_patient_in_any_reference_form_is_kept(rsps, subject, contained, kept):
    server = serve(rsps)
    original = server.answer_get

    def leaky(relative: str):
        status, body = original(relative)
        if relative.startswith("Condition?"):
            stray = {**fixture("condition-diabetes.json"), "id": "stray"}
            stray.pop("subject", None)
            if subject is not None:
                stray["subject"] = subject
            if contained is not None:
                stray["contained"] = contained
            body["entry"].append({"resource": stray, "search": {"mode": "match"}})
        return status, body

    server.answer_get = leaky
    snapshot = load()
    assert ("stray" in ids(snapshot)["Condition"]) is kept
    dropped = [p for p in snapshot.problems if p.code == "wrong_patient"]
    if kept:
        assert dropped == []
    else:
        [problem] = dropped
        assert problem.resource_type == "Condition" and problem.count == 1
        assert "Anna" not in problem.detail


# -- stopped and completed orders ----------------------------------------------------------


def _order(order_id: str, status: str, authored: str, **extra) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "29046"}],
            "text": "lisinopril",
        },
        "subject": {"reference": "Patient/pat-1"},
        "authoredOn": authored,
        **extra,
    }


HISTORY = [
    _order("mr-stopped-recent", "stopped", "2026-03-10", statusReason={"text": "Dry cough"}),
    _order("mr-completed-old", "completed", "2023-01-05"),
    # Written long ago, ended within the window: still recent history.
    _order(
        "mr-stopped-ended-recently",
        "stopped",
        "2022-06-01",
        dispenseRequest={"validityPeriod": {"start": "2022-06-01", "end": "2026-05-01"}},
    ),
    _order("mr-cancelled", "cancelled", "2026-06-01"),
]


def _declaring_authoredon(server: FakeFHIRServer) -> None:
    for resource in server.capability["rest"][0]["resource"]:
        if resource["type"] == "MedicationRequest":
            resource["searchParam"] = [{"name": "authoredon", "type": "date"}]


def test_stopped_and_completed_orders_of_the_last_year_are_read_as_history(rsps):
    serve(rsps, chart_fixtures() + HISTORY)
    snapshot = load(today=date(2026, 11, 20))

    history = {r["id"] for r in snapshot.of_type("MedicationRequest")} - EXPECTED_IDS[
        "MedicationRequest"
    ]
    assert history == {"mr-stopped-recent", "mr-stopped-ended-recently"}
    assert snapshot.problems == ()


def test_the_history_window_is_asked_of_a_server_that_declares_authoredon(rsps):
    server = FakeFHIRServer(chart_fixtures() + HISTORY)
    _declaring_authoredon(server)
    server.add_to(rsps)
    load(today=date(2026, 11, 20))

    [history] = [u for u in server.batches[0] if "stopped%2Ccompleted" in u]
    assert parse_qs(history.split("?")[1])["authoredon"] == ["ge2025-11-20"]


def test_a_failed_history_search_leaves_the_current_orders_complete(rsps):
    server = serve(rsps, chart_fixtures() + HISTORY)
    server.fail_query["stopped%2Ccompleted"] = [500, 500]  # and its one retry
    snapshot = load(today=date(2026, 11, 20))

    assert {r["id"] for r in snapshot.of_type("MedicationRequest")} == EXPECTED_IDS[
        "MedicationRequest"
    ]
    assert codes(snapshot) == {"history_incomplete"}
    [problem] = snapshot.problems
    assert problem.resource_type == "MedicationRequest"
    assert "current orders are unaffected" in problem.detail
