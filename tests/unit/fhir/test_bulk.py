"""Unit: the Bulk Data `$export` client — kick-off, polling that honours Retry-After (an
injected clock and sleeper: no waiting), streamed NDJSON, and the error paths."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import responses

from smartapp.errors import TemporaryUpstreamError
from smartapp.fhir.bulk import (
    BulkDataClient,
    BulkExportFailed,
    ExportFile,
    ExportLevel,
    ExportManifest,
)

BASE = "https://ehr.test/fhir"
STATUS = "https://ehr.test/fhir/$export-status/job1"
FILE = "https://ehr.test/fhir/$export-file/job1/Encounter-1.ndjson"


class Tokens:
    def __init__(self) -> None:
        self.refreshed = 0

    def access_token(self) -> str:
        return f"token-{self.refreshed}"

    def refresh(self) -> str:
        self.refreshed += 1
        return self.access_token()


class FakeTime:
    """A clock the sleeper moves forward: polling is tested without waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def time_():
    return FakeTime()


@pytest.fixture
def tokens():
    return Tokens()


@pytest.fixture
def bulk(time_, tokens):
    return BulkDataClient(base_url=BASE, tokens=tokens, clock=time_.clock, sleep=time_.sleep)


def manifest(**extra):
    return {
        "transactionTime": "2026-10-15T00:00:00Z",
        "request": f"{BASE}/$export",
        "requiresAccessToken": True,
        "output": [{"type": "Encounter", "url": FILE, "count": 2}],
        "error": [],
        **extra,
    }


def outcome(code):
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": "Patient pt-01 is secret"}],
    }


@responses.activate
def test_kick_off_asks_async_with_types_and_since(bulk):
    responses.get(f"{BASE}/$export", status=202, headers={"Content-Location": STATUS})
    url = bulk.kick_off(
        types=["Encounter", "DocumentReference"], since=datetime(2026, 9, 1, tzinfo=UTC)
    )
    assert url == STATUS
    request = responses.calls[0].request
    assert request.headers["Accept"] == "application/fhir+json"
    assert request.headers["Prefer"] == "respond-async"
    assert request.headers["Authorization"] == "Bearer token-0"
    assert request.params == {
        "_type": "Encounter,DocumentReference",
        "_since": "2026-09-01T00:00:00+00:00",
    }


@responses.activate
@pytest.mark.parametrize(
    ("level", "path"),
    [("patient", "Patient/$export"), ("group:g1", "Group/g1/$export")],
)
def test_patient_and_group_level_exports(bulk, level, path):
    responses.get(f"{BASE}/{path}", status=202, headers={"Content-Location": STATUS})
    assert bulk.kick_off(types=["Encounter"], level=ExportLevel.parse(level)) == STATUS


def test_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="system, patient or group"):
        ExportLevel.parse("everything")


@responses.activate
def test_kick_off_refused_reports_issue_codes_never_diagnostics(bulk):
    responses.get(f"{BASE}/$export", status=403, json=outcome("forbidden"))
    with pytest.raises(BulkExportFailed) as caught:
        bulk.kick_off(types=["Encounter"])
    assert caught.value.status == 403
    assert caught.value.issues == ("error: forbidden",)
    assert "pt-01" not in caught.value.message


@responses.activate
def test_kick_off_without_content_location_fails(bulk):
    responses.get(f"{BASE}/$export", status=202)
    with pytest.raises(BulkExportFailed, match="Content-Location"):
        bulk.kick_off(types=["Encounter"])


@responses.activate
def test_a_status_url_on_another_server_gets_no_token(bulk):
    responses.get(
        f"{BASE}/$export", status=202, headers={"Content-Location": "https://evil.test/s"}
    )
    with pytest.raises(BulkExportFailed, match="another server"):
        bulk.kick_off(types=["Encounter"])


@responses.activate
def test_polling_honours_retry_after_then_returns_the_manifest(bulk, time_):
    responses.get(STATUS, status=202, headers={"Retry-After": "7", "X-Progress": "50%"})
    responses.get(STATUS, status=202)  # no Retry-After: the default wait
    responses.get(STATUS, status=429, headers={"Retry-After": "0"})  # too often: at least 1 s
    responses.get(STATUS, json=manifest())
    result = bulk.wait(STATUS)
    assert time_.slept == [7.0, 5.0, 1.0]
    assert result.output == (ExportFile(type="Encounter", url=FILE, count=2),)
    assert result.requires_access_token is True


@responses.activate
def test_polling_gives_up_after_the_maximum_wait(time_, tokens):
    bulk = BulkDataClient(
        base_url=BASE, tokens=tokens, clock=time_.clock, sleep=time_.sleep, max_wait_seconds=20
    )
    responses.get(STATUS, status=202, headers={"Retry-After": "15"})
    with pytest.raises(TemporaryUpstreamError, match="did not finish within 20 s"):
        bulk.wait(STATUS)
    assert time_.slept == [15.0]


@responses.activate
def test_a_failed_export_reports_its_outcome(bulk):
    responses.get(STATUS, status=500, json=outcome("exception"))
    with pytest.raises(TemporaryUpstreamError, match="exception"):
        bulk.wait(STATUS)
    responses.replace(responses.GET, STATUS, status=404, json=outcome("not-found"))
    with pytest.raises(BulkExportFailed, match="not-found"):
        bulk.wait(STATUS)


@responses.activate
def test_an_expired_token_is_renewed_once(bulk, tokens):
    responses.get(STATUS, status=401)
    responses.get(STATUS, json=manifest())
    bulk.wait(STATUS)
    assert tokens.refreshed == 1
    assert responses.calls[1].request.headers["Authorization"] == "Bearer token-1"


@responses.activate
def test_records_are_streamed_line_by_line(bulk):
    lines = [{"resourceType": "Encounter", "id": "e1"}, {"resourceType": "Encounter", "id": "e2"}]
    body = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    responses.get(FILE, body=body, content_type="application/fhir+ndjson")
    got = list(bulk.records(ExportFile(type="Encounter", url=FILE), requires_access_token=True))
    assert got == lines
    request = responses.calls[0].request
    assert request.headers["Accept"] == "application/fhir+ndjson"
    assert request.headers["Authorization"] == "Bearer token-0"


@responses.activate
def test_a_file_over_the_cap_is_refused(time_, tokens):
    bulk = BulkDataClient(
        base_url=BASE, tokens=tokens, clock=time_.clock, sleep=time_.sleep, max_file_bytes=100
    )
    responses.get(FILE, body=json.dumps({"resourceType": "Encounter", "pad": "x" * 200}))
    with pytest.raises(BulkExportFailed, match="larger than 100 bytes"):
        list(bulk.records(ExportFile(type="Encounter", url=FILE), requires_access_token=True))


@responses.activate
def test_a_line_that_is_not_a_resource_fails_naming_its_number(bulk):
    responses.get(FILE, body='{"resourceType": "Encounter"}\nnot json\n')
    with pytest.raises(BulkExportFailed, match="Line 2"):
        list(bulk.records(ExportFile(type="Encounter", url=FILE), requires_access_token=True))


def test_a_file_elsewhere_that_needs_the_token_is_not_fetched(bulk):
    elsewhere = ExportFile(type="Encounter", url="https://files.example/e.ndjson")
    with pytest.raises(BulkExportFailed, match="token is sent only"):
        list(bulk.records(elsewhere, requires_access_token=True))


@responses.activate
def test_a_file_elsewhere_without_a_token_is_fetched_without_it(bulk):
    url = "https://files.example/e.ndjson"
    responses.get(url, body='{"resourceType": "Encounter", "id": "e1"}')
    got = list(bulk.records(ExportFile(type="Encounter", url=url), requires_access_token=False))
    assert got == [{"resourceType": "Encounter", "id": "e1"}]
    assert "Authorization" not in responses.calls[0].request.headers


@responses.activate
def test_delete_is_best_effort(bulk):
    responses.delete(STATUS, status=500)
    bulk.delete(STATUS)  # logged, not raised
    assert responses.calls[0].request.method == "DELETE"


def test_manifest_without_requires_access_token_still_keeps_the_token_on_origin():
    parsed = ExportManifest.parse({"output": [{"type": "Encounter", "url": FILE}]})
    assert parsed.requires_access_token is True
    with pytest.raises(BulkExportFailed, match="not a JSON object"):
        ExportManifest.parse([])
