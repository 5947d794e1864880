"""What operators see: Prometheus metrics, a request id on every request and log line,
liveness and readiness.

- `GET /metrics` — Prometheus text format (https://prometheus.io/docs/instrumenting/exposition_formats/).
  Open to loopback clients that came through no proxy (no `X-Forwarded-For`), or to
  `Authorization: Bearer $SMARTAPP_ADMIN_TOKEN`; anyone else gets 403.
- `X-Request-ID` — a well-formed one sent by the client or proxy is kept, else one is
  made up; it is echoed on the response and put on every log line of the request.
- `GET /healthz` — the process is alive (touches nothing). `GET /readyz` — the store
  answers and its schema is at the newest migration; 503 otherwise.
- `SMARTAPP_REQUEST_TIMING_LOG` — one JSON line per request appended to that file by every
  process (`route`, `status`, `ms`, `cpu_ms`, `request_id`, `pid`): exact server-side
  percentiles across processes, which the histograms' buckets cannot give (`make load`).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from flask import Flask, Response, g, has_request_context, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from smartapp.config import Settings
from smartapp.db import Database, get_database, utcnow

if TYPE_CHECKING:
    from smartapp.suggestions.registry import KindRun

log = logging.getLogger(__name__)

#: What a client may send as X-Request-ID (anything else is replaced, never logged).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_RULE_PARAM = re.compile(r"<(?:[^:<>]+:)?[^<>]+>")
EXPOSITION = "text/plain; version=0.0.4; charset=utf-8"


def route_label(method: str, rule: str | None) -> str:
    """`METHOD /path` with every path parameter as `{id}` (one series per route, not per id)."""
    if rule is None:
        return f"{method} unmatched"
    return f"{method} {_RULE_PARAM.sub('{id}', rule)}"


def request_id() -> str | None:
    """The current request's id, outside a request None."""
    if not has_request_context():
        return None
    return getattr(g, "request_id", None)


class _OutboxCollector(Collector):
    """Notes kept here until the EHR has them: how many, and the oldest one's age."""

    def __init__(self, database: Database) -> None:
        self._db = database

    def collect(self) -> Iterator[Metric]:
        from smartapp.notes.models import SavedNote

        depth = GaugeMetricFamily(
            "smartapp_outbox_pending_notes", "Saved notes not yet in the chart (pending)."
        )
        age = GaugeMetricFamily(
            "smartapp_outbox_oldest_pending_seconds",
            "Age of the oldest pending note (0 when none is pending).",
        )
        try:
            with self._db.session() as session:
                count, oldest = session.execute(
                    select(func.count(SavedNote.id), func.min(SavedNote.created_at)).where(
                        SavedNote.status == "pending"
                    )
                ).one()
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even with the store down
            log.warning("outbox metrics unavailable: %s", type(exc).__name__)
            return
        depth.add_metric([], float(count or 0))
        age.add_metric([], _age_seconds(oldest))
        yield depth
        yield age


def _age_seconds(oldest: datetime | None) -> float:
    if oldest is None:
        return 0.0
    if oldest.tzinfo is None:  # SQLite in an aggregate loses the column's type
        from datetime import UTC

        oldest = oldest.replace(tzinfo=UTC)
    return max(0.0, (utcnow() - oldest).total_seconds())


class Metrics:
    """The app's metrics, on a registry of its own (one per app, so tests do not collide)."""

    def __init__(self, database: Database) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "smartapp_request_seconds",
            "Server-side request latency by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "smartapp_errors_total",
            "Error answers by error code (the JSON body's error.code).",
            ["code"],
            registry=self.registry,
        )
        self.chart_load_seconds = Histogram(
            "smartapp_chart_load_seconds",
            "Time to read one launch's chart from the EHR.",
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.chart_load_requests = Histogram(
            "smartapp_chart_load_round_trips",
            "HTTP requests to the EHR per chart read.",
            registry=self.registry,
            buckets=(1, 2, 3, 4, 6, 8, 12, 20, 50),
        )
        self.engine_seconds = Histogram(
            "smartapp_engine_seconds",
            "Time to draft one kind, by kind and configured engine (llm: the LLM's latency).",
            ["kind", "engine"],
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40),
        )
        self.engine_fallbacks = Counter(
            "smartapp_engine_fallbacks_total",
            "Kinds whose configured engine did not answer and the built-in rules did instead.",
            ["kind", "engine"],
            registry=self.registry,
        )
        self.llm_cards_refused = Counter(
            "smartapp_llm_cards_refused_total",
            "Cards of an LLM answer dropped unseen for naming another kind than the one asked "
            "(reason: unknown, not_enabled, other_kind).",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.registry.register(_OutboxCollector(database))

    def chart_loaded(self, *, seconds: float, round_trips: int) -> None:
        self.chart_load_seconds.observe(seconds)
        self.chart_load_requests.observe(round_trips)

    def kinds_drafted(self, runs: Iterable[KindRun]) -> None:
        for run in runs:
            self.engine_seconds.labels(run.kind, run.engine).observe(run.elapsed_ms / 1000.0)
            if run.fallback_reason:
                self.engine_fallbacks.labels(run.kind, run.engine).inc()
            for reason, count in run.refused_cards.items():
                self.llm_cards_refused.labels(run.kind, reason).inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimingLog:
    """Appends one JSON line per request; lines from several processes interleave whole
    (each line is one `write` of a few hundred bytes on a file opened with O_APPEND)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._file: IO[str] | None = None

    def write(
        self, *, route: str, status: int, ms: float, cpu_ms: float, request_id: str | None
    ) -> None:
        line = json.dumps(
            {
                "route": route,
                "status": status,
                "ms": round(ms, 3),
                "cpu_ms": round(cpu_ms, 3),
                "request_id": request_id,
                "pid": os.getpid(),
                # When it ended (epoch seconds): a level's timeline, for finding its queues.
                "at": round(time.time(), 3),
            }
        )
        with self._lock:
            if self._file is None:
                # Opened in the process that writes (after a fork), line-buffered.
                self._file = self._path.open("a", encoding="utf-8", buffering=1)
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def get_metrics(app: Flask) -> Metrics:
    metrics: Metrics = app.extensions["smartapp.metrics"]
    return metrics


def _may_scrape(settings: Settings) -> bool:
    header = request.headers.get("Authorization", "")
    if settings.admin_token and header.startswith("Bearer "):
        token = header.removeprefix("Bearer ").strip()
        return hmac.compare_digest(token.encode("utf-8"), settings.admin_token.encode("utf-8"))
    # A proxy on this host makes every client look local: only a direct loopback client.
    if request.headers.get("X-Forwarded-For") or request.headers.get("Forwarded"):
        return False
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def init_app(app: Flask) -> None:
    settings: Settings = app.extensions["smartapp.settings"]
    metrics = Metrics(get_database(app))
    app.extensions["smartapp.metrics"] = metrics
    timing_log = (
        RequestTimingLog(settings.request_timing_log) if settings.request_timing_log else None
    )

    @app.before_request
    def _start() -> None:
        sent = request.headers.get("X-Request-ID", "")
        g.request_id = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex
        g.request_started = time.perf_counter()
        # waitress serves a request on one thread: its CPU time is the request's.
        g.request_cpu_started = time.thread_time()

    @app.after_request
    def _finish(response: Response) -> Response:
        rid = getattr(g, "request_id", None)
        if rid:
            response.headers["X-Request-ID"] = rid
        started = getattr(g, "request_started", None)
        if started is not None and request.endpoint != "metrics":
            rule = request.url_rule.rule if request.url_rule is not None else None
            route = route_label(request.method, rule)
            elapsed = time.perf_counter() - started
            metrics.requests.labels(route, str(response.status_code)).observe(elapsed)
            if timing_log is not None:
                cpu = time.thread_time() - getattr(g, "request_cpu_started", time.thread_time())
                timing_log.write(
                    route=route,
                    status=response.status_code,
                    ms=elapsed * 1000,
                    cpu_ms=cpu * 1000,
                    request_id=rid,
                )
        if response.status_code >= 400 and response.is_json:
            body: Any = response.get_json(silent=True)
            error = body.get("error") if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            metrics.errors.labels(str(code) if code else f"http_{response.status_code}").inc()
        return response

    def scrape() -> Response:
        if not _may_scrape(settings):
            return Response(
                "metrics: loopback or the admin token only\n", 403, mimetype="text/plain"
            )
        return Response(metrics.exposition(), mimetype=EXPOSITION)

    app.add_url_rule("/metrics", "metrics", scrape, methods=["GET"])

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            ready, detail = get_database(app).at_head()
        except Exception as exc:  # noqa: BLE001 - not ready is an answer, not an error
            ready, detail = False, f"store unreachable ({type(exc).__name__})"
        status = 200 if ready else 503
        return jsonify({"status": "ready" if ready else "unavailable", "store": detail}), status
