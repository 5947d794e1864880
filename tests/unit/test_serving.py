"""Unit (a real waitress server on loopback): the health routes answer from threads of
their own while every one of the app's threads is busy."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable
from typing import Any

import requests

from smartapp.serving import GC_THRESHOLDS, create_server, run_until_stopped, tune_collector


def test_healthz_answers_while_every_app_thread_is_busy():
    entered = threading.Event()
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/slow":
            entered.set()
            release.wait(30)  # a request stuck on a hung EHR
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    server = create_server(app, threads=1, host="127.0.0.1", port=0)
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    base = f"http://127.0.0.1:{server.effective_port}"
    slow: list[requests.Response] = []
    caller = threading.Thread(target=lambda: slow.append(requests.get(f"{base}/slow", timeout=30)))
    try:
        caller.start()
        assert entered.wait(10)
        # The only app thread is held until `release`: these answer from the health threads.
        assert requests.get(f"{base}/healthz", timeout=10).text == "/healthz"
        assert requests.get(f"{base}/readyz", timeout=10).text == "/readyz"
        assert not slow
    finally:
        release.set()
        caller.join(10)
        server.close()
        server.task_dispatcher.shutdown()
    assert slow[0].text == "/slow"


def test_a_stopping_server_answers_what_it_began_and_takes_no_new_connection():
    entered = threading.Event()
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/save":
            entered.set()
            release.wait(30)  # a note being written when the orchestrator says stop
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"saved" * 100_000]  # more than one socket write: sent after the stop

    server = create_server(app, threads=2, host="127.0.0.1", port=0)
    base = f"http://127.0.0.1:{server.effective_port}"
    stopping = threading.Event()
    stopped = threading.Event()
    loop = threading.Thread(
        target=run_until_stopped,
        args=(server,),
        kwargs={"on_stopped": stopped.set, "stopping": stopping, "grace": 30},
        daemon=True,
    )
    loop.start()
    answers: list[requests.Response] = []
    caller = threading.Thread(
        target=lambda: answers.append(requests.get(f"{base}/save", timeout=30))
    )
    caller.start()
    assert entered.wait(10)
    stopping.set()  # SIGTERM
    # Once the listener is closed a new connection is refused; the begun request is not done.
    refused = False
    for _ in range(200):
        try:
            requests.get(f"{base}/healthz", timeout=2)
        except requests.ConnectionError:
            refused = True
            break
        entered.wait(0.05)
    assert refused and not answers and not stopped.is_set()
    release.set()
    caller.join(30)
    loop.join(30)
    assert answers[0].status_code == 200 and answers[0].text == "saved" * 100_000
    assert stopped.is_set()


def test_the_collector_is_tuned_for_serving_and_start_up_frozen_out_of_its_scans():
    thresholds = gc.get_threshold()
    try:
        tune_collector()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0  # what start-up built: never scanned again
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
