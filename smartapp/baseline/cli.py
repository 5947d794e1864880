"""`smartapp baseline --since DATE [--issuer ISS]`: the EHR baseline, stored as aggregates."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import IO, Any

from smartapp.config import ConfigError, Settings, normalize_issuer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        type=date.fromisoformat,
        required=True,
        metavar="YYYY-MM-DD",
        help="count notes dated on or after this day",
    )
    parser.add_argument(
        "--issuer",
        default=None,
        metavar="ISS",
        help="the FHIR base URL to export from (one of SMARTAPP_ALLOWED_ISSUERS; "
        "default: the only one)",
    )
    parser.add_argument(
        "--go-live",
        type=date.fromisoformat,
        default=None,
        metavar="YYYY-MM-DD",
        help="the app's go-live at this site (default: the previous run's, else the first "
        "day the app showed a suggestion there)",
    )
    parser.add_argument(
        "--level",
        default="system",
        metavar="system|patient|group:ID",
        help="the $export level (default: system)",
    )
    parser.add_argument(
        "--client-id",
        default=None,
        help="the backend-services client id registered at the EHR (default: SMARTAPP_CLIENT_ID)",
    )
    parser.add_argument("--json", action="store_true", help="print what was stored as JSON")


def run_cli(
    args: argparse.Namespace,
    *,
    environ: dict[str, str] | None = None,
    out: IO[str] | None = None,
    **run_options: Any,
) -> int:
    """`run_options` reach `run_baseline` (tests inject the clock and the sleeper)."""
    from smartapp.baseline.service import run_baseline
    from smartapp.db import Database
    from smartapp.errors import AppError
    from smartapp.fhir.bulk import ExportLevel
    from smartapp.smart.backend import BackendServicesClient
    from smartapp.smart.keys import load_signing_key

    out = out or sys.stdout
    from smartapp.siteconfig import read_sources

    settings = read_sources(environ=environ).settings()
    issuer = _issuer(args.issuer, settings)
    if settings.private_key_path is None:
        raise ConfigError(
            "SMARTAPP_PRIVATE_KEY is not set: SMART Backend Services authenticate with the "
            "app's private key (private_key_jwt), the one its JWKS publishes"
        )
    try:
        level = ExportLevel.parse(args.level)
    except ValueError as exc:
        print(f"smartapp baseline: {exc}", file=sys.stderr)
        return 2
    client = BackendServicesClient(
        client_id=args.client_id or settings.client_id,
        signing_key=load_signing_key(settings.private_key_path),
        deadline=float(settings.fhir_deadline_seconds),
    )
    options: dict[str, Any] = {
        # SMARTAPP_FHIR_DEADLINE bounds each kick-off, poll and manifest; files have
        # their own cap and deadline (smartapp.fhir.bulk), being far larger than a chart.
        "bulk_options": {"request_deadline": float(settings.fhir_deadline_seconds)},
        **run_options,
    }
    database = Database.from_settings(settings)
    try:
        database.upgrade()
        report = run_baseline(
            database,
            issuer=issuer,
            since=args.since,
            go_live=args.go_live,
            client=client,
            level=level,
            **options,
        )
    except AppError as exc:
        print(f"smartapp baseline: {exc.message} [{exc.code}]", file=sys.stderr)
        return 1
    finally:
        database.dispose()
    if args.json:
        out.write(json.dumps(report.to_json()) + "\n")
    else:
        out.write("\n".join(report.lines()) + "\n")
    return 0


def _issuer(given: str | None, settings: Settings) -> str:
    allowed = settings.allowed_issuers
    if given is None:
        if len(allowed) == 1:
            return allowed[0]
        raise ConfigError(
            "--issuer: choose one of SMARTAPP_ALLOWED_ISSUERS ("
            + ", ".join(allowed or ("none set",))
            + ")"
        )
    issuer = normalize_issuer(given)
    if issuer not in allowed:
        # The allow-list decides where the app sends its key's assertions and tokens.
        raise ConfigError(f"--issuer {issuer!r} is not on SMARTAPP_ALLOWED_ISSUERS")
    return issuer
