"""Evaluations the app ran itself: `smartapp evaluate --record` stores the report, and an
engine version is evaluated by citing that report's SHA-256, never by a posted JSON.

A posted report is whatever its sender typed (issue 11, finding 3); a stored one was
produced by this app's engines over a named cohort, and its hash, recomputed at each use,
shows it was not edited since.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from smartapp.errors import BadRequest
from smartapp.governance.models import EvaluationRun

_SHA256 = re.compile(r"^(?:sha256:)?([0-9a-f]{64})$")


def report_hash(report: Mapping[str, Any]) -> str:
    """SHA-256 of the report's canonical JSON (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_hash(value: object) -> str:
    """A 64-hex SHA-256, with or without a "sha256:" prefix; BadRequest otherwise."""
    match = _SHA256.match(value.strip().lower()) if isinstance(value, str) else None
    if match is None:
        raise BadRequest(
            "evaluation: give the SHA-256 printed by `smartapp evaluate --record` "
            "(64 hexadecimal characters, optionally prefixed with sha256:)."
        )
    return match.group(1)


def record_run(
    session: Session,
    report: Mapping[str, Any],
    *,
    cohort: str,
    site: str | None,
    recorded_by: str,
    now: datetime,
) -> EvaluationRun:
    """Store a report the app just produced; the same report twice is stored once."""
    digest = report_hash(report)
    existing = find_run(session, digest)
    if existing is not None:
        return existing
    run = EvaluationRun(
        sha256=digest,
        report=dict(report),
        cohort=cohort[:512],
        site=site,
        recorded_by=recorded_by[:256],
        recorded_at=now,
    )
    session.add(run)
    session.flush()
    return run


def find_run(session: Session, digest: str) -> EvaluationRun | None:
    return session.scalars(select(EvaluationRun).where(EvaluationRun.sha256 == digest)).first()


def intact(run: EvaluationRun) -> bool:
    """Whether the stored report still hashes to the name it was stored under."""
    return report_hash(run.report) == run.sha256


def record_from_cli(
    report: Mapping[str, Any],
    *,
    cohort: str,
    site: str | None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """`smartapp evaluate --record`: store `report` in the app's store; its SHA-256."""
    import getpass

    from smartapp.config import Settings
    from smartapp.db import Database, utcnow

    database = Database.from_settings(Settings.from_env(environ))
    try:
        database.upgrade()
        with database.session() as session:
            try:
                user = getpass.getuser()
            except (KeyError, OSError):  # no name for this uid (a container)
                user = "unknown"
            run = record_run(
                session, report, cohort=cohort, site=site, recorded_by=f"cli:{user}", now=utcnow()
            )
            return run.sha256
    finally:
        database.dispose()
