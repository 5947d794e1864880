"""The load benchmark (`make load`): simulated clinicians against `smartapp serve`, on loopback.

The sandbox EHR runs in a child process; for each level the app is started afresh as
`smartapp serve --processes N` (a store of its own: a new SQLite file, or the PostgreSQL
database of `SMARTAPP_LOAD_DATABASE_URL` emptied and migrated), and N clinicians (threads of
this process) each go through whole sessions as the sidebar does them:

  EHR launch (the sandbox mints it; real OAuth with PKCE through the app's /launch and
  /callback) → the sidebar page → GET /api/context → GET /api/notes → GET /api/suggestions
  (the first: the chart is read) → three decisions → poll GET /api/suggestions/pending once a
  second while LLM kinds are on their way, reading the suggestions again as they arrive →
  GET /api/suggestions (warm) → GET /api/note/preview → POST /api/note → GET /api/notes.

Each clinician signs in as one of the sandbox's practitioners, and no two clinicians of a
round open the same patient as the same practitioner (that would be one clinician's two
tabs, which share the visit's suggestions and decisions).

**Think time.** A clinician reads between clicks, so by default (`--think-s 4`) each
clinician pauses before every action a person takes — opening the next chart, deciding on
a card (three times), opening the note preview, saving the note — for a seeded exponential
time of that mean (truncated at 4x the mean, so that a level ends in bounded time; seeded
per clinician by `--seed`, so a run repeats). Before the first chart each clinician waits a
uniform time over one session's think time (6 pauses x the mean): clinicians already at
work are at random points of their own rounds, so launches arrive spread out, at about the
rate the level's clinicians keep up (32 clinicians: 1.3 launches a second at 4 s), not all
at one instant (that burst is the saturation mode's). The requests the sidebar's script
makes by itself (the page's context, notes and suggestions, the polls while LLM drafts are
on their way, the suggestions re-read when they arrive, the notes after a save) follow at
once, as in the browser. Why 4 s:
a card is two to four sentences with its citations, 30-60 words, which takes a reader at
200-250 words a minute 8-15 s; 4 s is the busiest plausible clinician (one who glances and
clicks), so the load is, if anything, heavier than a real one. A session then lasts about
half a minute of think time, where a real visit takes 15-20 minutes: the arrival rate of 32
simulated clinicians is that of several hundred real ones. `--think-s 0` is the saturation
mode that earlier runs measured: a closed loop with no think time and every clinician
starting at once, each thread firing its next request as soon as the last one answers;
latencies there are mostly the queue for the 2 cores (the load generator, the sandbox EHR,
the app's processes and PostgreSQL share them). `make load` runs the levels with think time
and then `--saturation-clinicians` (32) in the saturation mode, so both are in the file.

Times are server-side: every app process appends one line per request to the file named by
`SMARTAPP_REQUEST_TIMING_LOG` (route, status, ms, the request thread's CPU ms, the request id
this benchmark sent). App CPU per session is the app processes' own CPU (user + system, from
/proc, background threads included) over the level divided by its sessions; RSS is the sum of
the processes' peak resident sets. One level puts the LLM kinds on a fake OpenAI-compatible
endpoint that answers after 35 s, to show the first suggestions do not wait on it.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from smartapp.bench import BenchmarkError, percentile

DEFAULT_CLINICIANS = (1, 8, 32, 64)
#: Each level runs at least this many sessions (a clinician does several when they are few).
DEFAULT_MIN_SESSIONS = 8
DEFAULT_LLM_DELAY_S = 35.0
#: The mean pause before each of a clinician's own actions (see the module docstring).
DEFAULT_THINK_S = 4.0
#: A pause is at most this many times the mean (the exponential's tail, cut).
THINK_CAP = 4.0
#: A clinician's own actions in one session: open the chart, three decisions, open the
#: note, save it (each follows a pause).
PAUSES_PER_SESSION = 6
DEFAULT_SEED = 14
#: Levels run again in the saturation mode (no think time), on PostgreSQL x2 when there is one.
DEFAULT_SATURATION_CLINICIANS = (32,)
#: The slow-LLM level: the issue's 32 clinicians on 2 processes.
LLM_LEVEL_CLINICIANS = 32
#: The site's `[llm] timeout_seconds` in the slow-LLM level: past the LLM's delay, so its
#: drafts do arrive (those still queued behind the per-process concurrency fall back).
LLM_TIMEOUT_S = 40
#: How long a clinician waits for the LLM's drafts before saving the note anyway.
POLL_LIMIT_S = 50.0
POLL_INTERVAL_S = 1.0  # as the sidebar polls (static/js/sidebar.js POLL_MS)
TIMEOUT = (5.0, 60.0)
PERCENTILES = (50, 95, 99)
#: The sidebar page's CSRF token, as the page carries it.
_CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
#: Sandbox patients with ordinary charts (the large benchmark chart is left to `make bench`).
PATIENTS = tuple(f"pt-{n:02d}" for n in range(1, 24))
LOOPBACK = ("127.0.0.1", "localhost", "localhost.local")


# -- the figures ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Timing:
    """One request as an app process logged it."""

    route: str
    status: int
    ms: float
    cpu_ms: float
    request_id: str | None


def parse_timings(lines: Sequence[str]) -> list[Timing]:
    """The timing log's lines (blank or torn lines skipped: a process may be stopping)."""
    timings = []
    for line in lines:
        try:
            raw = json.loads(line)
            timings.append(
                Timing(
                    route=str(raw["route"]),
                    status=int(raw["status"]),
                    ms=float(raw["ms"]),
                    cpu_ms=float(raw["cpu_ms"]),
                    request_id=raw.get("request_id"),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue
    return timings


def spread(values: Sequence[float]) -> dict[str, float]:
    """p50, p95 and p99 (linear interpolation between closest ranks), in ms to 0.1."""
    return {f"p{q}": round(percentile(values, q), 1) for q in PERCENTILES}


def route_figures(timings: Sequence[Timing]) -> dict[str, dict[str, float | int]]:
    """Per route (`METHOD /path`, ids as `{id}`): server-side ms percentiles, count, CPU p50."""
    by_route: dict[str, list[Timing]] = {}
    for timing in timings:
        by_route.setdefault(timing.route, []).append(timing)
    figures: dict[str, dict[str, float | int]] = {}
    for route in sorted(by_route):
        rows = by_route[route]
        figures[route] = {
            **spread([t.ms for t in rows]),
            "count": len(rows),
            "cpu_ms_p50": round(percentile([t.cpu_ms for t in rows], 50), 1),
        }
    return figures


def tagged(timings: Sequence[Timing], suffix: str) -> list[float]:
    """Server-side ms of the requests whose id this benchmark ended with `suffix`."""
    return [t.ms for t in timings if t.request_id and t.request_id.endswith(suffix)]


#: The keys every level has (the contract's first, then what explains them).
LEVEL_KEYS = (
    "clinicians",
    "processes",
    "store",
    "errors",
    "app_cpu_ms_per_session",
    "rss_mb",
    "routes",
)


def build_level(
    *,
    clinicians: int,
    processes: int,
    store: str,
    llm: str,
    sessions: int,
    errors: Sequence[str],
    timings: Sequence[Timing],
    app_cpu_ms: float,
    rss_mb: float,
    wall_s: float,
    think_s: float = 0.0,
    lock_waits: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One level of `bench/load.json`."""
    first = tagged(timings, ".first")
    warm = tagged(timings, ".warm")
    return {
        "clinicians": clinicians,
        "processes": processes,
        "store": store,
        "errors": len(errors),
        "app_cpu_ms_per_session": round(app_cpu_ms / sessions, 1) if sessions else None,
        "rss_mb": round(rss_mb, 1),
        "routes": route_figures(timings),
        "llm": llm,
        # The mean pause before a clinician's own actions; 0: the saturation mode.
        "think_s": think_s,
        "mode": "think" if think_s > 0 else "saturation",
        "sessions": sessions,
        # The session's first GET /api/suggestions (the chart is read, or was read ahead).
        "first_suggestions": spread(first) if first else None,
        # GET /api/suggestions once the snapshot is in the store.
        "warm_suggestions": spread(warm) if warm else None,
        "server_errors": sum(1 for t in timings if t.status >= 500),
        "error_samples": list(dict.fromkeys(errors))[:5],
        "wall_s": round(wall_s, 1),
        # PostgreSQL backends of the app waiting on a lock, sampled (None on SQLite).
        "lock_waits": dict(lock_waits) if lock_waits is not None else None,
    }


def build_report(
    *, machine: Mapping[str, Any], levels: Sequence[Mapping[str, Any]], **extra: Any
) -> dict[str, Any]:
    """`bench/load.json`: the machine, then the levels in the order they ran."""
    for level in levels:
        missing = [k for k in LEVEL_KEYS if k not in level]
        if missing:
            raise ValueError(f"a level lacks {', '.join(missing)}")
    return {"machine": dict(machine), "levels": [dict(level) for level in levels], **extra}


def machine_description() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor()
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


# -- processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_tree(pid: int) -> list[int]:
    """The process and its children (the serving processes of `serve --processes N`)."""
    found = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            children = (task / "children").read_text(encoding="utf-8").split()
            found.extend(int(c) for c in children)
    except OSError:
        pass  # gone, or no /proc: what was found stands
    return found


def _cpu_ms(pids: Sequence[int]) -> float:
    """User + system CPU of these processes so far, from /proc/PID/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) * 1000 / ticks  # utime, stime
    return total


def _peak_rss_mb(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def _child_environ(**extra: str) -> dict[str, str]:
    # Nothing of the developer's SMARTAPP_* may change what is measured.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTAPP_")}
    env.update(extra)
    return env


@dataclass(frozen=True, kw_only=True)
class EHR:
    ehr_url: str
    fhir_base: str
    #: The child process serving it (its CPU is reported beside the app's).
    pid: int | None = None
    #: The sandbox's practitioners: each clinician signs in as one of them.
    practitioners: tuple[str, ...] = ()


@contextmanager
def ehr_child(*, app_url: str, workdir: Path, latency_ms: int) -> Iterator[EHR]:
    """The sandbox EHR in a child process, with the app at `app_url` as a registered client."""
    log = (workdir / "ehr.log").open("w", encoding="utf-8")
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "smartapp.load",
            "--serve-ehr",
            "--app-url",
            app_url,
            "--instance",
            str(workdir / "ehr"),
            "--latency-ms",
            str(latency_ms),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=_child_environ(),
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child prints its URLs once it listens
        if not line:
            raise BenchmarkError(
                "the sandbox EHR did not start:\n"
                + (workdir / "ehr.log").read_text(encoding="utf-8")[-3000:]
            )
        urls = json.loads(line)
        listing = requests.get(f"{urls['ehr_url']}/_sandbox/", timeout=TIMEOUT).json()
        yield EHR(**urls, pid=child.pid, practitioners=tuple(listing.get("practitioners", ())))
    finally:
        if child.stdin is not None:
            child.stdin.close()  # the child stops when its stdin closes
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()  # this benchmark's own child, by its handle
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
        log.close()


def _serve_ehr(args: argparse.Namespace) -> int:
    """The child: the sandbox EHR alone, its URLs on one line of stdout, until stdin closes."""
    from smartapp.config import shipped
    from smartapp.sandbox.ehr import create_ehr_app
    from smartapp.sandbox.server import BackgroundServer

    # Threads for 64 clinicians' chart reads at once (the default 16 would queue them).
    # Connections: every clinician's browser keeps its keep-alive connection to the EHR
    # open after the launch's redirects (60 s idle), the app's pools hold theirs, and at
    # 64 clinicians that passed waitress's default limit of 100, past which it stops
    # accepting: the app's token requests then waited until their 20 s deadline and
    # /callback answered 503 (the 64-clinician errors of the 2026-12-03 run). An EHR in
    # production serves thousands of connections; so does this one here.
    server = BackgroundServer(
        "127.0.0.1", 0, public_host="localhost", threads=48, connection_limit=2000
    )
    manifest = json.loads(shipped("launch.json").read_text(encoding="utf-8"))
    ehr = create_ehr_app(
        data_dir=Path(args.instance),
        ehr_base_url=server.url,
        app_base_url=args.app_url,
        manifest=manifest,
        latency_ms=args.latency_ms,
    )
    server.set_app(ehr)
    server.start()
    try:
        print(json.dumps({"ehr_url": server.url, "fhir_base": f"{server.url}/fhir"}), flush=True)
        sys.stdin.read()
    finally:
        server.stop()
    return 0


@dataclass(kw_only=True)
class RunningApp:
    process: subprocess.Popen[bytes]
    url: str
    timing_log: Path
    log_path: Path

    def pids(self) -> list[int]:
        return _process_tree(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # serve forwards it to its processes
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in reversed(self.pids()):  # only this level's own processes
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # already gone
            self.process.wait()


def _prepare_store(database_url: str, secret_key: str) -> None:
    """An empty store at the newest migration (what `smartapp db upgrade` does)."""
    from smartapp.db import Database

    db = Database(database_url, secret_key=secret_key)
    try:
        if database_url.startswith("postgresql"):
            db.drop_all()  # the previous level's rows
        db.upgrade()
    finally:
        db.dispose()


def start_app(
    *,
    port: int,
    processes: int,
    ehr: EHR,
    database_url: str,
    workdir: Path,
    extra_env: Mapping[str, str],
    app_path: Path | None = None,
) -> RunningApp:
    secret_key = os.urandom(24).hex()
    _prepare_store(database_url, secret_key)
    timing_log = workdir / "timings.jsonl"
    log_path = workdir / "app.log"
    env = _child_environ(
        SMARTAPP_INSTANCE_PATH=str(workdir / "instance"),
        SMARTAPP_SECRET_KEY=secret_key,
        SMARTAPP_DATABASE_URL=database_url,
        SMARTAPP_ALLOWED_ISSUERS=ehr.fhir_base,
        SMARTAPP_PUBLIC_URL=f"http://127.0.0.1:{port}",
        SMARTAPP_REQUEST_TIMING_LOG=str(timing_log),
        # Every simulated clinician signs in from this one host: the per-address sign-in
        # limit (60 a minute) would refuse a 64-clinician level's launches with 429.
        SMARTAPP_SIGNIN_RATE_LIMIT="100000 per minute",
        **extra_env,
    )
    if app_path is not None:
        # The app from another checkout (an A/B against an older commit in one run); the
        # EHR, the clinicians and the figures stay this one's.
        env["PYTHONPATH"] = str(app_path)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smartapp.cli",
                "serve",
                "--port",
                str(port),
                "--processes",
                str(processes),
            ],
            env=env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    app = RunningApp(
        process=process, url=f"http://127.0.0.1:{port}", timing_log=timing_log, log_path=log_path
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(
                "the app did not start:\n" + log_path.read_text(encoding="utf-8")[-3000:]
            )
        try:
            if requests.get(f"{app.url}/readyz", timeout=2).status_code == 200:
                return app
        except requests.RequestException:
            pass  # not listening yet
        time.sleep(0.2)
    app.stop()
    raise BenchmarkError("the app did not answer /readyz within 90 s")


# -- lock waits on PostgreSQL ---------------------------------------------------------------

#: How often the app's PostgreSQL backends are looked at while a level runs.
LOCK_SAMPLE_S = 0.05


class LockSampler:
    """Samples `pg_stat_activity` of the level's database while it runs: how many of the
    app's backends are running a statement and how many of those wait on a lock (a row
    lock such as the audit chain's head shows as `Lock/transactionid` or `Lock/tuple`), and
    which statements wait. One connection of its own; a sample costs well under 1 ms."""

    def __init__(self, database_url: str) -> None:
        from sqlalchemy import create_engine

        self._engine = create_engine(database_url, pool_size=1, max_overflow=0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)
        self.samples = 0
        self.active = 0
        self.waiting = 0
        self.max_waiting = 0
        self.with_waiters = 0
        self.by_statement: dict[str, int] = {}

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._engine.dispose()

    def _run(self) -> None:
        from sqlalchemy import text

        query = text(
            "SELECT wait_event_type, left(regexp_replace(query, '\\s+', ' ', 'g'), 60) "
            "FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state = 'active'"
        )
        with self._engine.connect() as connection:
            while not self._stop.wait(LOCK_SAMPLE_S):
                try:
                    rows = connection.execute(query).all()
                    connection.rollback()
                except Exception:  # noqa: BLE001 - a lost sample is not a failed level
                    continue
                waiting = [str(q) for kind, q in rows if kind == "Lock"]
                self.samples += 1
                self.active += len(rows)
                self.waiting += len(waiting)
                self.max_waiting = max(self.max_waiting, len(waiting))
                self.with_waiters += bool(waiting)
                for statement in waiting:
                    self.by_statement[statement] = self.by_statement.get(statement, 0) + 1

    def figures(self) -> dict[str, Any]:
        n = max(1, self.samples)
        return {
            "samples": self.samples,
            "every_ms": round(LOCK_SAMPLE_S * 1000),
            "mean_active": round(self.active / n, 2),
            "mean_waiting": round(self.waiting / n, 2),
            "max_waiting": self.max_waiting,
            "share_with_waiters": round(self.with_waiters / n, 3),
            "waiting_statements": dict(
                sorted(self.by_statement.items(), key=lambda kv: -kv[1])[:5]
            ),
        }


# -- the slow LLM ---------------------------------------------------------------------------


_REFERENCE = re.compile(r"\b(Condition|Observation|AllergyIntolerance)/[A-Za-z0-9.\-]{1,64}")


class _SlowLLMHandler(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions endpoint that answers after `delay` seconds,
    citing the first chart resource the prompt names."""

    delay = DEFAULT_LLM_DELAY_S
    stopped = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length") or 0)
        prompt = self.rfile.read(length).decode("utf-8", "replace")
        if self.stopped.wait(self.delay):
            return
        found = _REFERENCE.search(prompt.replace("\\/", "/"))
        citation = found.group(0) if found else "Condition/unknown"
        answer = {
            "suggestions": [
                {
                    "title": "Chart summary",
                    "statements": [{"text": "Reviewed in the chart.", "citations": [citation]}],
                }
            ]
        }
        body = json.dumps(
            {
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": json.dumps(answer)}}
                ]
            }
        ).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the app gave up at its deadline and closed the connection

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return  # quiet


@contextmanager
def slow_llm(delay: float) -> Iterator[str]:
    stopped = threading.Event()
    handler = type("SlowLLM", (_SlowLLMHandler,), {"delay": delay, "stopped": stopped})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        stopped.set()
        server.shutdown()
        server.server_close()


LLM_SITE = """
[suggestions]
kinds = ["problem_summary", "medications", "vitals_labs", "allergies"]

[kinds.problem_summary]
engine = "llm"

[kinds.vitals_labs]
engine = "llm"

[kinds.allergies]
engine = "llm"

[llm]
model = "slow-model"
version = "load-1"
timeout_seconds = {timeout}
"""


# -- the clinicians ---------------------------------------------------------------------------


class _Browser(requests.Session):
    """A browser on loopback: follows redirects keeping cookies, sends the app's `Secure`
    cookies over http to 127.0.0.1 (a secure context for Chromium, not for Python's jar)."""

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        follow = kwargs.pop("allow_redirects", True)
        kwargs.setdefault("timeout", TIMEOUT)
        kwargs["allow_redirects"] = False
        response = super().request(str(method), str(url), *args, **kwargs)
        self._loopback()
        hops = 0
        while follow and response.is_redirect and hops < 10:
            target = urljoin(response.url, response.headers["Location"])
            response = super().request("GET", target, allow_redirects=False, timeout=TIMEOUT)
            self._loopback()
            hops += 1
        return response

    def _loopback(self) -> None:
        for cookie in self.cookies:
            if cookie.domain in LOOPBACK:
                cookie.secure = False


@dataclass(kw_only=True)
class Outcome:
    """What the clinicians of one level saw: sessions completed and what went wrong."""

    sessions: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, sessions: int = 0, error: str | None = None) -> None:
        with self.lock:
            self.sessions += sessions
            if error:
                self.errors.append(error)


class _Clinician:
    def __init__(
        self,
        *,
        number: int,
        level: str,
        app_url: str,
        ehr: EHR,
        think_s: float = 0.0,
        seed: int = DEFAULT_SEED,
        clinicians: int = 1,
    ) -> None:
        self.number = number
        self.clinicians = clinicians
        self.level = level
        self.app_url = app_url
        self.ehr = ehr
        self.think_s = think_s
        # One stream per clinician, from the seed and the level: a run repeats its pauses.
        self._rng = random.Random(f"{seed}:{level}:{number}")

    def chart(self, session_no: int) -> tuple[str, str | None]:
        """(patient, practitioner) of a session. No two clinicians of one round open the
        same patient as the same practitioner: that is one clinician's two tabs, which share
        the visit's suggestions and decisions (the 400 "nothing to save" at 64 clinicians
        signed in as one practitioner over 23 patients: another tab's newer chart read)."""
        people = self.ehr.practitioners or (None,)
        # The patients spread over all 23 as before; the 24th clinician on is the next
        # practitioner.
        patient = PATIENTS[(self.number * 7 + session_no) % len(PATIENTS)]
        return patient, people[(self.number // len(PATIENTS)) % len(people)]

    def think(self) -> None:
        """The pause before one of the clinician's own actions (none in the saturation mode)."""
        if self.think_s > 0:
            time.sleep(min(self._rng.expovariate(1 / self.think_s), THINK_CAP * self.think_s))

    def join(self) -> None:
        """Before the first session: a clinician already at work is at a random point of
        their own round of sessions, so the first launch comes after a uniform pause over
        one session's think time, not all at one instant (that burst is the saturation
        mode's)."""
        if self.think_s > 0:
            time.sleep(self._rng.uniform(0, PAUSES_PER_SESSION * self.think_s))

    def session(self, session_no: int) -> None:
        """One whole session; raises BenchmarkError naming the step that went wrong."""
        patient, user = self.chart(session_no)
        browser = _Browser()
        prefix = f"load-{self.level}-c{self.number}-s{session_no}"
        # The launch's requests and redirects carry it too (server-side times by session).
        browser.headers["X-Request-ID"] = f"{prefix}-launch"
        step = 0

        def call(method: str, path: str, tag: str = "", **kwargs: Any) -> Any:
            nonlocal step
            step += 1
            headers = {"X-Request-ID": f"{prefix}-{step}{tag}"}
            if method != "GET":
                headers["X-CSRF-Token"] = csrf
            response = browser.request(method, self.app_url + path, headers=headers, **kwargs)
            if response.status_code >= 400:
                raise BenchmarkError(
                    f"{method} {_route_of(path)}: HTTP {response.status_code}"
                    f"{_error_code(response)}"
                )
            return response

        try:
            if session_no:
                self.think()  # the clinician opens the next chart
            minted = requests.post(
                f"{self.ehr.ehr_url}/_sandbox/launch",
                json={"patient": patient, "user": user},
                timeout=TIMEOUT,
            )
            if minted.status_code != 201:
                raise BenchmarkError(f"the sandbox refused a launch (HTTP {minted.status_code})")
            page = browser.get(minted.json()["launch_url"])
            found = _CSRF_META.search(page.text) if page.status_code == 200 else None
            if found is None:
                raise BenchmarkError(
                    f"launch: HTTP {page.status_code}{_error_code(page)}, no sidebar page "
                    f"(at {_route_of(urlsplit(page.url).path)})"
                )
            csrf = found.group(1)
            call("GET", "/api/context")
            call("GET", "/api/notes")
            data = call("GET", "/api/suggestions", ".first").json()
            self._decide(call, data, self.think)
            pending = {p["kind"] for p in data.get("pending", [])}
            waited_until = time.monotonic() + POLL_LIMIT_S
            while pending and time.monotonic() < waited_until:
                time.sleep(POLL_INTERVAL_S)
                still = {
                    p["kind"] for p in call("GET", "/api/suggestions/pending").json()["pending"]
                }
                if still != pending:
                    call("GET", "/api/suggestions", ".arrived")
                pending = still
            call("GET", "/api/suggestions", ".warm")
            self.think()  # opens the note
            call("GET", "/api/note/preview")
            self.think()  # reads it, saves it
            saved = call("POST", "/api/note", json={})
            if saved.status_code not in (201, 202):
                raise BenchmarkError(f"POST /api/note: HTTP {saved.status_code}")
            call("GET", "/api/notes")
        except requests.RequestException as exc:
            raise BenchmarkError(f"step {step}: {type(exc).__name__}") from exc
        finally:
            browser.close()

    @staticmethod
    def _decide(call: Any, data: Mapping[str, Any], think: Any) -> None:
        """Accept one card, edit one, reject one (the cards the rules drafted), reading each
        before deciding."""
        pending = {p["kind"] for p in data.get("pending", [])}
        cards = [s for s in data.get("suggestions", []) if s.get("kind") not in pending]
        bodies = (
            {"action": "accept"},
            {"action": "edit", "text": "Reviewed with the patient today."},
            {"action": "reject", "reason": "not_relevant"},
        )
        for card, body in zip(cards, bodies, strict=False):
            think()
            call("POST", f"/api/suggestions/{card['id']}/feedback", json=body)


def _error_code(response: requests.Response) -> str:
    """ " (code)" from the app's JSON error, so that an error sample says what it was."""
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f" ({code})" if isinstance(code, str) else ""


def _route_of(path: str) -> str:
    return re.sub(r"/api/suggestions/[^/]+/feedback", "/api/suggestions/{id}/feedback", path)


def run_clinicians(
    *,
    clinicians: int,
    sessions_each: int,
    level: str,
    app_url: str,
    ehr: EHR,
    think_s: float = 0.0,
    seed: int = DEFAULT_SEED,
) -> Outcome:
    outcome = Outcome()
    # Every thread ready first; then, with think time, each opens its first chart after a
    # pause of its own (without, all at once: the saturation mode).
    start = threading.Barrier(clinicians)

    def clinician(number: int) -> None:
        person = _Clinician(
            number=number,
            level=level,
            app_url=app_url,
            ehr=ehr,
            think_s=think_s,
            seed=seed,
            clinicians=clinicians,
        )
        start.wait()
        person.join()
        for session_no in range(sessions_each):
            try:
                person.session(session_no)
                outcome.add(sessions=1)
            except BenchmarkError as exc:
                outcome.add(error=str(exc))

    threads = [threading.Thread(target=clinician, args=(n,)) for n in range(clinicians)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


# -- the run -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LevelPlan:
    clinicians: int
    processes: int
    store: str  # "sqlite" | "postgresql"
    llm_delay_s: float | None = None
    think_s: float = 0.0

    @property
    def name(self) -> str:
        llm = f"-llm{self.llm_delay_s:g}s" if self.llm_delay_s else ""
        think = f"-t{self.think_s:g}" if self.think_s else "-sat"
        return f"{self.store}-p{self.processes}-c{self.clinicians}{llm}{think}"


def plan_levels(
    clinicians: Sequence[int],
    *,
    postgres: bool,
    llm_delay_s: float | None,
    think_s: float = 0.0,
    saturation: Sequence[int] = (),
    stores: Sequence[str] = ("sqlite", "postgresql"),
) -> list[LevelPlan]:
    """SQLite on one process, PostgreSQL on two, then the slow-LLM level (on PostgreSQL
    when there is one), all with think time; then the saturation levels (no think time,
    on PostgreSQL x2 when there is one)."""
    plans = []
    if "sqlite" in stores:
        plans += [
            LevelPlan(clinicians=n, processes=1, store="sqlite", think_s=think_s)
            for n in clinicians
        ]
    if postgres and "postgresql" in stores:
        plans += [
            LevelPlan(clinicians=n, processes=2, store="postgresql", think_s=think_s)
            for n in clinicians
        ]
    if llm_delay_s:
        plans.append(
            LevelPlan(
                clinicians=LLM_LEVEL_CLINICIANS,
                processes=2,
                store="postgresql" if postgres else "sqlite",
                llm_delay_s=llm_delay_s,
                think_s=think_s,
            )
        )
    if think_s > 0:
        plans += [
            LevelPlan(
                clinicians=n,
                processes=2 if postgres else 1,
                store="postgresql" if postgres else "sqlite",
            )
            for n in saturation
        ]
    return plans


def run_level(
    plan: LevelPlan,
    *,
    ehr: EHR,
    port: int,
    workdir: Path,
    postgres_url: str | None,
    min_sessions: int,
    say: Any,
    seed: int = DEFAULT_SEED,
    app_path: Path | None = None,
) -> dict[str, Any]:
    level_dir = workdir / plan.name
    level_dir.mkdir()
    database_url = (
        postgres_url if plan.store == "postgresql" else f"sqlite:///{level_dir / 'app.db'}"
    )
    assert database_url is not None
    extra_env: dict[str, str] = {}
    llm = "none"
    with contextlib.ExitStack() as stack:
        if plan.llm_delay_s:
            base_url = stack.enter_context(slow_llm(plan.llm_delay_s))
            site = level_dir / "site.toml"
            site.write_text(LLM_SITE.format(timeout=LLM_TIMEOUT_S), encoding="utf-8")
            extra_env = {
                "SMARTAPP_CONFIG": str(site),
                "SMARTAPP_LLM_BASE_URL": base_url,
                "SMARTAPP_LLM_MODEL": "slow-model",
            }
            llm = f"answers after {plan.llm_delay_s:g} s (timeout_seconds {LLM_TIMEOUT_S})"
        app = start_app(
            port=port,
            processes=plan.processes,
            ehr=ehr,
            database_url=database_url,
            workdir=level_dir,
            extra_env=extra_env,
            app_path=app_path,
        )
        try:
            # Warm-up, unmeasured: each process imports and caches what it lazily needs.
            warm = (
                run_clinicians(
                    clinicians=2 * plan.processes,
                    sessions_each=1,
                    level=f"{plan.name}-warmup",
                    app_url=app.url,
                    ehr=ehr,
                )
                if not plan.llm_delay_s
                else Outcome()
            )
            if warm.errors:
                raise BenchmarkError(f"warm-up failed: {warm.errors[0]}")
            offset = app.timing_log.stat().st_size if app.timing_log.exists() else 0
            pids = app.pids()
            cpu_before = _cpu_ms(pids)
            ehr_pids = [ehr.pid] if ehr.pid else []
            ehr_cpu_before = _cpu_ms(ehr_pids)
            sessions_each = max(1, math.ceil(min_sessions / plan.clinicians))
            say(
                f"{plan.name}: {plan.clinicians} clinicians x {sessions_each} session(s), "
                f"{plan.processes} process(es), {plan.store}, LLM {llm}, "
                + (f"think {plan.think_s:g} s" if plan.think_s else "no think time (saturation)")
            )
            sampler = (
                stack.enter_context(LockSampler(database_url))
                if plan.store == "postgresql"
                else None
            )
            started = time.monotonic()
            outcome = run_clinicians(
                clinicians=plan.clinicians,
                sessions_each=sessions_each,
                level=plan.name,
                app_url=app.url,
                ehr=ehr,
                think_s=plan.think_s,
                seed=seed,
            )
            wall = time.monotonic() - started
            lock_waits = sampler.figures() if sampler is not None else None
            cpu = _cpu_ms(pids) - cpu_before
            ehr_cpu = _cpu_ms(ehr_pids) - ehr_cpu_before
            rss = _peak_rss_mb([p for p in pids if p != app.process.pid or plan.processes == 1])
            with app.timing_log.open(encoding="utf-8") as log:
                log.seek(offset)
                timings = parse_timings(log.read().splitlines())
        finally:
            app.stop()
    level = build_level(
        clinicians=plan.clinicians,
        processes=plan.processes,
        store=plan.store,
        llm=llm,
        sessions=outcome.sessions,
        errors=outcome.errors,
        timings=[t for t in timings if (t.request_id or "").startswith(f"load-{plan.name}-c")],
        app_cpu_ms=cpu,
        rss_mb=rss,
        wall_s=wall,
        think_s=plan.think_s,
        lock_waits=lock_waits,
    )
    # The sandbox EHR shares the cores: what it spent serving the level, per session.
    level["ehr_cpu_ms_per_session"] = (
        round(ehr_cpu / outcome.sessions, 1) if outcome.sessions else None
    )
    first, warm_figures = level["first_suggestions"], level["warm_suggestions"]
    say(
        f"  {outcome.sessions} sessions, {len(outcome.errors)} errors, {wall:.0f} s; "
        f"first suggestions p95 {first['p95'] if first else '-'} ms, "
        f"warm p95 {warm_figures['p95'] if warm_figures else '-'} ms, "
        f"app CPU {level['app_cpu_ms_per_session']} ms/session"
    )
    return level


def run(args: argparse.Namespace) -> int:
    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    postgres_url = os.environ.get("SMARTAPP_LOAD_DATABASE_URL") or None
    skipped = []
    if not postgres_url:
        skipped.append(
            "PostgreSQL levels skipped: SMARTAPP_LOAD_DATABASE_URL is not set (a database "
            "of its own, e.g. createdb -h 127.0.0.1 -U postgres smartapp_load)"
        )
        say("load: " + skipped[0])
    plans = plan_levels(
        args.clinicians,
        postgres=postgres_url is not None,
        llm_delay_s=None if args.no_llm_level else args.llm_delay,
        think_s=args.think_s,
        saturation=args.saturation_clinicians,
        stores=args.stores,
    )
    machine = machine_description()
    began = time.monotonic()
    port = _free_port()
    levels = []
    workdir = Path(tempfile.mkdtemp(prefix="smartapp-load-"))
    try:
        say("load: starting the sandbox EHR (first run: generating its patients, ~10 s)")
        with ehr_child(
            app_url=f"http://127.0.0.1:{port}", workdir=workdir, latency_ms=args.latency_ms
        ) as ehr:
            for plan in plans:
                levels.append(
                    run_level(
                        plan,
                        ehr=ehr,
                        port=port,
                        workdir=workdir,
                        postgres_url=postgres_url,
                        min_sessions=args.min_sessions,
                        say=say,
                        seed=args.seed,
                        app_path=args.app_path,
                    )
                )
    except BenchmarkError as exc:
        print(f"load: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = build_report(
        machine=machine,
        levels=levels,
        skipped=skipped,
        ehr_latency_ms=args.latency_ms,
        min_sessions=args.min_sessions,
        think_s=args.think_s,
        seed=args.seed,
        app_path=str(args.app_path) if args.app_path else None,
        duration_s=round(time.monotonic() - began, 1),
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_table(report))
    print(f"\nwrote {args.out} in {report['duration_s']:.0f} s")
    return 1 if any(level["errors"] for level in levels) else 0


def format_table(report: Mapping[str, Any]) -> str:
    lines = [
        f"Load on {report['machine']['cpus']} CPUs ({report['machine']['cpu']}), server-side ms",
        "",
        f"  {'level':32} {'sess':>5} {'err':>4} {'CPU ms/s':>8} {'RSS MB':>7}"
        f" {'first p95':>9} {'warm p50':>8} {'warm p95':>8} {'ctx p95':>8}",
    ]
    for level in report["levels"]:
        first = level.get("first_suggestions") or {}
        warm = level.get("warm_suggestions") or {}
        context = level["routes"].get("GET /api/context", {})
        name = f"{level['store']} x{level['processes']} {level['clinicians']} clin"
        if level.get("llm") not in (None, "none"):
            name += " slow LLM"
        name += f" think {level['think_s']:g}s" if level.get("think_s") else " saturation"
        lines.append(
            f"  {name:32} {level.get('sessions', 0):5d} {level['errors']:4d}"
            f" {level['app_cpu_ms_per_session'] or 0:8.0f} {level['rss_mb']:7.0f}"
            f" {first.get('p95', 0):9.1f} {warm.get('p50', 0):8.1f} {warm.get('p95', 0):8.1f}"
            f" {context.get('p95', 0):8.1f}"
        )
    for note in report.get("skipped", []):
        lines.append(f"  ({note})")
    return "\n".join(lines)


def _clinician_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(n) for n in text.split(",") if n.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError("a comma-separated list of whole numbers") from exc
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("at least one level, each of 1 clinician or more")
    return counts


def _clinician_counts_or_none(text: str) -> tuple[int, ...]:
    return () if text.strip().lower() in ("", "none") else _clinician_counts(text)


def _stores(text: str) -> tuple[str, ...]:
    stores = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in stores if s not in ("sqlite", "postgresql")]
    if unknown or not stores:
        raise argparse.ArgumentTypeError("sqlite, postgresql or both, comma-separated")
    return stores


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smartapp.load",
        description="Load benchmark: simulated clinicians' sessions against `smartapp serve` "
        "and the sandbox EHR on loopback; writes bench/load.json.",
    )
    parser.add_argument(
        "--clinicians",
        type=_clinician_counts,
        default=DEFAULT_CLINICIANS,
        help="clinicians per level, comma-separated (default 1,8,32,64)",
    )
    parser.add_argument(
        "--min-sessions",
        type=int,
        default=DEFAULT_MIN_SESSIONS,
        help=f"sessions per level at least (default {DEFAULT_MIN_SESSIONS})",
    )
    parser.add_argument(
        "--llm-delay",
        type=float,
        default=DEFAULT_LLM_DELAY_S,
        help=f"seconds the slow LLM takes to answer (default {DEFAULT_LLM_DELAY_S:g})",
    )
    parser.add_argument("--no-llm-level", action="store_true", help="skip the slow-LLM level")
    parser.add_argument(
        "--think-s",
        type=float,
        default=DEFAULT_THINK_S,
        help="mean pause (s) before each of a clinician's own actions, seeded exponential; "
        f"0: the saturation mode, no pauses and every clinician at once (default "
        f"{DEFAULT_THINK_S:g})",
    )
    parser.add_argument(
        "--saturation-clinicians",
        type=_clinician_counts_or_none,
        default=DEFAULT_SATURATION_CLINICIANS,
        help="levels run again with no think time after the others, comma-separated, "
        "or 'none' (default 32)",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the pauses' seed")
    parser.add_argument(
        "--app-path",
        type=Path,
        default=None,
        help="run the app from this checkout (its PYTHONPATH), e.g. an older commit's "
        "worktree for an A/B; the EHR and the clinicians are this one's",
    )
    parser.add_argument(
        "--stores",
        type=_stores,
        default=("sqlite", "postgresql"),
        help="which stores' levels to run: sqlite,postgresql (default both)",
    )
    parser.add_argument(
        "--latency-ms", type=int, default=0, help="simulated EHR round trip (default 0)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/load.json"))
    parser.add_argument("--keep", action="store_true", help="keep the logs and stores")
    parser.add_argument("--quiet", action="store_true")
    # The child process that serves the sandbox EHR (internal).
    parser.add_argument("--serve-ehr", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--app-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--instance", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve_ehr:
        if not args.instance or not args.app_url:
            parser.error("--serve-ehr needs --instance and --app-url")
        return _serve_ehr(args)
    if args.min_sessions < 1 or args.latency_ms < 0 or args.think_s < 0:
        parser.error("--min-sessions must be at least 1, --latency-ms and --think-s 0 or more")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
