"""Integration: faults on the way, counted — notes acknowledged, in the store, in the chart.

Each test breaks one thing while clinicians save notes (the app killed with `kill -9`, the
EHR answering 503, the EHR hung, the store locked or full, the LLM hung) and then counts: every
note the app acknowledged (201 or 202) is in its store, every stored note reaches the
chart once the fault is gone, and the chart holds each one exactly once (by the note's
identifier) — none lost, none duplicated. The real app (a `smartapp serve` subprocess
where the fault is the process itself, else the in-process stack) and the sandbox EHR on
loopback, nothing patched (a full store is SQLite's own page limit on the app's
connections). Waits are polls with a deadline, never sleeps; the counts of a
run are printed (`pytest -s`) and kept in the README's "Faults on the way".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import event, select

from smartapp.config import PROJECT_ROOT
from smartapp.db import Database
from smartapp.notes.documents import NOTE_IDENTIFIER_SYSTEM, note_identifier
from smartapp.notes.models import SavedNote
from smartapp.notes.outbox import OutboxWorker
from smartapp.sandbox.ehr import create_ehr_app
from smartapp.sandbox.server import BackgroundServer
from smartapp.stack import Stack
from tests.integration.conftest import app_environ, browser, ehr_launch, start_stack

pytestmark = pytest.mark.integration

SQLITE_ONLY = pytest.mark.skipif(
    os.environ.get("SMARTAPP_TEST_DATABASE_URL", "").startswith("postgresql"),
    reason="about a SQLite file",
)


def poll(condition: Callable[[], object], *, seconds: float, what: str) -> None:
    """Wait for `condition()` until a deadline: a bound on a wait, never an assertion."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        time.sleep(0.05)


@dataclass
class Counts:
    acknowledged: int
    stored: int
    in_chart: int
    lost: int
    duplicated: int

    def show(self, fault: str) -> None:
        print(f"\n[faults] {fault}: {json.dumps(self.__dict__)}")


def count(database: Database, ehr_url: str, acknowledged: set[str]) -> Counts:
    """Notes acknowledged vs in the store vs in the chart, and what was lost or doubled."""
    with database.session() as s:
        stored = {n.id: n.status for n in s.scalars(select(SavedNote))}
    documents = requests.get(f"{ehr_url}/_sandbox/resources/DocumentReference", timeout=30).json()
    ours = [
        i["value"]
        for d in documents
        for i in d.get("identifier", [])
        if i.get("system") == NOTE_IDENTIFIER_SYSTEM
    ]
    per_note = {nid: ours.count(note_identifier(nid)["value"]) for nid in stored}
    strangers = len(ours) - sum(per_note.values())  # in the chart, unknown to the store
    return Counts(
        acknowledged=len(acknowledged),
        stored=len(stored),
        in_chart=len(ours),
        lost=len(acknowledged - stored.keys())
        + sum(1 for nid, n in per_note.items() if n == 0 and stored[nid] != "failed"),
        duplicated=sum(n - 1 for n in per_note.values() if n > 1) + strangers,
    )


def accept_one(launched: Any) -> None:
    suggestions = launched.api("GET", "/api/suggestions").json()["suggestions"]
    answer = launched.api(
        "POST", f"/api/suggestions/{suggestions[0]['id']}/feedback", json={"action": "accept"}
    )
    assert answer.ok, answer.text


def save(launched: Any) -> requests.Response:
    return launched.api("POST", "/api/note", json={})


def acknowledged_id(response: requests.Response) -> str | None:
    """The note the app said it kept: 201 in the chart, 202 kept here to be sent."""
    if response.status_code in (201, 202):
        return str(response.json()["note"]["id"])
    return None


# -- the app as a process of its own (kill -9, a hung EHR holding every thread) -----------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Clinician:
    """A browser that launched the app for one patient, its CSRF token and the app's URL."""

    session: requests.Session
    csrf: str
    app_url: str

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"X-CSRF-Token": self.csrf}
        return self.session.request(
            method, self.app_url + path, headers=headers, timeout=60, **kwargs
        )


def _own_store(tmp_path: Path) -> str:
    """A SQLite store per test, even where the suite runs on the shared PostgreSQL database:
    the counts are of this test's notes, and threads a fault leaves hanging must not hold
    connections to a database the next tests reset."""
    return f"sqlite:///{tmp_path / 'faults.db'}"


class AppProcess:
    """`smartapp serve` on a fixed port against a sandbox EHR in this process."""

    def __init__(self, tmp_path: Path, sandbox_template: Path, **env: str) -> None:
        data_dir = tmp_path / "sandbox"
        shutil.copytree(sandbox_template, data_dir)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ehr_server = BackgroundServer("127.0.0.1", 0, public_host="localhost")
        self.ehr = create_ehr_app(
            data_dir=data_dir,
            ehr_base_url=self.ehr_server.url,
            app_base_url=self.url,
            manifest=json.loads((PROJECT_ROOT / "launch.json").read_text()),
        )
        self.ehr_server.set_app(self.ehr)
        self.ehr_server.start()
        self.env = {
            **os.environ,
            **app_environ(tmp_path),
            "SMARTAPP_ALLOWED_ISSUERS": f"{self.ehr_server.url}/fhir",
            "SMARTAPP_PUBLIC_URL": self.url,
            "SMARTAPP_DATABASE_URL": _own_store(tmp_path),
            **env,
        }
        self.command = [sys.executable, "-m", "smartapp.cli"]
        subprocess.run(
            [*self.command, "db", "upgrade"], env=self.env, check=True, capture_output=True
        )
        self.database = Database(
            self.env["SMARTAPP_DATABASE_URL"], secret_key=self.env["SMARTAPP_SECRET_KEY"]
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def ehr_url(self) -> str:
        return self.ehr_server.url

    def start(self, *, threads: int = 8) -> None:
        self.process = subprocess.Popen(
            [*self.command, "serve", "--port", str(self.port), "--threads", str(threads)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                return requests.get(f"{self.url}/healthz", timeout=1).ok
            except requests.ConnectionError:
                return False

        poll(up, seconds=60, what="the app answering /healthz")

    def kill(self) -> None:
        """kill -9: no clean shutdown, whatever the process held in memory is gone."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def close(self) -> None:
        self.sandbox("DELETE", "/_sandbox/hang")
        self.stop()
        self.ehr_server.stop()
        self.database.dispose()

    def sandbox(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.ehr_url + path, timeout=30, **kwargs)

    def launch(self, patient: str) -> Clinician:
        minted = self.sandbox("POST", "/_sandbox/launch", json={"patient": patient}).json()
        session = browser()
        page = session.get(minted["launch_url"], timeout=60)
        assert 'name="csrf-token"' in page.text, (page.status_code, page.text[:300])
        csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
        return Clinician(session=session, csrf=csrf, app_url=self.url)

    def transactions(self) -> int:
        """Transactions the EHR has been sent (the note writes), answered or not."""
        kinds = self.sandbox("GET", "/_sandbox/stats").json()["kinds"]
        return int(kinds.get("transaction", 0))

    def pending(self) -> int:
        with self.database.session() as s:
            return len(s.scalars(select(SavedNote.id).where(SavedNote.status == "pending")).all())


@pytest.fixture
def app_process(tmp_path: Path, sandbox_template: Path) -> Iterator[AppProcess]:
    running = AppProcess(tmp_path, sandbox_template)
    yield running
    running.close()


PATIENTS = [f"pt-{n:02d}" for n in range(1, 7)]


def test_kill_9_in_a_burst_of_note_saves_loses_and_duplicates_nothing(app_process: AppProcess):
    app = app_process
    app.start()
    clinicians = [app.launch(p) for p in PATIENTS]
    for clinician in clinicians:
        accept_one(clinician)
    # Every EHR round trip takes a while, so that the kill lands among saves in flight.
    app.sandbox("POST", "/_sandbox/latency", json={"ms": 150})
    before = app.transactions()
    with ThreadPoolExecutor(len(clinicians)) as pool:
        saves = [pool.submit(save, c) for c in clinicians]
        # The kill lands once the first note is acknowledged and others are on their way.
        poll(
            lambda: any(f.done() for f in saves) and app.transactions() > before,
            seconds=60,
            what="a note acknowledged",
        )
        app.kill()
        answers = []
        for future in saves:
            try:
                answers.append(future.result())
            except requests.RequestException:
                answers.append(None)  # the process died under it: never acknowledged
    acknowledged = {i for a in answers if a is not None and (i := acknowledged_id(a))}
    app.sandbox("POST", "/_sandbox/latency", json={"ms": 0})

    app.start()  # the restarted process frees the dead one's claims and sends at once
    poll(lambda: app.pending() == 0, seconds=60, what="every stored note delivered")
    counts = count(app.database, app.ehr_url, acknowledged)
    counts.show("kill -9 during 6 note saves")
    assert counts.lost == 0 and counts.duplicated == 0
    assert counts.stored == counts.in_chart >= counts.acknowledged
    retried = subprocess.run(
        [*app.command, "outbox", "retry"], env=app.env, capture_output=True, text=True, timeout=120
    )
    assert retried.returncode == 0, retried.stderr
    assert "notes delivered: 0, still waiting: 0" in retried.stdout


@contextmanager
def _two_saves_held_by_a_hung_ehr(app: AppProcess) -> Iterator[list[Future[requests.Response]]]:
    """Both of a two-thread app's threads are writing a note to an EHR that holds every
    request; the EHR lets go when the block ends, and the saves finish after it."""
    app.start(threads=2)
    clinicians = [app.launch(p) for p in PATIENTS[:2]]
    for clinician in clinicians:
        accept_one(clinician)
    app.sandbox("POST", "/_sandbox/hang")
    with ThreadPoolExecutor(2) as pool:
        saves = [pool.submit(save, c) for c in clinicians]
        try:
            poll(
                lambda: app.sandbox("GET", "/_sandbox/stats").json()["hanging"] >= 2,
                seconds=60,
                what="both app threads waiting on the EHR",
            )
            yield saves
        finally:
            app.sandbox("DELETE", "/_sandbox/hang")


def _assert_each_note_in_the_chart_once(
    app: AppProcess, saves: list[Future[requests.Response]], label: str
) -> None:
    answers = [f.result() for f in saves]
    assert [a.status_code for a in answers] == [201, 201], [a.text[:200] for a in answers]
    acknowledged = {i for a in answers if (i := acknowledged_id(a))}
    counts = count(app.database, app.ehr_url, acknowledged)
    counts.show(label)
    assert counts == Counts(acknowledged=2, stored=2, in_chart=2, lost=0, duplicated=0)


def test_a_hung_ehr_holds_no_health_check_and_doubles_no_note(app_process: AppProcess):
    """Both of the app's threads wait on a hung EHR: /healthz and /readyz still answer; once
    the EHR lets go, both notes are in the chart once each."""
    app = app_process
    with _two_saves_held_by_a_hung_ehr(app) as saves:
        # Neither save can finish while the EHR holds it: these answer from their own threads.
        assert requests.get(f"{app.url}/healthz", timeout=20).json() == {"status": "ok"}
        assert requests.get(f"{app.url}/readyz", timeout=20).status_code == 200
        assert not any(f.done() for f in saves)
    _assert_each_note_in_the_chart_once(app, saves, "EHR hung with every app thread waiting on it")


def test_sigterm_with_saves_in_flight_answers_them_before_the_process_ends(
    app_process: AppProcess,
):
    """The orchestrator stops the process while both its threads write notes to a slow EHR:
    it takes no new connection, answers both saves, then exits cleanly; nothing is lost."""
    app = app_process
    with _two_saves_held_by_a_hung_ehr(app) as saves:
        assert app.process is not None
        app.process.send_signal(signal.SIGTERM)

        def refusing() -> bool:
            try:
                requests.get(f"{app.url}/healthz", timeout=1)
            except requests.ConnectionError:
                return True
            return False

        poll(refusing, seconds=30, what="the stopping process refusing new connections")
        assert not any(f.done() for f in saves) and app.process.poll() is None
    assert app.process.wait(timeout=30) == 0
    app.process = None
    _assert_each_note_in_the_chart_once(app, saves, "SIGTERM with 2 note saves in flight")


# -- the app in this process (an EHR outage, a hung EHR past the deadline, the store, the LLM)


def _store(stack: Stack) -> Database:
    database: Database = stack.app.extensions["smartapp.db"]
    return database


def _pending(stack: Stack) -> int:
    with _store(stack).session() as s:
        return len(s.scalars(select(SavedNote.id).where(SavedNote.status == "pending")).all())


@pytest.fixture
def quick_retry_stack(tmp_path: Path, sandbox_template: Path) -> Iterator[Stack]:
    environ = app_environ(
        tmp_path,
        SMARTAPP_DATABASE_URL=_own_store(tmp_path),
        SMARTAPP_OUTBOX_RETRY_SECONDS="1",
        SMARTAPP_FHIR_DEADLINE="2",
        SMARTAPP_STORE_WAIT_SECONDS="1",
    )
    stack = start_stack(tmp_path, sandbox_template, environ=environ)
    worker = OutboxWorker(stack.app.extensions["smartapp.outbox"], interval=0.2)
    stack.app.extensions["test.worker"] = worker
    yield stack
    stack.ehr.extensions["smartapp.sandbox"].controls.released.set()
    worker.stop()
    stack.stop()


def test_an_ehr_outage_keeps_every_note_and_sends_each_once(quick_retry_stack: Stack):
    stack = quick_retry_stack
    clinicians = [ehr_launch(stack, p) for p in PATIENTS[:4]]
    for clinician in clinicians:
        accept_one(clinician)
    requests.post(
        f"{stack.ehr_url}/_sandbox/faults", json={"fail_next": 10_000, "status": 503}, timeout=30
    )
    answers = [save(c) for c in clinicians]
    assert [a.status_code for a in answers] == [202] * 4
    # Two clinicians move on to another patient in the same browser: their launches end.
    for clinician, patient in zip(clinicians[:2], PATIENTS[4:6], strict=True):
        minted = clinician.sandbox("POST", "/_sandbox/launch", json={"patient": patient}).json()
        assert clinician.session.get(minted["launch_url"], timeout=30).ok
    stack.app.extensions["test.worker"].start()
    requests.delete(f"{stack.ehr_url}/_sandbox/faults", timeout=30)  # the EHR is back
    poll(lambda: _pending(stack) == 0, seconds=60, what="every note delivered")
    acknowledged = {i for a in answers if (i := acknowledged_id(a))}
    counts = count(_store(stack), stack.ehr_url, acknowledged)
    counts.show("EHR answering 503 during 4 saves")
    assert counts == Counts(acknowledged=4, stored=4, in_chart=4, lost=0, duplicated=0)


def test_a_write_the_ehr_made_after_the_app_gave_up_is_not_made_twice(quick_retry_stack: Stack):
    """The EHR hangs past the app's deadline (2 s): the clinician is told "kept, will
    retry" in seconds, the EHR then makes the write it was holding, and the retry finds it."""
    stack = quick_retry_stack
    launched = ehr_launch(stack, "pt-01")
    accept_one(launched)
    controls = stack.ehr.extensions["smartapp.sandbox"].controls
    controls.released.clear()
    answer = save(launched)  # bounded by the deadline, not by the hung EHR
    assert answer.status_code == 202, answer.text
    assert answer.json()["note"]["status"] == "pending"
    controls.released.set()  # the held write goes through now, its answer unheard
    stack.app.extensions["test.worker"].start()
    poll(lambda: _pending(stack) == 0, seconds=60, what="the note delivered")
    counts = count(_store(stack), stack.ehr_url, {str(answer.json()["note"]["id"])})
    counts.show("EHR hung past the deadline during a save")
    assert counts == Counts(acknowledged=1, stored=1, in_chart=1, lost=0, duplicated=0)


@SQLITE_ONLY
def test_a_locked_store_refuses_clearly_and_records_only_what_it_says(quick_retry_stack: Stack):
    stack = quick_retry_stack
    launched = ehr_launch(stack, "pt-01")
    suggestions = launched.api("GET", "/api/suggestions").json()["suggestions"]
    path = _store(stack).engine.url.database
    holder = sqlite3.connect(str(path), timeout=0.1)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process writing, and not letting go
        decided = launched.api(
            "POST", f"/api/suggestions/{suggestions[0]['id']}/feedback", json={"action": "accept"}
        )
        assert decided.status_code == 503
        assert decided.json()["error"]["code"] == "store_unavailable"
        assert requests.get(f"{stack.app_url}/healthz", timeout=30).ok  # alive all the same
    finally:
        holder.rollback()
        holder.close()
    accept_one(launched)
    holder = sqlite3.connect(str(path), timeout=0.1)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        refused = save(launched)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "store_unavailable"
        assert "not recorded" in refused.json()["error"]["message"]
    finally:
        holder.rollback()
        holder.close()
    assert count(_store(stack), stack.ehr_url, set()) == Counts(0, 0, 0, 0, 0)
    saved = save(launched)
    assert saved.status_code == 201
    counts = count(_store(stack), stack.ehr_url, {str(saved.json()["note"]["id"])})
    counts.show("store locked during a decision and a save, then saved again")
    assert counts == Counts(acknowledged=1, stored=1, in_chart=1, lost=0, duplicated=0)


@contextmanager
def full_store(database: Database) -> Iterator[None]:
    """The store's disk is full: its SQLite file cannot grow by a page.

    SQLite's own limit does it (`PRAGMA max_page_count`, set on every connection the app
    takes from its pool to the file's size, after a VACUUM has emptied its free list): a
    write that needs another page fails in SQLite with SQLITE_FULL, "database or disk is
    full", the error SQLite gives when the disk refuses a write (ENOSPC). A write that
    fits in the file's pages as they are still succeeds, as it would on a full disk.
    """
    path = str(database.engine.url.database)
    with closing(sqlite3.connect(path, timeout=10)) as plain:
        unlimited = int(plain.execute("PRAGMA max_page_count").fetchone()[0])
        plain.execute("VACUUM")
    full = threading.Event()
    full.set()

    def limit(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        cursor = dbapi_connection.cursor()
        # (SQLite raises a limit below the file's size to the file's size.)
        cursor.execute(f"PRAGMA max_page_count = {1 if full.is_set() else unlimited}")
        cursor.close()

    event.listen(database.engine, "checkout", limit)
    try:
        yield
    finally:
        full.clear()  # room again: the next checkout of each connection lifts its limit


LONG_NOTE = "Seen for follow-up of diabetes and hypertension; plan discussed at length. " * 300


def _note_saved(launched: Any, text: str) -> requests.Response:
    return launched.api("POST", "/api/note", json={"text": text})


@SQLITE_ONLY
def test_a_full_store_refuses_a_save_clearly_and_keeps_serving(quick_retry_stack: Stack):
    stack = quick_retry_stack
    database = _store(stack)
    before = ehr_launch(stack, "pt-01")
    accept_one(before)
    kept = save(before)
    assert kept.status_code == 201, kept.text
    clinicians = [ehr_launch(stack, p) for p in PATIENTS[1:4]]
    for clinician in clinicians:
        accept_one(clinician)
    with full_store(database):
        # A long note needs new pages: refused, said so, nothing of it kept.
        refused = _note_saved(clinicians[0], LONG_NOTE)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["code"] == "store_unavailable"
        assert "not recorded" in error["message"]
        # Shorter notes may fit in the pages the file has: whatever each answer says is
        # what the store holds (checked by the counts below).
        answers = [_note_saved(c, "Follow-up in three months.") for c in clinicians[1:]]
        assert all(a.status_code in (201, 202, 503) for a in answers), [a.text for a in answers]
        # Reading goes on: the sidebar, the saved notes, the health checks.
        assert before.api("GET", "/api/suggestions").status_code == 200
        listed = before.api("GET", "/api/notes")
        assert listed.status_code == 200
        assert str(kept.json()["note"]["id"]) in listed.text
        assert requests.get(f"{stack.app_url}/healthz", timeout=30).ok
        assert requests.get(f"{stack.app_url}/readyz", timeout=30).ok
    acknowledged = {str(kept.json()["note"]["id"])}
    acknowledged |= {i for a in answers if (i := acknowledged_id(a))}
    with database.session() as s:
        stored = set(s.scalars(select(SavedNote.id)))
    assert {str(i) for i in stored} == acknowledged  # a 503 kept nothing; the rest is kept
    # Room on the disk again: the refused note is saved, and every kept note delivered.
    again = _note_saved(clinicians[0], LONG_NOTE)
    assert again.status_code == 201, again.text
    acknowledged.add(str(again.json()["note"]["id"]))
    stack.app.extensions["test.worker"].start()
    poll(lambda: _pending(stack) == 0, seconds=60, what="every kept note delivered")
    counts = count(database, stack.ehr_url, acknowledged)
    counts.show(f"store full during 3 saves ({len(acknowledged) - 2} short one(s) kept)")
    n = len(acknowledged)
    assert counts == Counts(acknowledged=n, stored=n, in_chart=n, lost=0, duplicated=0)


class HungLLM:
    """An OpenAI-compatible endpoint that takes the request and never answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/v1"
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.server.settimeout(0.1)
        while not self.stop.is_set():
            try:
                connection, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.held.append(connection)  # read nothing, answer nothing

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for connection in self.held:
            connection.close()
        self.server.close()


def test_a_hung_llm_delays_no_note(tmp_path: Path, sandbox_template: Path):
    llm = HungLLM()
    config = tmp_path / "site.toml"
    config.write_text(
        '[suggestions]\nkinds = ["problem_summary", "medications"]\n'
        '[kinds.problem_summary]\nengine = "llm"\n'
        '[llm]\nmodel = "hung-model"\nversion = "1"\ntimeout_seconds = 2\n'
    )
    environ = app_environ(
        tmp_path,
        SMARTAPP_DATABASE_URL=_own_store(tmp_path),
        SMARTAPP_CONFIG=str(config),
        SMARTAPP_LLM_BASE_URL=llm.url,
        SMARTAPP_LLM_MODEL="hung-model",
    )
    stack = start_stack(tmp_path, sandbox_template, environ=environ)
    try:
        launched = ehr_launch(stack, "pt-01")
        # The rules' drafts stand in for the LLM's at once; the clinician uses one.
        accept_one(launched)
        saved = save(launched)
        assert saved.status_code == 201, saved.text
        counts = count(_store(stack), stack.ehr_url, {str(saved.json()["note"]["id"])})
        counts.show("LLM hung during drafting")
        assert counts == Counts(acknowledged=1, stored=1, in_chart=1, lost=0, duplicated=0)
    finally:
        stack.stop()
        llm.close()
