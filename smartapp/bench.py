"""The chart-loading benchmark (`make bench`): the app's loader against a naive SMART client.

https://hl7.org/fhir/R4/http.html#transaction (batch) and https://hl7.org/fhir/R4/http.html#paging

The sandbox EHR runs in a child process (an EHR is another machine: its CPU time must not
compete with the app's for one interpreter lock) with a simulated round-trip time on every
FHIR request. The benchmark does a real SMART EHR launch against it (authorization code
with PKCE S256, the app's client_id and scopes from `launch.json`), and from the access
token on measures, repeatedly and alternately:

- the app: `load_snapshot` over `FHIRClient`, warm (the CapabilityStatement cached, as it is
  for every launch but the first in five minutes) and cold (cache cleared: `/metadata` too);
- the baseline: fhirclient 4.4.0 used as a typical SMART demo app uses it, one search per
  resource type, one request at a time, every `next` page at the server's default page
  size, each referenced Medication read on its own.

Both must read the same resources (same ids per type) or the run fails. Request counts
come from the sandbox's own counters and are checked against the clients' counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

#: The large chart every sandbox population holds (smartapp.sandbox.population).
BENCH_PATIENT = "bench-large"
#: A chart of 5,000 Observations the benchmark adds to its sandbox: bench-large's chart
#: for another patient, its Observations repeated back in time (`large_chart`).
LARGE_PATIENT = "bench-5000"
LARGE_OBSERVATIONS = 5000
#: The naive baseline reads it at 10 a page (over 500 requests, minutes a load): one each.
DEFAULT_LARGE_REPETITIONS = 1
DEFAULT_LATENCY_MS = 50
DEFAULT_REPETITIONS = 15
DEFAULT_WARMUP = 1
#: Every HTTP request the benchmark itself makes has this (connect, read) timeout.
TIMEOUT = (5.0, 120.0)
#: The issue's targets at 50 ms.
TARGET_RATIO = 5.0
TARGET_APP_REQUESTS = 3
TARGET_ROUND_TRIPS_OVER_FLOOR = 2.0
#: Resource types both sides read, in the order the table lists them.
COMPARED_TYPES: tuple[str, ...] = (
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Medication",
    "AllergyIntolerance",
    "Procedure",
    "Immunization",
    "DocumentReference",
)


class BenchmarkError(Exception):
    """The benchmark could not run, or its two sides did not do the same work."""


# -- arithmetic ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be between 0 and 100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, kw_only=True)
class Sample:
    """One measured load: wall time from token to chart, and HTTP requests it cost."""

    ms: float
    #: FHIR requests the sandbox counted (the independent count).
    requests: int
    #: Requests the client counted itself (cross-check).
    client_requests: int
    #: Summed time from sending each request to its response's headers: the simulated
    #: round trip plus the server's processing. (Both sides send one request at a time,
    #: so the rest of `ms` is the client's own work.)
    waiting_ms: float = 0.0


@dataclass(kw_only=True)
class Series:
    name: str
    samples: list[Sample] = field(default_factory=list)

    def times(self) -> list[float]:
        return [s.ms for s in self.samples]

    def summary(self, rtt_ms: float) -> dict[str, float | int]:
        times = self.times()
        counts = [s.requests for s in self.samples]
        # Where the time went, per load: simulated round trips, the server's processing
        # (waiting beyond the round trips) and the client's own work (not waiting).
        server = [max(0.0, s.waiting_ms - s.client_requests * rtt_ms) for s in self.samples]
        client = [max(0.0, s.ms - s.waiting_ms) for s in self.samples]
        return {
            "p50": round(percentile(times, 50), 1),
            "p90": round(percentile(times, 90), 1),
            "min": round(min(times), 1),
            "max": round(max(times), 1),
            # Counts do not vary unless something was retried; report the worst.
            "requests": max(counts),
            "requests_min": min(counts),
            "network_ms": round(max(counts) * rtt_ms, 1),
            "server_ms_p50": round(percentile(server, 50), 1),
            "client_ms_p50": round(percentile(client, 50), 1),
        }


def build_results(
    *,
    rtt_ms: float,
    app: Series,
    app_cold: Series,
    baseline: Series,
    resources: Mapping[str, int],
    repetitions: int,
    warmup: int,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`bench/results.json`: the contract's fields first, then what explains them."""
    warm, cold, base = (s.summary(rtt_ms) for s in (app, app_cold, baseline))
    floor_ms = float(rtt_ms)  # one round trip after the token
    app_p50 = float(warm["p50"])
    over_floor = (app_p50 - floor_ms) / rtt_ms if rtt_ms > 0 else None
    cold_over_floor = (float(cold["p50"]) - floor_ms) / rtt_ms if rtt_ms > 0 else None
    ratio = float(base["p50"]) / app_p50 if app_p50 > 0 else None
    results: dict[str, Any] = {
        "rtt_ms": rtt_ms,
        "app_ms_p50": warm["p50"],
        "baseline_ms_p50": base["p50"],
        "ratio": round(ratio, 2) if ratio is not None else None,
        "app_requests": warm["requests"],
        "baseline_requests": base["requests"],
        "floor_ms": floor_ms,
        "app_round_trips_over_floor": round(over_floor, 2) if over_floor is not None else None,
        "app_ms_p90": warm["p90"],
        "app_cold_ms_p50": cold["p50"],
        "app_cold_ms_p90": cold["p90"],
        "app_cold_requests": cold["requests"],
        "app_cold_round_trips_over_floor": (
            round(cold_over_floor, 2) if cold_over_floor is not None else None
        ),
        "ratio_cold": (round(float(base["p50"]) / float(cold["p50"]), 2) if cold["p50"] else None),
        "baseline_ms_p90": base["p90"],
        "repetitions": repetitions,
        "warmup": warmup,
        "resources": dict(resources),
        "resources_total": sum(resources.values()),
        "targets": {
            "ratio_min": TARGET_RATIO,
            "app_requests_max": TARGET_APP_REQUESTS,
            "round_trips_over_floor_max": TARGET_ROUND_TRIPS_OVER_FLOOR,
            "ratio_met": ratio is not None and ratio >= TARGET_RATIO,
            "app_requests_met": int(warm["requests"]) <= TARGET_APP_REQUESTS,
            "floor_met": over_floor is not None and over_floor <= TARGET_ROUND_TRIPS_OVER_FLOOR,
        },
        "summary": {"app": warm, "app_cold": cold, "baseline": base},
        "samples_ms": {
            "app": [round(t, 1) for t in app.times()],
            "app_cold": [round(t, 1) for t in app_cold.times()],
            "baseline": [round(t, 1) for t in baseline.times()],
        },
    }
    results.update(extra or {})
    return results


def format_table(results: Mapping[str, Any]) -> str:
    """The human-readable report `make bench` prints."""
    rtt = results["rtt_ms"]
    summary = results["summary"]
    resources = results.get("resources", {})
    lines = [
        f"Chart loading, token to chart: patient {results.get('patient', BENCH_PATIENT)} "
        f"({results.get('resources_total', sum(resources.values()))} resources), "
        f"simulated round trip {rtt:g} ms, {results['repetitions']} repetitions each",
        "",
        f"  {'':33} {'p50 ms':>8} {'p90 ms':>8} {'requests':>8} {'RTTs':>7} {'server':>7}"
        f" {'client':>7} {'RTTs over':>10}",
        f"  {'':33} {'':>8} {'':>8} {'':>8} {'ms':>7} {'ms':>7} {'ms':>7} {'floor':>10}",
        f"  {'floor: one round trip':33} {results['floor_ms']:8.1f} {'-':>8} {1:8d}"
        f" {rtt:7.0f} {'-':>7} {'-':>7} {'+0.0':>10}",
    ]
    for key, name in (
        ("app", "app (CapabilityStatement cached)"),
        ("app_cold", "app, cold (+ /metadata)"),
        ("baseline", "baseline: fhirclient, sequential"),
        ("baseline_count", "fhirclient, _count=server max"),
        ("parallel", "plain parallel GETs, no models"),
    ):
        if key not in summary:
            continue
        row = summary[key]
        over = f"{(row['p50'] - results['floor_ms']) / rtt:+.1f}" if rtt else "-"
        lines.append(
            f"  {name:33} {row['p50']:8.1f} {row['p90']:8.1f} {row['requests']:8d}"
            f" {row['network_ms']:7.0f} {row['server_ms_p50']:7.1f} {row['client_ms_p50']:7.1f}"
            f" {over:>10}"
        )
    ratio = results.get("ratio")
    lines += [
        "",
        f"  ratio baseline/app: {ratio:.1f}x warm, {results.get('ratio_cold') or 0:.1f}x cold;"
        f" _count baseline/app {results.get('ratio_count') or 0:.2f}x;"
        f" parallel GETs/app {results.get('ratio_parallel') or 0:.2f}x"
        if ratio is not None
        else "  ratio baseline/app: n/a",
        "  resources (same ids on both sides): "
        + ", ".join(f"{t} {n}" for t, n in resources.items()),
    ]
    targets = results["targets"]

    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    over_floor = results.get("app_round_trips_over_floor")
    lines += [
        "",
        f"  targets: ratio >= {targets['ratio_min']:g}: {mark(targets['ratio_met'])}; "
        f"app requests <= {targets['app_requests_max']}: {mark(targets['app_requests_met'])}; "
        f"app within {targets['round_trips_over_floor_max']:g} round trips of the floor "
        f"({over_floor if over_floor is not None else 'n/a'}): {mark(targets['floor_met'])}",
    ]
    return "\n".join(lines)


# -- the EHR -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunningEHR:
    """Where the sandbox EHR (and the app it knows as a registered client) is listening."""

    ehr_url: str
    fhir_base: str
    client_id: str
    redirect_uri: str
    scope: str
    where: str  # "child process" | "in process"


def _stack_environ(instance: Path) -> dict[str, str]:
    # An explicit environment: a developer's .env or shell must not change what is measured.
    return {
        "SMARTAPP_INSTANCE_PATH": str(instance),
        "SMARTAPP_SECRET_KEY": os.urandom(24).hex(),
        "SMARTAPP_DATABASE_URL": f"sqlite:///{instance / 'app.db'}",
    }


def _describe_stack(stack: Any, where: str) -> RunningEHR:
    manifest = stack.settings.manifest
    return RunningEHR(
        ehr_url=stack.ehr_url,
        fhir_base=stack.fhir_base,
        client_id=stack.settings.client_id,
        redirect_uri=urljoin(stack.app_url + "/", manifest.redirect_uris[0]),
        scope=manifest.scope,
        where=where,
    )


@contextmanager
def ehr_in_process(
    *, latency_ms: int, sandbox_data_dir: Path | None = None, population_size: int = 24
) -> Iterator[RunningEHR]:
    """The stack in this process's threads (tests; `--in-process`)."""
    from smartapp.stack import build_stack

    with tempfile.TemporaryDirectory(prefix="smartapp-bench-") as tmp:
        instance = Path(tmp)
        data_dir = instance / "sandbox"
        if sandbox_data_dir is not None:
            shutil.copytree(sandbox_data_dir, data_dir)
        stack = build_stack(
            environ=_stack_environ(instance),
            latency_ms=latency_ms,
            population_size=population_size,
            sandbox_data_dir=data_dir,
        )
        with stack:
            yield _describe_stack(stack, "in process")


@contextmanager
def ehr_in_child_process(
    *,
    latency_ms: int,
    sandbox_data_dir: Path | None = None,
    population_size: int = 24,
    start_timeout: float = 180.0,
    large_observations: int = 0,
) -> Iterator[RunningEHR]:
    """The stack in a child Python process; it stops when its standard input closes.

    `large_observations`: also the chart of that many Observations (`LARGE_PATIENT`)."""
    with tempfile.TemporaryDirectory(prefix="smartapp-bench-") as tmp:
        if sandbox_data_dir is not None:
            shutil.copytree(sandbox_data_dir, Path(tmp) / "sandbox")
        log_path = Path(tmp) / "ehr.log"
        with log_path.open("w", encoding="utf-8") as log_file:
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "smartapp.bench",
                    "--serve-ehr",
                    "--latency-ms",
                    str(latency_ms),
                    "--population",
                    str(population_size),
                    "--large-observations",
                    str(large_observations),
                    "--instance",
                    tmp,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
            try:
                line = _first_line(child, start_timeout)
                if not line:
                    child.wait(timeout=10)
                    raise BenchmarkError(
                        "the sandbox EHR did not start:\n"
                        + log_path.read_text(encoding="utf-8")[-3000:]
                    )
                yield RunningEHR(**json.loads(line))
            finally:
                _stop_child(child)


def _first_line(child: subprocess.Popen[str], timeout: float) -> str:
    assert child.stdout is not None
    found: list[str] = []
    reader = threading.Thread(target=lambda: found.append(child.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        raise BenchmarkError(f"the sandbox EHR did not start within {timeout:.0f} s")
    return found[0].strip() if found else ""


def _stop_child(child: subprocess.Popen[str]) -> None:
    if child.stdin is not None and not child.stdin.closed:
        try:
            child.stdin.close()  # the child stops when its stdin closes
        except OSError:
            pass  # already gone: nothing to tell it
    try:
        child.wait(timeout=15)
    except subprocess.TimeoutExpired:
        # Only this benchmark's own child, by its handle.
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    if child.stdout is not None:
        child.stdout.close()


def large_chart(
    source: Sequence[Mapping[str, Any]], *, source_patient: str, patient: str, observations: int
) -> list[dict[str, Any]]:
    """`source` (a chart's resources) for `patient`, with exactly `observations`
    Observations: the chart's own, then copies of them each 400 days further back (ids
    `<id>-h<n>`), as a long history would be."""
    resources: list[dict[str, Any]] = json.loads(
        json.dumps(list(source)).replace(source_patient, patient)
    )
    originals = [r for r in resources if r["resourceType"] == "Observation"]
    if not originals or observations < 1:
        raise ValueError("large_chart needs a chart with Observations and observations >= 1")
    chart = [r for r in resources if r["resourceType"] != "Observation"]
    for i in range(observations):
        copy_no, original = i // len(originals), originals[i % len(originals)]
        if copy_no == 0:
            chart.append(original)
            continue
        clone = json.loads(json.dumps(original))
        clone["id"] = f"{original['id']}-h{copy_no}"
        for key in ("effectiveDateTime", "issued"):
            if key in clone:
                clone[key] = _days_earlier(clone[key], 400 * copy_no)
        if isinstance(clone.get("effectivePeriod"), dict):
            clone["effectivePeriod"] = {
                k: _days_earlier(v, 400 * copy_no) for k, v in clone["effectivePeriod"].items()
            }
        chart.append(clone)
    return chart


def _days_earlier(value: Any, days: int) -> Any:
    if not isinstance(value, str) or len(value) < 10:
        return value
    try:
        day = datetime.strptime(value[:10], "%Y-%m-%d") - timedelta(days=days)
    except ValueError:
        return value
    return day.strftime("%Y-%m-%d") + value[10:]


def _add_large_chart(data_dir: Path, *, population_size: int, observations: int) -> None:
    """Put `LARGE_PATIENT`'s chart into the sandbox's store before the sandbox starts (it
    then finds its population there and adds nothing)."""
    from smartapp.sandbox.ehr import load_population
    from smartapp.sandbox.fhir_service import FHIRService
    from smartapp.sandbox.population import DEFAULT_SEED, generate_population
    from smartapp.sandbox.store import Store

    store = Store(data_dir / "sandbox-ehr.sqlite3")
    try:
        # The base URL only resolves absolute references; the population has none.
        service = FHIRService(store, base_url="http://localhost/fhir")
        load_population(store, service, count=population_size, seed=DEFAULT_SEED)
        bundles = generate_population(count=population_size, seed=DEFAULT_SEED)
        source = [e["resource"] for e in bundles[-1]["entry"]]
        chart = large_chart(
            source, source_patient=BENCH_PATIENT, patient=LARGE_PATIENT, observations=observations
        )
        with store.transaction():
            for resource in chart:
                if not store.exists(resource["resourceType"], resource["id"]):
                    store.put(resource, patient=service.patient_of(resource))
    finally:
        store.close()


def _serve_ehr(args: argparse.Namespace) -> int:
    """The child: run the stack, announce it on one line of stdout, stop at stdin EOF."""
    from smartapp.stack import build_stack

    instance = Path(args.instance)
    if args.large_observations > 0:
        _add_large_chart(
            instance / "sandbox",
            population_size=args.population,
            observations=args.large_observations,
        )
    stack = build_stack(
        environ=_stack_environ(instance),
        latency_ms=args.latency_ms,
        population_size=args.population,
        sandbox_data_dir=instance / "sandbox",
    )
    with stack:
        ehr = _describe_stack(stack, "child process")
        print(json.dumps(ehr.__dict__), flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or dies)
    return 0


# -- the token -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Launch:
    access_token: str = field(repr=False)
    patient: str
    encounter: str | None
    scope: str


def ehr_launch_token(ehr: RunningEHR, *, patient: str, http: requests.Session) -> Launch:
    """A real SMART EHR launch, as the app does it, without a browser.

    The sandbox EHR mints a launch (what its chart page does when the clinician opens the
    app); then discovery, the authorize request with PKCE S256 (the EHR approves an EHR
    launch without a page, redirecting to the app's redirect URI: the code is read from
    that redirect, which is not followed), and the code exchange at the token endpoint.
    """
    from smartapp.smart.discovery import discover
    from smartapp.smart.pkce import make_verifier, s256_challenge

    minted = http.post(
        f"{ehr.ehr_url}/_sandbox/launch",
        json={"patient": patient, "client_id": ehr.client_id},
        timeout=TIMEOUT,
    )
    if minted.status_code != 201:
        raise BenchmarkError(f"the sandbox refused the launch (HTTP {minted.status_code})")
    launch_id = minted.json()["launch"]
    config = discover(ehr.fhir_base, http=http, timeout=TIMEOUT)
    verifier = make_verifier()
    state = os.urandom(24).hex()
    authorize = http.get(
        config.authorization_endpoint,
        params={
            "response_type": "code",
            "client_id": ehr.client_id,
            "redirect_uri": ehr.redirect_uri,
            "launch": launch_id,
            "scope": ehr.scope,
            "state": state,
            "aud": ehr.fhir_base,
            "code_challenge": s256_challenge(verifier),
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    location = authorize.headers.get("Location", "")
    query = parse_qs(urlsplit(location).query)
    if authorize.status_code not in (302, 303) or "code" not in query:
        error = (
            query.get("error_description")
            or query.get("error")
            or [f"HTTP {authorize.status_code}"]
        )
        raise BenchmarkError(f"the EHR did not authorize the launch: {error[0]}")
    if query.get("state") != [state]:
        raise BenchmarkError("the EHR's redirect carried another state")
    token = http.post(
        config.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": ehr.redirect_uri,
            "code_verifier": verifier,
            "client_id": ehr.client_id,
        },
        headers={"Accept": "application/json"},
        timeout=TIMEOUT,
    )
    if token.status_code != 200:
        raise BenchmarkError(f"the token endpoint refused the code (HTTP {token.status_code})")
    body = token.json()
    if body.get("patient") != patient:
        raise BenchmarkError("the token response names another patient")
    return Launch(
        access_token=body["access_token"],
        patient=body["patient"],
        encounter=body.get("encounter"),
        scope=body.get("scope", ""),
    )


# -- the two sides -------------------------------------------------------------------------

ResourceIds = dict[str, list[str]]


class _SandboxCounters:
    """The sandbox's request counters (control endpoints: not counted themselves)."""

    def __init__(self, ehr: RunningEHR) -> None:
        self._url = f"{ehr.ehr_url}/_sandbox/stats"
        self._http = requests.Session()

    def reset(self) -> None:
        self._http.post(f"{self._url}/reset", timeout=TIMEOUT).raise_for_status()

    def fhir_requests(self) -> int:
        response = self._http.get(self._url, timeout=TIMEOUT)
        response.raise_for_status()
        return int(response.json()["fhir"])

    def close(self) -> None:
        self._http.close()


class _ResponseTimes:
    """Sums, per load, each response's `elapsed` (request sent to headers received)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = 0.0

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        with self._lock:
            self._ms += response.elapsed.total_seconds() * 1000

    def take(self) -> float:
        with self._lock:
            total, self._ms = self._ms, 0.0
        return total

    def attach(self, session: requests.Session) -> requests.Session:
        session.hooks["response"].append(self.hook)
        return session


def snapshot_ids(snapshot: Any) -> ResourceIds:
    """Ids per type in a ChartSnapshot."""
    ids: ResourceIds = {"Patient": [str(snapshot.patient.get("id"))]}
    ids["Encounter"] = [str(snapshot.encounter.get("id"))] if snapshot.encounter else []
    for rtype in COMPARED_TYPES[2:]:
        ids[rtype] = sorted(str(r.get("id")) for r in snapshot.of_type(rtype))
    return ids


def compare_ids(app: ResourceIds, baseline: ResourceIds) -> list[str]:
    """What differs between the two sides, one line per type; empty when they match."""
    differences = []
    for rtype in COMPARED_TYPES:
        ours, theirs = set(app.get(rtype, [])), set(baseline.get(rtype, []))
        if ours != theirs:
            differences.append(
                f"{rtype}: app {len(ours)}, baseline {len(theirs)} "
                f"({len(ours - theirs)} only in the app, {len(theirs - ours)} only in the baseline)"
            )
    return differences


def app_load(
    ehr: RunningEHR,
    launch: Launch,
    *,
    http: requests.Session,
    times: _ResponseTimes,
    counters: _SandboxCounters,
    cold: bool,
) -> tuple[Sample, ResourceIds]:
    """The app's path from token to snapshot, as `notes.chart_source` runs it."""
    from smartapp.fhir.auth import StaticToken
    from smartapp.fhir.chart import load_snapshot
    from smartapp.fhir.client import FHIRClient, clear_capabilities_cache
    from smartapp.smart.scopes import GrantedScopes

    if cold:
        clear_capabilities_cache()
    counters.reset()
    times.take()
    started = time.perf_counter()
    # The app shares one connection pool across launches (keep-alive); so does this.
    client = FHIRClient(ehr.fhir_base, tokens=StaticToken(launch.access_token), session=http)
    snapshot = load_snapshot(
        client,
        patient_id=launch.patient,
        encounter_id=launch.encounter,
        readable_types=GrantedScopes(launch.scope).readable_types(),
    )
    elapsed = (time.perf_counter() - started) * 1000
    if snapshot.problems:
        raise BenchmarkError(
            "the app's snapshot has problems: " + "; ".join(p.detail for p in snapshot.problems)
        )
    sample = Sample(
        ms=elapsed,
        requests=counters.fhir_requests(),
        client_requests=client.request_count,
        waiting_ms=times.take(),
    )
    return sample, snapshot_ids(snapshot)


class _CountingSession(requests.Session):
    """fhirclient's HTTP session with a timeout (fhirclient sets none) and a request count."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.times = _ResponseTimes()
        self.times.attach(self)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        self.count += 1
        kwargs.setdefault("timeout", TIMEOUT)
        return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]


def baseline_load(
    ehr: RunningEHR,
    launch: Launch,
    *,
    client_id: str,
    counters: _SandboxCounters,
    page_size: int | None = None,
) -> tuple[Sample, ResourceIds]:
    """A typical SMART demo app on fhirclient 4.4.0: restore the client from its saved
    state, read the Patient and Encounter, then one search per type, one request at a
    time, following every `next` link at the server's default page size, then read each
    referenced Medication."""
    from fhirclient import client as fhirclient_client
    from fhirclient.models.fhirabstractbase import FHIRValidationError

    counters.reset()
    started = time.perf_counter()
    smart = fhirclient_client.FHIRClient(
        state={
            "app_id": client_id,
            "patient_id": launch.patient,
            "server": {
                # fhirclient joins paths with urljoin: without the slash it drops "/fhir".
                "base_uri": ehr.fhir_base.rstrip("/") + "/",
                "auth_type": "oauth2",
                "auth": {"access_token": launch.access_token, "aud": ehr.fhir_base},
            },
        }
    )
    session = _CountingSession()
    smart.server.session = session
    try:
        return _baseline_reads(
            smart, session, launch, started=started, counters=counters, page_size=page_size
        )
    except FHIRValidationError as exc:
        raise BenchmarkError(
            "fhirclient's models rejected a resource; the baseline cannot run on this data "
            f"({str(exc)[:200]})"
        ) from exc
    finally:
        session.close()


def _baseline_reads(
    smart: Any,
    session: _CountingSession,
    launch: Launch,
    *,
    started: float,
    counters: _SandboxCounters,
    page_size: int | None = None,
) -> tuple[Sample, ResourceIds]:
    from fhirclient.models.allergyintolerance import AllergyIntolerance
    from fhirclient.models.condition import Condition
    from fhirclient.models.documentreference import DocumentReference
    from fhirclient.models.encounter import Encounter
    from fhirclient.models.immunization import Immunization
    from fhirclient.models.medication import Medication
    from fhirclient.models.medicationrequest import MedicationRequest
    from fhirclient.models.observation import Observation
    from fhirclient.models.procedure import Procedure

    from smartapp.fhir.chart import medication_history_since

    patient = smart.patient
    if patient is None:
        raise BenchmarkError("fhirclient could not read the launch's Patient")
    ids: ResourceIds = {"Patient": [str(patient.id)]}
    ids["Encounter"] = (
        [str(Encounter.read(launch.encounter, smart.server).id)] if launch.encounter else []
    )
    searches: list[tuple[str, Any, dict[str, str]]] = [
        ("Condition", Condition, {"patient": launch.patient}),
        ("Observation", Observation, {"patient": launch.patient}),
        (
            "MedicationRequest",
            MedicationRequest,
            {"patient": launch.patient, "status": "active"},
        ),
        (
            "MedicationRequest",
            MedicationRequest,
            {
                "patient": launch.patient,
                "status": "stopped,completed",
                "authoredon": f"ge{medication_history_since(datetime.now(UTC).date())}",
            },
        ),
        ("AllergyIntolerance", AllergyIntolerance, {"patient": launch.patient}),
        ("Procedure", Procedure, {"patient": launch.patient}),
        ("Immunization", Immunization, {"patient": launch.patient}),
        ("DocumentReference", DocumentReference, {"patient": launch.patient}),
    ]
    if page_size is not None:
        # The honest variant: the same code asking for the server's largest page.
        searches = [(t, m, {**p, "_count": str(page_size)}) for t, m, p in searches]
    found: dict[str, list[Any]] = {}
    for rtype, model, params in searches:
        found.setdefault(rtype, []).extend(
            model.where(struct=params).perform_resources_iter(smart.server)
        )
        ids[rtype] = sorted(str(r.id) for r in found[rtype])
    medication_ids: list[str] = []
    for request in found["MedicationRequest"]:
        reference = request.medicationReference.reference if request.medicationReference else None
        if not reference or reference.startswith("#"):
            continue  # a code, or a contained Medication: nothing to read
        mid = reference.rstrip("/").split("/")[-1]
        if mid not in medication_ids:
            medication_ids.append(mid)
    ids["Medication"] = sorted(str(Medication.read(mid, smart.server).id) for mid in medication_ids)
    elapsed = (time.perf_counter() - started) * 1000
    sample = Sample(
        ms=elapsed,
        requests=counters.fhir_requests(),
        client_requests=session.count,
        waiting_ms=session.times.take(),
    )
    return sample, ids


#: The sandbox's largest page (smartapp.sandbox.fhir_service.MAX_PAGE_SIZE).
SERVER_MAX_COUNT = 200


def parallel_load(
    ehr: RunningEHR, launch: Launch, *, counters: _SandboxCounters, page_size: int
) -> tuple[Sample, ResourceIds]:
    """The best plain client: requests and threads, one GET per type at once at the server's
    largest page, `next` pages followed, then every referenced Medication read at once; no
    model validation (plain JSON)."""
    from concurrent.futures import ThreadPoolExecutor

    counters.reset()
    started = time.perf_counter()
    http = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_maxsize=16)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    headers = {
        "Authorization": f"Bearer {launch.access_token}",
        "Accept": "application/fhir+json",
    }
    base = ehr.fhir_base.rstrip("/")
    lock = threading.Lock()
    sent = [0]

    def get(url: str, params: Mapping[str, str] | None = None) -> Any:
        with lock:
            sent[0] += 1
        response = http.get(url, params=params, headers=headers, timeout=TIMEOUT)
        response.raise_for_status()
        return response.json()

    def search(rtype: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        url: str | None = f"{base}/{rtype}"
        query: Mapping[str, str] | None = {**params, "_count": str(page_size)}
        while url:
            bundle = get(url, query)
            found += [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
            url = next(
                (link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"),
                None,
            )
            query = None
        return found

    from smartapp.fhir.chart import medication_history_since

    patient = {"patient": launch.patient}
    # The same searches as the fhirclient baseline (active medicines and their history).
    searches: list[tuple[str, Mapping[str, str]]] = [
        ("Condition", patient),
        ("Observation", patient),
        ("MedicationRequest", {**patient, "status": "active"}),
        (
            "MedicationRequest",
            {
                **patient,
                "status": "stopped,completed",
                "authoredon": f"ge{medication_history_since(datetime.now(UTC).date())}",
            },
        ),
        ("AllergyIntolerance", patient),
        ("Procedure", patient),
        ("Immunization", patient),
        ("DocumentReference", patient),
    ]
    try:
        with ThreadPoolExecutor(max_workers=len(searches) + 2) as pool:
            patient_f = pool.submit(get, f"{base}/Patient/{launch.patient}")
            encounter_f = (
                pool.submit(get, f"{base}/Encounter/{launch.encounter}")
                if launch.encounter
                else None
            )
            found = [(t, pool.submit(search, t, p)) for t, p in searches]
            results: dict[str, list[dict[str, Any]]] = {}
            for rtype, future in found:
                results.setdefault(rtype, []).extend(future.result())
            ids: ResourceIds = {"Patient": [str(patient_f.result()["id"])]}
            ids["Encounter"] = [str(encounter_f.result()["id"])] if encounter_f else []
            medication_ids: list[str] = []
            for request in results["MedicationRequest"]:
                reference = (request.get("medicationReference") or {}).get("reference")
                if not reference or reference.startswith("#"):
                    continue
                mid = reference.rstrip("/").split("/")[-1]
                if mid not in medication_ids:
                    medication_ids.append(mid)
            medications = list(pool.map(lambda m: get(f"{base}/Medication/{m}"), medication_ids))
    finally:
        http.close()
    for rtype, resources in results.items():
        ids[rtype] = sorted(str(r.get("id")) for r in resources)
    ids["Medication"] = sorted(str(m.get("id")) for m in medications)
    elapsed = (time.perf_counter() - started) * 1000
    # Requests overlap: their waiting is not a sum of round trips (0: all counted as client).
    sample = Sample(
        ms=elapsed, requests=counters.fhir_requests(), client_requests=sent[0], waiting_ms=0.0
    )
    return sample, ids


# -- a warm sidebar request -------------------------------------------------------------

#: Measured warm `GET /api/suggestions` requests (and as many unmeasured first).
DEFAULT_REQUEST_REPETITIONS = 200
#: The issue's budget for one warm `GET /api/suggestions`.
TARGET_WARM_CPU_MS = 5.0
TARGET_WARM_STATEMENTS = 5


def warm_request_cost(
    ehr: RunningEHR,
    *,
    repetitions: int = DEFAULT_REQUEST_REPETITIONS,
    database_url: str | None = None,
    patient: str = BENCH_PATIENT,
) -> dict[str, Any]:
    """What a warm `GET /api/suggestions` costs the app: its request thread's CPU (the
    snapshot already read, the suggestions already stored), its SQL statements, the
    connections it takes from the pool and the transactions it begins.

    The app is built in this process (its own SQLite store unless `database_url`) over the
    running sandbox EHR; the launch is a real one of the EHR (`ehr_launch_token`), stored
    as the app's callback stores it. The first request reads the chart and drafts; the
    next `repetitions` (after as many unmeasured) are timed one by one with
    `time.thread_time()`, through Flask's test client (no socket, no HTTP server)."""
    from sqlalchemy import event

    from smartapp import create_app
    from smartapp.config import Settings
    from smartapp.db import utcnow
    from smartapp.smart.client import TokenResponse
    from smartapp.smart.models import PendingAuthorization
    from smartapp.smart.services import get_services
    from smartapp.smart.session import SESSION_COOKIES, create_session

    http = requests.Session()
    try:
        launch = ehr_launch_token(ehr, patient=patient, http=http)
    finally:
        http.close()
    with tempfile.TemporaryDirectory(prefix="smartapp-bench-app-") as tmp:
        settings = Settings.from_env(
            {
                "SMARTAPP_INSTANCE_PATH": str(Path(tmp) / "instance"),
                "SMARTAPP_ALLOWED_ISSUERS": ehr.fhir_base,
                "SMARTAPP_SECRET_KEY": os.urandom(24).hex(),
                "SMARTAPP_PUBLIC_URL": "http://localhost",
                "SMARTAPP_DATABASE_URL": database_url or f"sqlite:///{Path(tmp) / 'app.db'}",
                "SMARTAPP_MIGRATE_ON_START": "true",
                "SMARTAPP_PREFETCH_CHART": "false",
            }
        )
        app = create_app(settings)
        db = app.extensions["smartapp.db"]
        try:
            now = utcnow()
            pending = PendingAuthorization(
                state_hash="0" * 64,
                binding_hash="1" * 64,
                iss=ehr.fhir_base,
                code_verifier_enc="",
                requested_scope=launch.scope,
                redirect_uri=ehr.redirect_uri,
                authorization_endpoint=f"{ehr.ehr_url}/auth/authorize",
                token_endpoint=f"{ehr.ehr_url}/auth/token",
                purpose="clinician",
                expires_at=now + timedelta(minutes=5),
            )
            token = TokenResponse(
                access_token=launch.access_token,
                token_type="Bearer",
                expires_in=3600,
                expires_at=now + timedelta(hours=1),
                scope=launch.scope,
                scope_from_server=True,
                patient=launch.patient,
                encounter=launch.encounter,
                need_patient_banner=False,
                smart_style_url=None,
            )
            cookie, _ = create_session(
                get_services(app), pending=pending, token=token, id_claims=None
            )
            client = app.test_client()
            client.set_cookie(SESSION_COOKIES["clinician"], cookie)
            first = client.get("/api/suggestions")
            if first.status_code != 200:
                raise BenchmarkError(f"the first /api/suggestions answered {first.status_code}")
            shown = len(first.get_json()["suggestions"])
            for _ in range(repetitions):
                client.get("/api/suggestions")
            counts = {"statements": 0, "checkouts": 0, "transactions": 0}

            def counter(name: str) -> Callable[..., None]:
                def count(*_args: Any) -> None:
                    counts[name] += 1

                return count

            listeners = [
                (db.engine, "before_cursor_execute", counter("statements")),
                (db.engine.pool, "checkout", counter("checkouts")),
                (db.engine, "begin", counter("transactions")),
            ]
            for target, name, fn in listeners:
                event.listen(target, name, fn)
            try:
                answer = client.get("/api/suggestions")
            finally:
                for target, name, fn in listeners:
                    event.remove(target, name, fn)
            cpu: list[float] = []
            for _ in range(repetitions):
                started = time.thread_time()
                answer = client.get("/api/suggestions")
                cpu.append((time.thread_time() - started) * 1000)
                if answer.status_code != 200:
                    raise BenchmarkError(f"a warm /api/suggestions answered {answer.status_code}")
        finally:
            for close in app.extensions.get("smartapp.on_shutdown", []):
                close()
            db.dispose()
    return {
        "route": "GET /api/suggestions",
        "store": db.engine.dialect.name,
        "suggestions": shown,
        "response_bytes": len(answer.get_data()),
        "repetitions": repetitions,
        "cpu_ms_p50": round(percentile(cpu, 50), 2),
        "cpu_ms_p95": round(percentile(cpu, 95), 2),
        **counts,
        "targets": {
            "cpu_ms_max": TARGET_WARM_CPU_MS,
            "statements_max": TARGET_WARM_STATEMENTS,
            "cpu_met": percentile(cpu, 50) <= TARGET_WARM_CPU_MS,
            "statements_met": counts["statements"] <= TARGET_WARM_STATEMENTS,
        },
    }


def format_request_cost(cost: Mapping[str, Any]) -> str:
    met = cost["targets"]
    return (
        f"warm {cost['route']} ({cost['store']}, {cost['suggestions']} suggestions, "
        f"{cost['response_bytes']} bytes): app CPU p50 {cost['cpu_ms_p50']:.2f} ms, "
        f"p95 {cost['cpu_ms_p95']:.2f} ms ({'met' if met['cpu_met'] else 'MISSED'} "
        f"<= {met['cpu_ms_max']:g}); {cost['statements']} statements "
        f"({'met' if met['statements_met'] else 'MISSED'} <= {met['statements_max']}), "
        f"{cost['checkouts']} connection checkout(s), {cost['transactions']} transaction(s)"
    )


# -- the run -------------------------------------------------------------------------------


def run_benchmark(
    ehr: RunningEHR,
    *,
    latency_ms: int,
    repetitions: int = DEFAULT_REPETITIONS,
    warmup: int = DEFAULT_WARMUP,
    patient: str = BENCH_PATIENT,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure both sides against a running EHR; the results dict (`bench/results.json`)."""
    if repetitions < 1 or warmup < 0:
        raise ValueError("repetitions must be at least 1 and warmup at least 0")
    say = progress or (lambda _message: None)
    control = requests.Session()
    app_times = _ResponseTimes()
    app_http = app_times.attach(requests.Session())
    counters = _SandboxCounters(ehr)
    try:
        return _measure(
            ehr,
            latency_ms=latency_ms,
            repetitions=repetitions,
            warmup=warmup,
            patient=patient,
            say=say,
            control=control,
            app_http=app_http,
            app_times=app_times,
            counters=counters,
        )
    except requests.RequestException as exc:
        # Not the app's errors (it has its own); the benchmark's own talk to the sandbox.
        raise BenchmarkError(
            f"the sandbox EHR stopped answering the benchmark ({type(exc).__name__})"
        ) from exc
    finally:
        counters.close()
        app_http.close()
        control.close()


def _measure(
    ehr: RunningEHR,
    *,
    latency_ms: int,
    repetitions: int,
    warmup: int,
    patient: str,
    say: Callable[[str], None],
    control: requests.Session,
    app_http: requests.Session,
    app_times: _ResponseTimes,
    counters: _SandboxCounters,
) -> dict[str, Any]:
    load_before = _load_average()
    launch = ehr_launch_token(ehr, patient=patient, http=control)
    app, app_cold, baseline = (
        Series(name="app"),
        Series(name="app_cold"),
        Series(name="baseline"),
    )
    reference: ResourceIds | None = None
    mismatched_counts: list[str] = []

    def check(side: str, sample: Sample, ids: ResourceIds) -> None:
        nonlocal reference
        if sample.requests != sample.client_requests:
            mismatched_counts.append(
                f"{side}: sandbox counted {sample.requests}, client {sample.client_requests}"
            )
        if reference is None:
            reference = ids
            return
        differences = compare_ids(reference, ids)
        if differences:
            raise BenchmarkError(
                f"the {side} read different resources than the first load:\n  "
                + "\n  ".join(differences)
            )

    def measure(kind: str) -> Sample:
        if kind == "baseline":
            sample, ids = baseline_load(ehr, launch, client_id=ehr.client_id, counters=counters)
        elif kind == "baseline_count":
            sample, ids = baseline_load(
                ehr,
                launch,
                client_id=ehr.client_id,
                counters=counters,
                page_size=SERVER_MAX_COUNT,
            )
        elif kind == "parallel":
            sample, ids = parallel_load(ehr, launch, counters=counters, page_size=SERVER_MAX_COUNT)
        else:
            sample, ids = app_load(
                ehr,
                launch,
                http=app_http,
                times=app_times,
                counters=counters,
                cold=kind == "app_cold",
            )
        check(kind, sample, ids)
        return sample

    baseline_count, parallel = Series(name="baseline_count"), Series(name="parallel")
    order = ["app_cold", "app", "baseline", "baseline_count", "parallel"]
    for round_no in range(warmup):
        say(f"warm-up {round_no + 1}/{warmup}")
        for kind in order:
            measure(kind)
    series = {
        "app": app,
        "app_cold": app_cold,
        "baseline": baseline,
        "baseline_count": baseline_count,
        "parallel": parallel,
    }
    for i in range(repetitions):
        # Rotate the order so that slow moments of a shared machine spread over all sides.
        shift = i % len(order)
        rotated = order[shift:] + order[:shift]
        for kind in rotated:
            series[kind].samples.append(measure(kind))
        say(
            f"repetition {i + 1}/{repetitions}: app {app.samples[-1].ms:.0f} ms, "
            f"cold {app_cold.samples[-1].ms:.0f} ms, baseline {baseline.samples[-1].ms:.0f} ms"
        )
    assert reference is not None
    resources = {t: len(reference.get(t, [])) for t in COMPARED_TYPES}

    import fhirclient

    results = build_results(
        rtt_ms=latency_ms,
        app=app,
        app_cold=app_cold,
        baseline=baseline,
        resources=resources,
        repetitions=repetitions,
        warmup=warmup,
        extra={
            "patient": patient,
            "same_resources": True,
            "request_count_mismatches": mismatched_counts,
            "ehr": ehr.where,
            "baseline_client": f"fhirclient {fhirclient.__version__} models "
            "(FHIRSearch.perform_resources_iter, Resource.read)",
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                # Other work on the machine shows up in the timings: say how busy it was.
                "load_average_1m_before": load_before,
                "load_average_1m_after": _load_average(),
            },
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    add_honest_baselines(
        results, rtt_ms=latency_ms, baseline_count=baseline_count, parallel=parallel
    )
    return results


def add_honest_baselines(
    results: dict[str, Any], *, rtt_ms: float, baseline_count: Series, parallel: Series
) -> None:
    """The two same-run baselines beside the naive one: fhirclient at the server's largest
    page (`ratio_count`) and plain parallel GETs (`ratio_parallel`); over 1 the app is faster."""
    app_p50 = float(results["app_ms_p50"])
    for key, series, ratio_key in (
        ("baseline_count", baseline_count, "ratio_count"),
        ("parallel", parallel, "ratio_parallel"),
    ):
        if not series.samples:
            continue
        summary = series.summary(rtt_ms)
        results["summary"][key] = summary
        results["samples_ms"][key] = [round(t, 1) for t in series.times()]
        results[f"{key}_ms_p50"] = summary["p50"]
        results[f"{key}_requests"] = summary["requests"]
        results[ratio_key] = round(float(summary["p50"]) / app_p50, 2) if app_p50 > 0 else None
    results["baseline_count_page_size"] = SERVER_MAX_COUNT


def _load_average() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `python -m smartapp.bench` and `smartapp bench`."""
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=DEFAULT_LATENCY_MS,
        help=f"simulated round-trip time per request (default {DEFAULT_LATENCY_MS})",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=DEFAULT_REPETITIONS,
        help=f"measured loads per side (default {DEFAULT_REPETITIONS})",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=DEFAULT_WARMUP,
        help=f"unmeasured loads per side first (default {DEFAULT_WARMUP})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench/results.json"),
        help="where to write the results (default bench/results.json)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run the sandbox EHR in this process (it then competes with the app for the "
        "interpreter lock; the default is a child process, as an EHR is another machine)",
    )
    parser.add_argument(
        "--large-observations",
        type=int,
        default=LARGE_OBSERVATIONS,
        help=f"also time a chart of this many Observations ({LARGE_PATIENT}; default "
        f"{LARGE_OBSERVATIONS}, 0: not)",
    )
    parser.add_argument(
        "--large-repetitions",
        type=int,
        default=DEFAULT_LARGE_REPETITIONS,
        help=f"measured loads per side of that chart (default {DEFAULT_LARGE_REPETITIONS})",
    )
    parser.add_argument(
        "--request-repetitions",
        type=int,
        default=DEFAULT_REQUEST_REPETITIONS,
        help="warm GET /api/suggestions requests timed for their app CPU "
        f"(default {DEFAULT_REQUEST_REPETITIONS}, 0: not)",
    )
    parser.add_argument(
        "--request-store",
        default=None,
        help="the store of the app those requests run on (default: a fresh SQLite file)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m smartapp.bench",
        description="Chart-loading benchmark: the app's batch loader against a naive "
        "sequential fhirclient app, over the sandbox EHR with a simulated round-trip time.",
    )
    add_arguments(parser)
    # The child process that serves the sandbox EHR (internal).
    parser.add_argument("--serve-ehr", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--population", type=int, default=24, help=argparse.SUPPRESS)
    parser.add_argument("--instance", default=None, help=argparse.SUPPRESS)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    if args.latency_ms < 0 or args.repetitions < 1 or args.warmup < 0:
        print(
            "bench: --latency-ms and --warmup must be 0 or more, --repetitions at least 1",
            file=sys.stderr,
        )
        return 2

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"  {message}", file=sys.stderr, flush=True)

    large = max(0, args.large_observations)
    # The app's side runs in this process: set up as `smartapp serve` sets up its own
    # (the FHIR models built, then the collector tuned). Every side measured here gains.
    from smartapp.fhir.parsing import warm_up
    from smartapp.serving import tune_collector

    warm_up()
    tune_collector()
    progress("starting the sandbox EHR" + (" (in process)" if args.in_process else ""))
    try:
        if args.in_process:
            context = ehr_in_process(latency_ms=args.latency_ms)
        else:
            context = ehr_in_child_process(latency_ms=args.latency_ms, large_observations=large)
        with context as ehr:
            results = run_benchmark(
                ehr,
                latency_ms=args.latency_ms,
                repetitions=args.repetitions,
                warmup=args.warmup,
                progress=progress,
            )
            if args.request_repetitions > 0:
                progress(f"{args.request_repetitions} warm GET /api/suggestions requests")
                results["warm_suggestions"] = warm_request_cost(
                    ehr, repetitions=args.request_repetitions, database_url=args.request_store
                )
            if large and not args.in_process:
                progress(f"the chart of {large} Observations ({LARGE_PATIENT})")
                results["large_chart"] = run_benchmark(
                    ehr,
                    latency_ms=args.latency_ms,
                    repetitions=max(1, args.large_repetitions),
                    warmup=0,
                    patient=LARGE_PATIENT,
                    progress=progress,
                )
    except BenchmarkError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(format_table(results))
    if "warm_suggestions" in results:
        print("\n  " + format_request_cost(results["warm_suggestions"]))
    if "large_chart" in results:
        print("\n" + format_table(results["large_chart"]))
    print(f"\nwrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve_ehr:
        if not args.instance:
            parser.error("--serve-ehr needs --instance")
        return _serve_ehr(args)
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
