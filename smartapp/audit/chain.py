"""The audit trail as a hash chain: each row is sealed with the seal of the row before it.

Row n's seal is HMAC-SHA256(key, canonical(n, seal of row n-1, the row's fields)), the key
derived from SMARTAPP_SECRET_KEY (`smartapp.atrest`). Someone who can write to the
database but does not hold the key (the database user, a DBA, a restored backup) cannot
remove, reorder or alter a row without `smartapp audit verify` reporting the first break;
the triggers of `models.py` stop the app's own code and honest mistakes first.
A one-row head (`audit_chain`) serialises appends across processes and remembers the last
seal, so a trimmed tail is detected too; keep `verify --json`'s head somewhere else as
well (a cron job into the SIEM) to detect a tail trimmed by someone who also rewinds the
head. https://www.rfc-editor.org/rfc/rfc2104
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.orm import Session

from smartapp.audit.models import GENESIS, AuditChainHead, AuditEvent

#: The key of `Session.info` under which `Database` hands its seal keys (current first).
SEAL_KEYS_INFO = "smartapp.audit.seal_keys"


def canonical(event: AuditEvent) -> bytes:
    """The sealed bytes of a row: every field, in a fixed order, as JSON."""
    recorded = event.recorded.astimezone(UTC).isoformat(timespec="microseconds")
    fields = [
        event.seq,
        event.prev_hash,
        event.id,
        recorded,
        event.actor,
        event.action,
        event.site,
        event.patient,
        event.outcome,
        event.detail,
    ]
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def seal(key: bytes, event: AuditEvent) -> str:
    return hmac.new(key, canonical(event), hashlib.sha256).hexdigest()


def seal_keys(session: Session) -> Sequence[bytes]:
    keys: Sequence[bytes] | None = session.info.get(SEAL_KEYS_INFO)
    if not keys:
        raise RuntimeError("audit events need a session from Database.session() (its seal keys)")
    return keys


def append(session: Session, event: AuditEvent) -> None:
    """Give `event` the next place in the chain and add it: two statements in the caller's
    transaction, the head's row lock held until it commits, so the chain never forks."""
    key = seal_keys(session)[0]
    table: Table = AuditChainHead.__table__  # type: ignore[assignment]
    head = session.execute(
        update(table)
        .where(table.c.id == 1)
        .values(seq=table.c.seq + 1)
        .returning(table.c.seq, table.c.hash)
    ).first()
    if head is None:
        raise RuntimeError("audit_chain has no head row: run the migrations (smartapp serve does)")
    seq, previous = int(head.seq), str(head.hash)
    if event.id is None:
        from smartapp.feedback.models import new_id

        event.id = new_id()
    event.seq = seq
    event.prev_hash = previous
    event.hash = seal(key, event)
    # The INSERT's trigger moves the head's hash to this row's (`models.chain_head_ddl`).
    session.add(event)


def append_many(session: Session, events: Sequence[AuditEvent]) -> None:
    """Give `events` the next places in the chain, in order, and insert them: the head's row
    lock is taken once for all of them (one UPDATE for the places, one INSERT of the rows),
    then held until the caller commits, as `append` does for one."""
    if not events:
        return
    key = seal_keys(session)[0]
    table: Table = AuditChainHead.__table__  # type: ignore[assignment]
    head = session.execute(
        update(table)
        .where(table.c.id == 1)
        .values(seq=table.c.seq + len(events))
        .returning(table.c.seq, table.c.hash)
    ).first()
    if head is None:
        raise RuntimeError("audit_chain has no head row: run the migrations (smartapp serve does)")
    seq, previous = int(head.seq) - len(events), str(head.hash)
    from smartapp.feedback.models import new_id

    rows = []
    for event in events:
        seq += 1
        if event.id is None:
            event.id = new_id()
        event.seq = seq
        event.prev_hash = previous
        event.hash = previous = seal(key, event)
        rows.append({column: getattr(event, column) for column in _EVENT_COLUMNS})
    # Core, not the ORM's unit of work, while the head is locked; the rows go in seq order,
    # so the INSERT's trigger leaves the head's hash at the last one's.
    events_table: Table = AuditEvent.__table__  # type: ignore[assignment]
    session.execute(events_table.insert(), rows)


_EVENT_COLUMNS = (
    "id",
    "recorded",
    "actor",
    "action",
    "site",
    "patient",
    "outcome",
    "detail",
    "seq",
    "prev_hash",
    "hash",
)


@dataclass(frozen=True, kw_only=True)
class ChainReport:
    """What `smartapp audit verify` found."""

    rows: int
    legacy_rows: int
    head_seq: int
    head_hash: str
    #: The first break: (seq or None, event id or None, what is wrong); None when intact.
    first_break: tuple[int | None, str | None, str] | None

    @property
    def intact(self) -> bool:
        return self.first_break is None

    def to_json(self) -> dict[str, Any]:
        brk = self.first_break
        return {
            "intact": self.intact,
            "rows": self.rows,
            "legacyRows": self.legacy_rows,
            "head": {"seq": self.head_seq, "hash": self.head_hash},
            "firstBreak": None if brk is None else {"seq": brk[0], "id": brk[1], "problem": brk[2]},
        }


def verify(session: Session, keys: Sequence[bytes] | None = None) -> ChainReport:
    """Walk the chain in order; report the first row that is missing, moved or altered."""
    keys = list(keys or seal_keys(session))
    head = session.get(AuditChainHead, 1)
    head_seq = head.seq if head else 0
    head_hash = head.hash if head else GENESIS
    legacy_expected = head.legacy_rows if head else 0
    legacy = session.scalar(select(func.count()).where(AuditEvent.seq.is_(None))) or 0

    expected_seq, previous, rows = 1, GENESIS, 0
    first_break: tuple[int | None, str | None, str] | None = None
    stream = session.scalars(
        select(AuditEvent).where(AuditEvent.seq.is_not(None)).order_by(AuditEvent.seq)
    ).yield_per(1000)
    for event in stream:
        rows += 1
        if event.seq != expected_seq:
            first_break = (
                expected_seq,
                None,
                f"row {expected_seq} is missing (the next row is {event.seq})",
            )
            break
        if event.prev_hash != previous:
            first_break = (
                event.seq,
                event.id,
                f"row {event.seq} does not follow row {event.seq - 1}",
            )
            break
        if not any(hmac.compare_digest(seal(k, event), event.hash or "") for k in keys):
            first_break = (
                event.seq,
                event.id,
                f"row {event.seq} was altered (its seal does not match)",
            )
            break
        previous, expected_seq = str(event.hash), expected_seq + 1
    if first_break is None and (head_seq != expected_seq - 1 or head_hash != previous):
        first_break = (
            expected_seq,
            None,
            f"rows {expected_seq}..{head_seq} are missing (the chain ends at {expected_seq - 1})"
            if head_seq >= expected_seq
            else f"the chain's head ({head_seq}) does not match its last row ({expected_seq - 1})",
        )
    if first_break is None and legacy != legacy_expected:
        first_break = (
            None,
            None,
            f"{legacy} rows from before the chain, {legacy_expected} expected: "
            "rows without a seal were added or removed",
        )
    return ChainReport(
        rows=rows,
        legacy_rows=legacy,
        head_seq=head_seq,
        head_hash=head_hash,
        first_break=first_break,
    )


def run_verify_cli(args: Any) -> int:
    """`smartapp audit verify [--json]`: exit 0 when the chain is intact, 1 at a break."""
    from smartapp.config import Settings
    from smartapp.db import Database

    database = Database.from_settings(Settings.from_env())
    try:
        database.upgrade()
        with database.session() as session:
            report = verify(session)
    finally:
        database.dispose()
    if args.json:
        print(json.dumps(report.to_json()))
    elif report.first_break is None:
        print(
            f"audit chain intact: {report.rows} sealed rows"
            + (f" (and {report.legacy_rows} from before the chain)" if report.legacy_rows else "")
            + f"; head {report.head_seq} {report.head_hash}"
        )
    else:
        seq, event_id, problem = report.first_break
        print(
            f"audit chain BROKEN: {problem}"
            + (f" (event {event_id})" if event_id else "")
            + f"; {report.rows} rows read, head {report.head_seq}"
        )
    return 0 if report.intact else 1
