"""The `smartapp` command: serve, sandbox, evaluate, draft, check, baseline, outbox, audit, …"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

# A plain table, cheap to import: the sandbox's --imitate choices.
from smartapp.sandbox.imitations import IMITATIONS

if TYPE_CHECKING:
    from smartapp.config import Settings


def _settings() -> Settings:
    """The app's settings as every command reads them (`smartapp.siteconfig.read_sources`)."""
    from smartapp.siteconfig import read_sources

    return read_sources().settings()


def _serve(args: argparse.Namespace) -> int:
    from smartapp.config import require_shared_secret

    if args.processes < 1:
        print("smartapp: --processes must be at least 1", file=sys.stderr)
        return 2
    settings = _settings()
    if args.processes == 1:
        return _serve_one(args, settings, sockets=None)
    require_shared_secret(settings, f"`smartapp serve --processes {args.processes}`")
    return _serve_processes(args, settings)


def _serve_one(args: argparse.Namespace, settings: Settings, *, sockets: list[Any] | None) -> int:
    """One waitress process: the app's threads, and its outbox worker unless --no-worker.

    SIGTERM or Ctrl-C stops it gracefully (`smartapp.serving.run_until_stopped`): the
    requests it has begun are answered, then the worker, the app's threads and the store
    are closed, in that order.
    """
    from smartapp import create_app
    from smartapp.notes.outbox import OutboxWorker
    from smartapp.serving import create_server, run_until_stopped, tune_collector

    app = create_app(settings)
    tune_collector()
    from smartapp.suggestions import units

    units.warm_up()  # before listening: the first chart's drafts would build it
    worker = None
    if not args.no_worker:
        worker = OutboxWorker(
            app.extensions["smartapp.outbox"], housekeeping=app.extensions["smartapp.housekeeping"]
        )
        worker.start()

    def stopped() -> None:
        if worker is not None:
            worker.stop()
        for close in app.extensions.get("smartapp.on_shutdown", []):
            close()
        app.extensions["smartapp.db"].dispose()
        print(f"smartapp stopped (pid {os.getpid()})", flush=True)

    where = {"sockets": sockets} if sockets else {"host": args.host, "port": args.port}
    print(f"smartapp listening on http://{args.host}:{args.port} (pid {os.getpid()})", flush=True)
    # /healthz and /readyz have threads of their own: they answer while every one of the
    # app's threads waits on a slow EHR.
    server = create_server(app, threads=args.threads, ident="smartapp", **where)
    server.print_listen("Serving on http://{}:{}")  # as waitress.serve() says it
    run_until_stopped(server, on_stopped=stopped)
    return 0


def _serve_processes(args: argparse.Namespace, settings: Settings) -> int:
    """N waitress processes sharing one listening socket (each its own GIL; see README).

    The socket is bound before forking and each child builds its own app (its own store
    connections, caches and LLM threads) after it; the parent forwards SIGTERM/SIGINT.
    """
    import signal
    import socket

    listener = socket.create_server((args.host, args.port), backlog=1024)
    children: list[int] = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                code = _serve_one(args, settings, sockets=[listener])
            finally:
                os._exit(code)
        children.append(pid)
    listener.close()

    def stop(signum: int, _frame: Any) -> None:
        for child in children:
            # A child that already exited needs no signal.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status) if status else 0)
    return 0 if worst < 0 else worst


def _worker(args: argparse.Namespace) -> int:
    """The outbox and forwarding worker as its own process (beside `serve --no-worker`)."""
    import signal
    import threading

    from smartapp import create_app
    from smartapp.config import require_shared_secret
    from smartapp.notes.outbox import OutboxWorker

    settings = _settings()
    require_shared_secret(settings, "`smartapp worker`")
    app = create_app(settings)
    worker = OutboxWorker(
        app.extensions["smartapp.outbox"],
        interval=args.interval,
        housekeeping=app.extensions["smartapp.housekeeping"],
    )
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    worker.start()
    print(f"smartapp worker running (pid {os.getpid()}, every {args.interval:g} s)", flush=True)
    stopped.wait()
    worker.stop()
    app.extensions["smartapp.db"].dispose()
    return 0


def _sandbox(args: argparse.Namespace) -> int:
    import threading

    from smartapp.notes.outbox import OutboxWorker
    from smartapp.stack import build_stack

    stack = build_stack(
        ehr_port=args.port,
        app_port=args.app_port if args.app_port is not None else args.port + 1,
        latency_ms=args.latency_ms,
        population_size=args.patients,
        rewrite_urn_uuids=args.rewrite_urn_uuids,
        imitate=args.imitate,
        # The demo's EHR shows the assistant's CDS Hooks card above the sidebar.
        cds_hooks=True,
        # Twelve weeks of notes for `smartapp baseline` to export (the demo).
        documentation_history=True,
    )
    sandbox = stack.ehr.extensions["smartapp.sandbox"]
    launch_id = sandbox.auth.create_launch(
        patient="pt-01", encounter=None, user="dr-ada-lovelace", client_id=stack.settings.client_id
    )
    direct = sandbox.auth.launch_url(stack.settings.client_id, launch_id)
    worker = OutboxWorker(
        stack.app.extensions["smartapp.outbox"],
        housekeeping=stack.app.extensions["smartapp.housekeeping"],
    )
    with stack:
        worker.start()
        print(
            "\nsmartapp sandbox is running (Ctrl-C to stop)\n"
            f"  EHR (open this):     {stack.ehr_url}/\n"
            f"  Direct EHR launch:   {direct}\n"
            f"  FHIR base (iss):     {stack.fhir_base}\n"
            f"  Governance:          {stack.app_url}/admin  (sign in as "
            f"{', '.join(stack.settings.admin_users)})\n",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)
        finally:
            worker.stop()
    return 0


def _outbox_retry(args: argparse.Namespace) -> int:
    from smartapp import create_app

    app = create_app()
    with app.app_context():
        outbox = app.extensions["smartapp.outbox"]
        # A process of this host killed with notes in hand: take them now, not in 15 s.
        outbox.recover()
        report = outbox.run_once(force=True)
    print(
        f"notes delivered: {report.notes_delivered}, still waiting: {report.notes_waiting}, "
        f"failed: {report.notes_failed}, being sent by another process: {report.notes_held}; "
        f"feedback forwarded: {report.feedback_sent}"
    )
    return 1 if report.notes_failed else 0


def _audit_verify(args: argparse.Namespace) -> int:
    from smartapp.audit.chain import run_verify_cli

    return run_verify_cli(args)


def _purge(args: argparse.Namespace) -> int:
    from smartapp.purge import run_cli

    return run_cli(args)


def _db_upgrade(args: argparse.Namespace) -> int:
    """Bring the store's schema to the newest migration: once per deployment, before the
    app's processes start (they migrate on their own only in sandbox mode)."""
    from smartapp.db import Database

    database = Database.from_settings(_settings())
    try:
        database.upgrade()
        _ready, detail = database.at_head()
    finally:
        database.dispose()
    print(f"the store is {detail}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from smartapp.suggestions.evaluate import run_cli

    if not args.record:
        return run_cli(args)
    # Only --record loads the store: an evaluation alone needs no database.
    from smartapp.governance.evaluations import record_from_cli

    return run_cli(args, recorder=record_from_cli)


def _draft(args: argparse.Namespace) -> int:
    from smartapp.suggestions.evaluate import run_draft_cli

    return run_draft_cli(args)


def _check(args: argparse.Namespace) -> int:
    from smartapp.check import run_cli

    return run_cli(args)


def _baseline(args: argparse.Namespace) -> int:
    from smartapp.baseline.cli import run_cli

    return run_cli(args)


def _bench(args: argparse.Namespace) -> int:
    from smartapp.bench import run_cli

    return run_cli(args)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    # Defined here, not in suggestions.evaluate, so that every command does not pay for
    # importing the engines.
    parser.add_argument(
        "--cohort",
        default="sandbox",
        help="'sandbox' (the generated sandbox population, the default) or a folder of FHIR "
        "Bundles (*.json) or NDJSON files (*.ndjson)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON only")
    parser.add_argument(
        "--reference",
        default=None,
        metavar="DIR",
        help="measure the drafts against the reference assessments and plans in DIR "
        "(<name>.json beside <name>.reference.toml)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="site configuration file (default: $SMARTAPP_CONFIG, else the built-in defaults)",
    )
    parser.add_argument("--site", default=None, metavar="ISS", help="apply this issuer's overrides")
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        metavar="YYYY-MM-DD",
        help="the day care-gap intervals count back from (default: today)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a kind's grounding rate is below the configured min_grounding_rate",
    )
    parser.add_argument(
        "--record",
        action="store_true",
        help="store the report in the app's store and print its SHA-256: what change control "
        "cites to evaluate an engine version",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.ndjson",
        help="also write one `smartapp draft --json` record per patient to this NDJSON file",
    )


def _draft_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chart", required=True, metavar="FILE", help="one chart: a FHIR Bundle (.json) or NDJSON"
    )
    parser.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        metavar="YYYY-MM-DD",
        help="the day the chart is read (default: today)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="site configuration file (default: $SMARTAPP_CONFIG, else the built-in defaults)",
    )
    parser.add_argument("--site", default=None, metavar="ISS", help="apply this issuer's overrides")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"suggestions": [...], "dropped": [...], "problems": [...]} as JSON',
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartapp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the app on a production WSGI server (waitress)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, default=8)
    serve.add_argument(
        "--processes",
        type=int,
        default=1,
        help="waitress processes sharing the port (more than 1 needs SMARTAPP_SECRET_KEY)",
    )
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run the outbox worker in this process (run `smartapp worker` instead)",
    )
    serve.set_defaults(handler=_serve)

    worker = sub.add_parser(
        "worker", help="deliver waiting notes and feedback forwards, as a process of its own"
    )
    worker.add_argument(
        "--interval", type=float, default=10.0, help="seconds between runs (default 10)"
    )
    worker.set_defaults(handler=_worker)

    sandbox = sub.add_parser(
        "sandbox",
        help="run the embedded sandbox EHR with the app in its sidebar, on loopback",
    )
    sandbox.add_argument("--port", type=int, default=8400, help="the EHR's port (default 8400)")
    sandbox.add_argument(
        "--app-port", type=int, default=None, help="the app's port (default: --port + 1)"
    )
    sandbox.add_argument(
        "--latency-ms", type=int, default=0, help="simulated round-trip time per FHIR request"
    )
    sandbox.add_argument(
        "--patients", type=int, default=24, help="synthetic patients (first start)"
    )
    sandbox.add_argument(
        "--rewrite-urn-uuids",
        action="store_true",
        help="replace a transaction's urn:uuid fullUrls everywhere, identifiers included",
    )
    sandbox.add_argument(
        "--imitate",
        choices=sorted(IMITATIONS),
        default="generic",
        help="behave like one EHR family's server (see the README's table of EHR families)",
    )
    sandbox.set_defaults(handler=_sandbox)

    outbox = sub.add_parser("outbox", help="notes and feedback waiting to be delivered")
    outbox_sub = outbox.add_subparsers(dest="outbox_command", required=True)
    retry = outbox_sub.add_parser("retry", help="try to deliver everything pending, now")
    retry.set_defaults(handler=_outbox_retry)

    audit = sub.add_parser("audit", help="the audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify", help="check the audit trail's hash chain; report the first break (exit 1)"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=_audit_verify)

    purge = sub.add_parser(
        "purge", help="remove expired PHI (snapshots, sessions, old texts) and say what went"
    )
    purge.add_argument("--json", action="store_true", help="print the counts as JSON")
    purge.set_defaults(handler=_purge)

    db = sub.add_parser("db", help="the app's store")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser(
        "upgrade", help="apply the store's migrations (before starting the app's processes)"
    )
    upgrade.set_defaults(handler=_db_upgrade)

    evaluate = sub.add_parser(
        "evaluate",
        help="run the configured suggestion engines over a cohort; report coverage and grounding",
    )
    _evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    draft = sub.add_parser(
        "draft",
        help="every suggestion for one chart, each statement's verification, what was dropped",
    )
    _draft_arguments(draft)
    draft.set_defaults(handler=_draft)

    from smartapp import bench as bench_module
    from smartapp import check as check_module
    from smartapp.baseline import cli as baseline_cli

    check = sub.add_parser(
        "check",
        help="can the app be registered and launched against this FHIR server? (line by line)",
    )
    check_module.add_arguments(check)
    check.set_defaults(handler=_check)

    bench = sub.add_parser(
        "bench",
        help="the chart-loading benchmark: the app against a naive sequential SMART client",
    )
    bench_module.add_arguments(bench)
    bench.set_defaults(handler=_bench)

    baseline = sub.add_parser(
        "baseline",
        help="note completion lag and length per clinician and week, from the EHR's Bulk "
        "$export (SMART Backend Services); stores aggregates only",
    )
    baseline_cli.add_arguments(baseline)
    baseline.set_defaults(handler=_baseline)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from smartapp.config import ConfigError
    from smartapp.instance import private_umask
    from smartapp.siteconfig import SiteConfigError

    args = build_parser().parse_args(argv)
    # Every command may write PHI (the store, the sandbox's data): owner-only files.
    private_umask()
    try:
        result: int = args.handler(args)
    except (ConfigError, SiteConfigError) as exc:
        print(f"smartapp: configuration error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
