"""The `smartapp` command: serve, sandbox, evaluate, check, outbox."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    from waitress import serve

    from smartapp import create_app

    app = create_app()
    print(f"smartapp listening on http://{args.host}:{args.port}", flush=True)
    serve(app, host=args.host, port=args.port, threads=args.threads, ident="smartapp")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from smartapp.suggestions.evaluate import run_cli

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartapp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the app on a production WSGI server (waitress)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, default=8)
    serve.set_defaults(handler=_serve)

    evaluate = sub.add_parser(
        "evaluate",
        help="run the configured suggestion engines over a cohort; report coverage and grounding",
    )
    _evaluate_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
