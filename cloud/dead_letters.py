"""Dead letters: what the receiver could not store as data, kept as evidence, bounded.

Two kinds of row go to `dead_letters` (cloud/sql/0006_dead_letters.sql says why they are shaped so):

- a whole message that cannot be split into records (`cloud.ingest.DeadLetter`: bad topic, undecodable
  payload, vehicle mismatch, oversized, refused by the database);
- a message whose good records were stored and some refused one by one (`BatchMessage.refused`): one
  row for the message, its reason summing the refusals up, the first few listed.

Bounds: `dead_letter_rows` (pure) cuts every payload to `database.dead_letter_payload_max_bytes`,
keeping its original length and SHA-256, and lists at most `dead_letter_max_listed_records` refused
records a message. `prune` deletes rows older than `dead_letter_retention_days`, then the oldest
rows while all rows together exceed `dead_letter_max_total_bytes`, counted as `dead_letter_bytes`
(payload, texts and list as stored, plus a fixed overhead for the row and its index entries), and
cuts payloads stored longer than the limit before it applied. It runs in the receiver's hourly
maintenance and, so that a flood of bad messages cannot outgrow the cap in between, after each tenth
of the cap a store has written (`Store.write`); every replica does, and deleting twice is harmless.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import psycopg
from psycopg.types.json import Jsonb

from cloud.ingest import BatchMessage, DeadLetter, Ingested
from cloud.settings import DatabaseSettings

ROW_OVERHEAD_BYTES: Final = 100
"""What a dead letter costs beyond its variable fields: tuple header, fixed columns, index entries."""

_ROW_BYTES: Final = (
    f"(octet_length(payload) + octet_length(reason) + octet_length(topic)"
    f" + coalesce(octet_length(refused::text), 0) + {ROW_OVERHEAD_BYTES})"
)


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    """One row of `dead_letters`, as written."""

    received_at: datetime
    topic: str
    vehicle_id: str | None
    reason: str
    payload: bytes  # cut to the configured size
    payload_bytes: int  # the original length
    payload_sha256: bytes | None  # of the whole payload; None when the receiver did not hold it
    refused_records: int
    refused: list[dict[str, object]] | None  # the first refused records listed


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one `prune` did."""

    expired: int  # rows past the retention
    over_cap: int  # oldest rows beyond the total size cap
    truncated: int  # stored payloads cut to the limit


def dead_letter_rows(items: Sequence[Ingested], settings: DatabaseSettings) -> list[DeadLetterRow]:
    """The dead-letter rows of a group: one per whole dead letter, one per message with refused records."""
    cut = settings.dead_letter_payload_max_bytes
    rows: list[DeadLetterRow] = []
    for item in items:
        if isinstance(item, DeadLetter):
            rows.append(
                DeadLetterRow(
                    item.received_at, _no_nul(item.topic), item.vehicle_id, item.reason, item.payload[:cut],
                    len(item.payload), hashlib.sha256(item.payload).digest(), 0, None,
                )
            )  # fmt: skip
        elif isinstance(item, BatchMessage) and item.refused:
            whole = len(item.payload) == item.payload_bytes
            listed: list[dict[str, object]] = [
                {
                    "seq": r.seq,
                    "ts_ms": r.ts_ms,
                    "name": _no_nul(r.name),
                    "reason": r.reason.value,
                    "value": r.value if math.isfinite(r.value) else str(r.value),  # JSON has no NaN, inf
                }
                for r in item.refused[: settings.dead_letter_max_listed_records]
            ]
            rows.append(
                DeadLetterRow(
                    item.received_at, _no_nul(item.topic), item.vehicle_id, item.refused_summary(),
                    item.payload[:cut], item.payload_bytes,
                    hashlib.sha256(item.payload).digest() if whole else None, len(item.refused), listed,
                )
            )  # fmt: skip
    return rows


def row_bytes(row: DeadLetterRow) -> int:
    """About what `row` adds to the bytes `prune` counts against the size cap (jsonb's text spaced
    as `json.dumps` spaces it)."""
    listed = len(json.dumps(row.refused, ensure_ascii=False).encode()) if row.refused is not None else 0
    texts = len(row.reason.encode()) + len(row.topic.encode())
    return len(row.payload) + texts + listed + ROW_OVERHEAD_BYTES


def _no_nul(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL; a garbage topic or a refused name may."""
    return text.replace("\x00", "\\0")


async def write(cur: psycopg.AsyncCursor[tuple[object, ...]], rows: Sequence[DeadLetterRow]) -> None:
    """Copy `rows` into `dead_letters` (inside the caller's transaction)."""
    if not rows:
        return
    async with cur.copy(
        "COPY dead_letters (received_at, topic, vehicle_id, reason, payload, payload_bytes, payload_sha256,"
        " refused_records, refused) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(["timestamptz", "text", "text", "text", "bytea", "int4", "bytea", "int4", "jsonb"])
        for r in rows:
            await copy.write_row(
                (
                    r.received_at, r.topic, r.vehicle_id, r.reason, r.payload, r.payload_bytes,
                    r.payload_sha256, r.refused_records, Jsonb(r.refused) if r.refused is not None else None,
                )
            )  # fmt: skip


async def prune(
    conn: psycopg.AsyncConnection[tuple[object, ...]], settings: DatabaseSettings, now: datetime | None = None
) -> Pruned:
    """Enforce the retention, the payload size and the total size cap, in one transaction."""
    oldest_kept = (now or datetime.now(UTC)) - timedelta(days=settings.dead_letter_retention_days)
    cut = settings.dead_letter_payload_max_bytes
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute("DELETE FROM dead_letters WHERE received_at < %s", (oldest_kept,))
        expired = max(cur.rowcount, 0)
        await cur.execute(
            "UPDATE dead_letters SET payload = substring(payload FROM 1 FOR %(cut)s)"
            " WHERE octet_length(payload) > %(cut)s",
            {"cut": cut},
        )
        truncated = max(cur.rowcount, 0)
        # Newest first, each row with the bytes of those at least as new: beyond the cap, delete.
        await cur.execute(
            "DELETE FROM dead_letters AS d USING (SELECT id, sum(" + _ROW_BYTES + ")"
            " OVER (ORDER BY received_at DESC, id DESC) AS newer_bytes FROM dead_letters) AS s"
            " WHERE d.id = s.id AND s.newer_bytes > %s",
            (settings.dead_letter_max_total_bytes,),
        )
        over_cap = max(cur.rowcount, 0)
    return Pruned(expired, over_cap, truncated)


async def dead_letter_bytes(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> int:
    """All dead letters' bytes as `prune` counts them against the total size cap."""
    cur = await conn.execute("SELECT coalesce(sum(" + _ROW_BYTES + "), 0) FROM dead_letters")
    row = await cur.fetchone()
    return int(str(row[0])) if row else 0
