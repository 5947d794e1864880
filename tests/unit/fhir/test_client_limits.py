"""Unit (real sockets on loopback): every FHIR request has a total deadline and a size cap.

A server that trickles a byte at a time keeps every read under the read timeout; only a
deadline on the whole exchange cuts it off. A huge answer is refused at the cap instead
of being held in memory.
"""

from __future__ import annotations

import json

import pytest
import responses

from smartapp.errors import ChartTooLarge, TemporaryUpstreamError
from smartapp.fhir.client import FHIRClient

from ..slow_http import SlowServer, slow_server
from .fakes import FakeTokens

PATIENT = json.dumps({"resourceType": "Patient", "id": "pat-1", "gender": "female"}).encode()


def client_for(base: str, **kwargs: object) -> FHIRClient:
    options: dict[str, object] = {"deadline": 0.5, "read_timeout": 20.0, "max_retries": 0}
    options.update(kwargs)
    return FHIRClient(f"{base}/fhir", tokens=FakeTokens(), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["trickle_body", "trickle_headers"])
def test_a_trickling_server_is_cut_off_at_the_deadline(mode: str) -> None:
    # A byte every 0.1 s: 80 bytes take 8 s, each read far inside the 20 s read timeout.
    server = SlowServer(mode=mode, body=PATIENT, interval=0.1)
    with slow_server(server) as base, client_for(base) as client:
        with pytest.raises(TemporaryUpstreamError) as caught:
            client.read("Patient", "pat-1")
        # The connection was closed under the server, well before it had sent everything.
        assert server.cut_off.wait(5)
        assert not server.finished.is_set()
    assert "did not answer in time" in caught.value.message
    assert "0.5 s" in caught.value.message


def test_the_deadline_covers_the_retries_too() -> None:
    server = SlowServer(mode="trickle_body", body=PATIENT, interval=0.1)
    with slow_server(server) as base, client_for(base, max_retries=3) as client:
        with pytest.raises(TemporaryUpstreamError):
            client.read("Patient", "pat-1")
    # Cut off once, and not tried again: the deadline was spent.
    assert server.requests == 1


def test_an_answer_within_the_deadline_and_the_cap_is_read() -> None:
    server = SlowServer(mode="flood", body=PATIENT)
    with slow_server(server) as base, client_for(base, deadline=10.0) as client:
        assert client.read("Patient", "pat-1")["id"] == "pat-1"


def test_an_answer_over_the_cap_is_refused_without_a_length() -> None:
    # 4 MiB of valid JSON, sent without Content-Length: counted as it arrives.
    padding = {"resourceType": "Patient", "id": "pat-1", "text": {"div": "x" * (4 << 20)}}
    server = SlowServer(mode="flood", body=json.dumps(padding).encode())
    with slow_server(server) as base:
        with client_for(base, deadline=10.0, max_response_bytes=1 << 20) as client:
            with pytest.raises(ChartTooLarge) as caught:
                client.read("Patient", "pat-1")
    assert caught.value.code == "chart_too_large"
    assert caught.value.message.startswith("The chart is too large to read in one go")
    assert "1 MB" in caught.value.message and "SMARTAPP_FHIR_MAX_MB" in caught.value.message


def test_an_answer_declaring_a_length_over_the_cap_is_refused_before_reading() -> None:
    with responses.RequestsMock() as rsps:
        rsps.get(
            "https://ehr.example/fhir/Patient/pat-1",
            body=PATIENT,
            headers={"Content-Length": str(64 << 20)},
            auto_calculate_content_length=False,
        )
        client = FHIRClient(
            "https://ehr.example/fhir", tokens=FakeTokens(), max_response_bytes=1 << 20
        )
        with pytest.raises(ChartTooLarge):
            client.read("Patient", "pat-1")


def test_json_nested_deeper_than_python_can_parse_is_a_bad_answer_not_a_crash() -> None:
    from smartapp.errors import FatalUpstreamError

    deep = b'{"resourceType": "Patient", "id": "p", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with responses.RequestsMock() as rsps:
        rsps.get("https://ehr.example/fhir/Patient/p", body=deep)
        client = FHIRClient("https://ehr.example/fhir", tokens=FakeTokens())
        with pytest.raises(FatalUpstreamError) as caught:
            client.read("Patient", "p")
    assert "nested too deeply" in caught.value.message
