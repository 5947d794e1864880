"""The chart read ahead at the callback (SMARTAPP_PREFETCH_CHART): read once, never twice.

The EHR is a stand-in for `load_snapshot` that blocks until the test lets it answer, so
each test decides what is queued, under way or done when the sidebar's request arrives.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask

from smartapp import create_app
from smartapp.errors import TemporaryUpstreamError
from smartapp.fhir.cache import SnapshotCache
from smartapp.fhir.snapshot import ChartSnapshot
from smartapp.httplimits import limited_session
from smartapp.notes import chart_source
from smartapp.notes.chart_source import LaunchChartSource
from smartapp.smart.services import get_services
from smartapp.smart.views import SESSION_STARTED_EXT
from tests.conftest import make_settings
from tests.unit.notes.views_support import fixture_snapshot, launch


class GatedEHR:
    """`load_snapshot` for the test: each read waits for its gate, then answers or fails."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.started: dict[str, threading.Event] = {}
        self.gates: dict[str, threading.Event] = {}
        self.fail: set[str] = set()
        self.chart = fixture_snapshot()
        self._lock = threading.Lock()

    def gate(self, patient: str) -> threading.Event:
        with self._lock:
            return self.gates.setdefault(patient, threading.Event())

    def began(self, patient: str) -> threading.Event:
        with self._lock:
            return self.started.setdefault(patient, threading.Event())

    def __call__(self, _client: Any, *, patient_id: str, **_kwargs: Any) -> ChartSnapshot:
        with self._lock:
            self.reads.append(patient_id)
        self.began(patient_id).set()
        assert self.gate(patient_id).wait(timeout=30), "the test never opened the gate"
        if patient_id in self.fail:
            raise TemporaryUpstreamError("the EHR answered 503")
        return self.chart


@pytest.fixture
def ehr(monkeypatch: pytest.MonkeyPatch) -> GatedEHR:
    fake = GatedEHR()
    monkeypatch.setattr(chart_source, "load_snapshot", fake)
    return fake


def _source(app: Flask, *, threads: int = 4) -> LaunchChartSource:
    services = get_services(app)
    return LaunchChartSource(
        settings=services.settings,
        services=services,
        cache=SnapshotCache(app.extensions["smartapp.db"], ttl_seconds=300),
        http=limited_session(),
        prefetch_threads=threads,
    )


def _finish(source: LaunchChartSource) -> None:
    pool = source._prefetch_pool  # noqa: SLF001 - the test waits for its threads to end
    if pool is not None:
        pool.shutdown(wait=True)


def test_a_read_under_way_is_waited_for_not_repeated(app: Flask, ehr: GatedEHR) -> None:
    source = _source(app)
    context = launch(app, app.test_client(), patient="pat-1")
    source.prefetch(context)
    assert ehr.began("pat-1").wait(timeout=30)
    answer: list[ChartSnapshot] = []
    asking = threading.Thread(target=lambda: answer.append(source.snapshot(context)))
    asking.start()
    ehr.gate("pat-1").set()
    asking.join(timeout=30)
    _finish(source)
    assert ehr.reads == ["pat-1"]
    assert answer and answer[0].patient == ehr.chart.patient
    assert source.cached(context) is not None


def test_a_read_ahead_still_queued_gives_way_to_the_request(app: Flask, ehr: GatedEHR) -> None:
    source = _source(app, threads=1)
    client = app.test_client()
    first = launch(app, client, patient="pat-1")
    second = launch(app, client, patient="pat-2")
    source.prefetch(first)  # takes the only thread and holds it
    assert ehr.began("pat-1").wait(timeout=30)
    source.prefetch(second)  # queued behind it
    queued = source._reading_ahead[second.session_id]  # noqa: SLF001
    ehr.gate("pat-2").set()
    source.snapshot(second)  # reads it itself: the queued read ahead is cancelled
    ehr.gate("pat-1").set()
    _finish(source)
    assert queued.cancelled()
    assert sorted(ehr.reads) == ["pat-1", "pat-2"]


def test_a_failed_read_ahead_is_met_by_the_request(app: Flask, ehr: GatedEHR) -> None:
    source = _source(app)
    context = launch(app, app.test_client(), patient="pat-1")
    ehr.fail.add("pat-1")
    ehr.gate("pat-1").set()
    source.prefetch(context)
    _finish(source)
    with pytest.raises(TemporaryUpstreamError):
        source.snapshot(context)
    assert ehr.reads == ["pat-1", "pat-1"]
    assert source.cached(context) is None


def test_only_a_clinician_launch_with_a_patient_is_read_ahead(app: Flask, ehr: GatedEHR) -> None:
    source = _source(app)
    context = launch(app, app.test_client(), patient="pat-1")
    source.prefetch(replace(context, purpose="admin"))
    source.prefetch(replace(context, patient_id=None))
    _finish(source)
    assert ehr.reads == []


def test_the_setting_puts_the_read_ahead_on_the_callback(tmp_path: Any) -> None:
    def hooks(**env: str) -> int:
        app = create_app(make_settings(tmp_path / env["SMARTAPP_PREFETCH_CHART"], **env))
        try:
            return len(app.extensions.get(SESSION_STARTED_EXT, ()))
        finally:
            app.extensions["smartapp.db"].dispose()  # no connection left open (PostgreSQL)

    assert make_settings(tmp_path, SMARTAPP_PREFETCH_CHART="").prefetch_chart is True
    assert hooks(SMARTAPP_PREFETCH_CHART="true") == hooks(SMARTAPP_PREFETCH_CHART="false") + 1
