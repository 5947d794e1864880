"""Unit: FHIRClient over faked HTTP (`responses`): retries, backoff, 401, paging, errors, batch."""

from __future__ import annotations

import json
import logging
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests
import responses

from smartapp.errors import FatalUpstreamError, RelaunchRequired, TemporaryUpstreamError
from smartapp.fhir.client import (
    BatchRequest,
    FHIRClient,
    FHIRRequestRefused,
    clear_capabilities_cache,
    parse_retry_after,
    split_search_bundle,
)

from .fakes import BASE, FakeTokens, fixture

PATIENT_URL = f"{BASE}/Patient/pat-1"


@pytest.fixture(autouse=True)
def _fresh_capabilities():
    clear_capabilities_cache()
    yield
    clear_capabilities_cache()


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(tokens: FakeTokens | None = None, **kwargs) -> tuple[FHIRClient, Sleeps]:
    sleeps = Sleeps()
    client = FHIRClient(
        BASE, tokens=tokens or FakeTokens(), sleep=sleeps, rng=random.Random(7), **kwargs
    )
    return client, sleeps


# -- retries ------------------------------------------------------------------------------


def test_get_retried_after_two_503s_returns_one_result(rsps):
    rsps.add(responses.GET, PATIENT_URL, status=503)
    rsps.add(responses.GET, PATIENT_URL, status=503)
    rsps.add(responses.GET, PATIENT_URL, json=fixture("patient.json"))
    client, sleeps = make_client()

    patient = client.read("Patient", "pat-1")

    assert patient["id"] == "pat-1"
    assert client.request_count == 3
    assert len(rsps.calls) == 3
    # Exponential with equal jitter: attempt n waits within [step/2, step], step = 0.25 * 2**n.
    assert len(sleeps) == 2
    assert 0.125 <= sleeps[0] <= 0.25
    assert 0.25 <= sleeps[1] <= 0.5


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_each_retryable_status_is_retried(rsps, status):
    rsps.add(responses.GET, PATIENT_URL, status=status)
    rsps.add(responses.GET, PATIENT_URL, json=fixture("patient.json"))
    client, sleeps = make_client()
    assert client.read("Patient", "pat-1")["id"] == "pat-1"
    assert len(sleeps) == 1


def test_backoff_jitter_is_bounded_and_capped():
    client, _ = make_client(backoff_base=0.5, backoff_cap=4.0)
    for attempt in range(10):
        step = min(4.0, 0.5 * 2**attempt)
        delays = {client._backoff(attempt) for _ in range(200)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1, "jitter must vary the delay"


def test_gives_up_after_max_retries_with_temporary_error(rsps):
    rsps.add(responses.GET, PATIENT_URL, status=503)
    client, sleeps = make_client(max_retries=2)
    with pytest.raises(TemporaryUpstreamError) as excinfo:
        client.read("Patient", "pat-1")
    assert len(rsps.calls) == 3
    assert len(sleeps) == 2
    assert "HTTP 503" in excinfo.value.message


def test_500_is_temporary_but_not_retried(rsps):
    rsps.add(responses.GET, PATIENT_URL, status=500)
    client, sleeps = make_client()
    with pytest.raises(TemporaryUpstreamError):
        client.read("Patient", "pat-1")
    assert len(rsps.calls) == 1
    assert sleeps == []


def test_retry_after_seconds_is_honoured(rsps):
    rsps.add(responses.GET, PATIENT_URL, status=429, headers={"Retry-After": "3"})
    rsps.add(responses.GET, PATIENT_URL, json=fixture("patient.json"))
    client, sleeps = make_client()
    client.read("Patient", "pat-1")
    assert sleeps == [3.0]


def test_retry_after_http_date_is_capped(rsps):
    later = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    rsps.add(responses.GET, PATIENT_URL, status=503, headers={"Retry-After": later})
    rsps.add(responses.GET, PATIENT_URL, json=fixture("patient.json"))
    client, sleeps = make_client(backoff_cap=8.0)
    client.read("Patient", "pat-1")
    assert sleeps == [8.0]


def test_parse_retry_after_forms():
    now = datetime(2026, 11, 3, 12, 0, tzinfo=UTC)
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after("Tue, 03 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 03 Nov 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None
    assert parse_retry_after(None, now=now) is None


def test_post_create_is_not_retried(rsps):
    rsps.add(responses.POST, f"{BASE}/DocumentReference", status=503)
    client, sleeps = make_client()
    with pytest.raises(TemporaryUpstreamError):
        client.create(fixture("documentreference-with-data.json"))
    assert len(rsps.calls) == 1
    assert sleeps == []


def test_transaction_is_not_retried_even_on_connection_error(rsps):
    rsps.add(responses.POST, BASE, body=requests.ConnectionError("reset"))
    client, _ = make_client()
    with pytest.raises(TemporaryUpstreamError):
        client.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert len(rsps.calls) == 1


def test_conditional_create_is_retried_because_it_is_idempotent(rsps):
    doc = fixture("documentreference-with-data.json")
    rsps.add(responses.POST, f"{BASE}/DocumentReference", status=503)
    rsps.add(responses.POST, f"{BASE}/DocumentReference", status=201, json=doc)
    client, _ = make_client()
    created = client.create(doc, if_none_exist="identifier=urn:ietf:rfc:3986|urn:uuid:1")
    assert created["id"] == "doc-1"
    assert len(rsps.calls) == 2
    assert (
        rsps.calls[1].request.headers["If-None-Exist"] == "identifier=urn:ietf:rfc:3986|urn:uuid:1"
    )


def test_batch_of_reads_is_retried_but_batch_with_a_create_is_not(rsps):
    rsps.add(responses.POST, BASE, status=503)
    client, _ = make_client(max_retries=1)
    with pytest.raises(TemporaryUpstreamError):
        client.batch([BatchRequest(url="Patient/pat-1")])
    assert len(rsps.calls) == 2
    with pytest.raises(TemporaryUpstreamError):
        client.batch(
            [
                BatchRequest(url="Patient/pat-1"),
                BatchRequest(url="Basic", method="POST", resource={"resourceType": "Basic"}),
            ]
        )
    assert len(rsps.calls) == 3


@pytest.mark.parametrize(
    "error",
    [
        requests.ConnectTimeout("slow"),
        requests.ReadTimeout("slow"),
        requests.ConnectionError("refused"),
    ],
)
def test_timeouts_and_refused_connections_become_temporary_after_retries(rsps, error):
    rsps.add(responses.GET, PATIENT_URL, body=error)
    client, sleeps = make_client(max_retries=3)
    with pytest.raises(TemporaryUpstreamError) as excinfo:
        client.read("Patient", "pat-1")
    assert len(rsps.calls) == 4
    assert len(sleeps) == 3
    assert excinfo.value.__cause__ is None  # the requests error's text holds the URL


def test_every_request_has_connect_and_read_timeouts(rsps):
    rsps.add(responses.GET, PATIENT_URL, json=fixture("patient.json"))
    client, _ = make_client(connect_timeout=2.0, read_timeout=9.0)
    client.read("Patient", "pat-1")
    assert rsps.calls[0].request.req_kwargs["timeout"] == (2.0, 9.0)


# -- tokens -------------------------------------------------------------------------------


def test_401_refreshes_once_and_replays(rsps):
    rsps.add(responses.GET, PATIENT_URL, status=401)
    rsps.add(responses.GET, PATIENT_URL, json=fixture("patient.json"))
    tokens = FakeTokens("old-token")
    client, _ = make_client(tokens)

    assert client.read("Patient", "pat-1")["id"] == "pat-1"

    assert tokens.refreshes == 1
    assert rsps.calls[0].request.headers["Authorization"] == "Bearer old-token"
    assert rsps.calls[1].request.headers["Authorization"] == "Bearer token-refreshed-1"


def test_401_twice_requires_relaunch(rsps):
    rsps.add(responses.GET, PATIENT_URL, status=401)
    tokens = FakeTokens()
    client, _ = make_client(tokens)
    with pytest.raises(RelaunchRequired):
        client.read("Patient", "pat-1")
    assert tokens.refreshes == 1
    assert len(rsps.calls) == 2


def test_401_with_a_refused_refresh_requires_relaunch(rsps):
    rsps.add(responses.GET, PATIENT_URL, status=401)
    tokens = FakeTokens(refreshable=False)
    client, _ = make_client(tokens)
    with pytest.raises(RelaunchRequired):
        client.read("Patient", "pat-1")
    assert len(rsps.calls) == 1


def test_headers_on_reads_and_writes(rsps):
    rsps.add(responses.GET, PATIENT_URL, json=fixture("patient.json"))
    rsps.add(responses.PUT, PATIENT_URL, json=fixture("patient.json"))
    client, _ = make_client(FakeTokens("abc"))
    client.read("Patient", "pat-1")
    client.update(fixture("patient.json"))
    get, put = rsps.calls[0].request, rsps.calls[1].request
    assert get.headers["Accept"] == "application/fhir+json"
    assert get.headers["Authorization"] == "Bearer abc"
    assert "Content-Type" not in get.headers
    assert put.headers["Content-Type"] == "application/fhir+json"
    assert json.loads(put.body)["id"] == "pat-1"


# -- paging and foreign links -------------------------------------------------------------


def _page(n: int, next_url: str | None) -> dict:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 100,
        "entry": [
            {
                "resource": {"resourceType": "Observation", "id": f"o{n}"},
                "search": {"mode": "match"},
            }
        ],
        "link": [],
    }
    if next_url:
        bundle["link"].append({"relation": "next", "url": next_url})
    return bundle


def test_search_bundle_separates_included_and_outcome_entries():
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": fixture("medicationrequest-included.json"), "search": {"mode": "match"}},
            {"resource": fixture("medication-inc.json"), "search": {"mode": "include"}},
            {
                "resource": {"resourceType": "OperationOutcome", "issue": []},
                "search": {"mode": "outcome"},
            },
        ],
    }
    matches, included = split_search_bundle(bundle)
    assert [r["id"] for r in matches] == ["mr-included"]
    assert [r["id"] for r in included] == ["med-inc"]


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/fhir/Observation?page=2",
        "http://ehr.example/fhir/Observation?page=2",  # scheme downgrade
        "https://ehr.example:8443/fhir/Observation",  # another port
        "https://ehr.example/fhirx/Observation",  # another base path
        "https://ehr.example/fhir/../admin/Observation",  # escapes the base
        "https://ehr.example@evil.example/fhir/Observation",  # userinfo trick
    ],
)
def test_get_url_refuses_other_base_urls_and_sends_nothing(rsps, url):
    client, _ = make_client()
    with pytest.raises(FatalUpstreamError):
        client.get_url(url)
    assert len(rsps.calls) == 0
    assert client.request_count == 0


def test_get_url_on_the_base_is_fetched(rsps):
    rsps.add(responses.GET, f"{BASE}/Observation", json=_page(1, None))
    client, _ = make_client()
    assert client.get_url(f"{BASE}/Observation?page=1")["resourceType"] == "Bundle"


def test_relative_to_base():
    client, _ = make_client()
    assert client.relative_to_base(f"{BASE}/Observation?patient=1&_offset=200") == (
        "Observation?patient=1&_offset=200"
    )
    assert client.relative_to_base(f"{BASE}?_getpages=abc") == "?_getpages=abc"
    with pytest.raises(FatalUpstreamError):
        client.relative_to_base("https://evil.example/fhir/Observation")


# -- bad answers and messages ---------------------------------------------------------------


def test_non_json_answer_is_fatal(rsps):
    rsps.add(responses.GET, PATIENT_URL, body="<html>gateway</html>", content_type="text/html")
    client, _ = make_client()
    with pytest.raises(FatalUpstreamError, match="other than JSON"):
        client.read("Patient", "pat-1")


def test_wrong_resource_type_is_fatal(rsps):
    rsps.add(responses.GET, PATIENT_URL, json={"resourceType": "OperationOutcome", "issue": []})
    client, _ = make_client()
    with pytest.raises(FatalUpstreamError, match="OperationOutcome instead of Patient"):
        client.read("Patient", "pat-1")


def test_redirect_is_not_followed(rsps):
    rsps.add(responses.GET, PATIENT_URL, status=302, headers={"Location": "https://evil.example/x"})
    client, _ = make_client()
    with pytest.raises(FatalUpstreamError, match="redirect"):
        client.read("Patient", "pat-1")
    assert len(rsps.calls) == 1


@pytest.mark.parametrize(
    "status,code", [(400, "ehr_error"), (403, "ehr_forbidden"), (404, "ehr_not_found")]
)
def test_4xx_is_fatal_with_status_and_without_phi_or_token(rsps, caplog, status, code):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Patient Anna Example (MRN-0001)",
            }
        ],
    }
    rsps.add(responses.GET, f"{BASE}/Observation", status=status, json=outcome)
    client, _ = make_client(FakeTokens("secret-token-value"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(FHIRRequestRefused) as excinfo:
        client.get_url(f"{BASE}/Observation?patient=pat-1&code=4548-4")
    error = excinfo.value
    assert error.status == status
    assert error.code == code
    said = error.message + caplog.text
    for secret in ("Anna", "MRN-0001", "secret-token-value", "pat-1", "4548-4"):
        assert secret not in said
    assert "GET Observation" in error.message


def test_retry_logs_name_the_type_but_not_the_query_or_token(rsps, caplog):
    rsps.add(responses.GET, f"{BASE}/Observation", status=503)
    rsps.add(responses.GET, f"{BASE}/Observation", json=_page(0, None))
    client, _ = make_client(FakeTokens("secret-token-value"))
    caplog.set_level(logging.DEBUG, logger="smartapp")
    client.get_url(f"{BASE}/Observation?patient=pat-1")
    assert "GET Observation: HTTP 503" in caplog.text
    assert "pat-1" not in caplog.text and "secret-token-value" not in caplog.text


def test_invalid_ids_are_never_put_in_a_url(rsps):
    client, _ = make_client()
    with pytest.raises(FatalUpstreamError):
        client.read("Patient", "../Observation")
    with pytest.raises(ValueError):
        client.read("patient/x", "1")
    assert len(rsps.calls) == 0


# -- batch, writes, capabilities --------------------------------------------------------------


def test_batch_maps_entries_in_order(rsps):
    answer = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": fixture("patient.json"), "response": {"status": "200 OK"}},
            {
                "response": {
                    "status": "404 Not Found",
                    "outcome": {"resourceType": "OperationOutcome", "issue": []},
                }
            },
            {
                "resource": {"resourceType": "OperationOutcome", "issue": []},
                "response": {"status": "500"},
            },
        ],
    }
    rsps.add(responses.POST, BASE, json=answer)
    client, _ = make_client()
    out = client.batch(
        [
            BatchRequest(url="Patient/pat-1"),
            BatchRequest(url="Encounter/x"),
            BatchRequest(url="Condition?patient=pat-1"),
        ]
    )
    assert [r.status for r in out] == [200, 404, 500]
    assert out[0].ok and out[0].resource["id"] == "pat-1"
    assert not out[1].ok and out[1].outcome is not None
    assert out[2].resource is None and out[2].outcome is not None
    sent = json.loads(rsps.calls[0].request.body)
    assert sent["type"] == "batch"
    assert sent["entry"][2]["request"] == {"method": "GET", "url": "Condition?patient=pat-1"}
    assert rsps.calls[0].request.headers["Content-Type"] == "application/fhir+json"


def test_batch_response_of_the_wrong_length_is_fatal(rsps):
    rsps.add(
        responses.POST, BASE, json={"resourceType": "Bundle", "type": "batch-response", "entry": []}
    )
    client, _ = make_client()
    with pytest.raises(FatalUpstreamError):
        client.batch([BatchRequest(url="Patient/pat-1")])


def test_create_reads_back_when_the_server_returns_no_body(rsps):
    doc = fixture("documentreference-with-data.json")
    rsps.add(
        responses.POST,
        f"{BASE}/DocumentReference",
        status=201,
        body="",
        headers={"Location": f"{BASE}/DocumentReference/doc-1/_history/1"},
    )
    rsps.add(responses.GET, f"{BASE}/DocumentReference/doc-1", json=doc)
    client, _ = make_client()
    created = client.create({k: v for k, v in doc.items() if k != "id"})
    assert created["id"] == "doc-1"
    assert rsps.calls[0].request.headers["Prefer"] == "return=representation"


def test_capabilities_are_cached_across_clients(rsps):
    rsps.add(responses.GET, f"{BASE}/metadata", json=fixture("capabilitystatement-batch.json"))
    first, _ = make_client()
    second, _ = make_client()
    assert first.capabilities()["resourceType"] == "CapabilityStatement"
    assert second.capabilities()["fhirVersion"] == "4.0.1"
    assert len(rsps.calls) == 1
    assert second.request_count == 0


def test_base_url_must_be_absolute():
    with pytest.raises(ValueError):
        FHIRClient("ehr.example/fhir", tokens=FakeTokens())
