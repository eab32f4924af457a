"""`voltgate-cloud import`: an operator's telematics export stored as if its buses had sent it.

The file (protocols/export_layout.py: CSV or xlsx, a column map for other header names) is parsed row by
row; bad rows are skipped and counted by reason. The good rows become telemetry messages, each vehicle's
rows in time order, `ROWS_PER_MESSAGE` to a message, encoded with the uplink's wire format and passed
through `cloud.ingest.ingest_message` and `Store.write` as the receiver passes a message from MQTT: the
same refusals (a timestamp outside the accepted window is refused record by record and kept as a dead
letter), daily partitions, rollups, KPI day marks and ingest ledger rows. At the end the rollups are
refreshed and the ended bus-days kept, as the receiver's next refresh would.

Exactly once: every sample's sequence number is derived from what it is, not from where it stands in the
file: `seq = ts_ms * SEQ_SLOTS + slot`, the slot being the signal's place in `EXPORT_SIGNALS`. The store
keeps one row per (vehicle, seq, ts), so importing a file again, or another export that overlaps it, adds
nothing it has already stored; a repeated (vehicle, timestamp) inside a file keeps its first row. These
numbers (about 10^13 today) lie far above an agent's own counter, which starts at 0 and counts one per
sample, so an imported sample never takes the key of a live one (and `MAX_SEQ`, 2^53 - 1, is reached
only in the year 37 000).

The accepted window is the live one (`ingest.max_sample_age_days` back from now) unless `max_age_days`
widens it: history older than that is the point of an import. Raw samples older than
`database.raw_retention_days` are stored all the same and dropped with their day by the next
maintenance; their kept daily KPIs, trips and charging sessions stay.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import numpy as np

from cloud.errors import CloudError, RejectedDataError
from cloud.ingest import BatchMessage, DeadLetter, Ingested, ingest_message
from cloud.kept_kpis import KeptDays
from cloud.settings import CloudSettings, IngestSettings
from cloud.store import Store, WriteStats
from protocols.errors import ProtocolError
from protocols.export_layout import EXPORT_SIGNALS, ExportRows, parse_column_map, read_export
from protocols.topics import is_valid_id, telemetry_topic
from protocols.wire import Batch, SampleRecord, encode_batch

log = logging.getLogger(__name__)

SEQ_SLOTS: Final = 8  # > len(EXPORT_SIGNALS): room for more export columns without renumbering
SIGNAL_SLOT: Final = {name: slot for slot, name in enumerate(EXPORT_SIGNALS.values())}
ROWS_PER_MESSAGE: Final = 600  # 10 minutes of a 1 Hz export: about what an agent's batch carries
MESSAGES_PER_WRITE: Final = 50  # one transaction; the receiver groups up to ingest.batch_max_messages
_WIRE_LEVEL: Final = 3  # zstd level: the payload never travels, it is only the dead letters' evidence


class HistoryImportError(CloudError):
    """An export that cannot be imported as a whole (unreadable file, unknown fleet)."""


@dataclass
class ImportReport:
    """What one import did."""

    file: Path
    rows_read: int = 0
    bad_rows: str = ""  # protocols.export_layout.ExportRows.bad_summary()
    bad_row_count: int = 0
    repeated_rows: int = 0  # a (vehicle, timestamp) already in an earlier row of the file
    vehicles: dict[str, str] = field(default_factory=dict)  # vehicle → fleet
    messages: int = 0
    samples_sent: int = 0
    samples_inserted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reason → records
    dead_letters: int = 0  # whole messages the database refused
    days_kept: int | None = 0  # bus-days kept by the final refresh (None: another replica holds it)

    @property
    def samples_already_stored(self) -> int:
        return self.samples_sent - self.samples_inserted - sum(self.refused.values())

    def lines(self) -> list[str]:
        vehicles = ", ".join(f"{v} ({f})" for v, f in sorted(self.vehicles.items())) or "none"
        out = [
            f"{self.file}: {self.rows_read} good rows of {len(self.vehicles)} vehicles: {vehicles}",
            f"bad rows skipped: {self.bad_row_count}" + (f": {self.bad_rows}" if self.bad_rows else ""),
            f"repeated (vehicle, timestamp) rows skipped: {self.repeated_rows}",
            f"samples: {self.samples_sent} sent in {self.messages} messages, {self.samples_inserted} stored, "
            f"{self.samples_already_stored} already stored",
        ]
        if self.refused:
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.refused.items()))
            out.append(
                f"refused as the receiver refuses them (kept as dead letters): {reasons}"
                + (
                    "; older history needs --max-age-days (ingest.max_sample_age_days is the live limit)"
                    if "ts_too_old" in self.refused
                    else ""
                )
            )
        if self.dead_letters:
            out.append(f"messages the database refused (kept as dead letters): {self.dead_letters}")
        kept = "another replica is keeping them" if self.days_kept is None else str(self.days_kept)
        out.append(f"ended bus-days kept (daily KPIs, trips, charging sessions): {kept}")
        return out


def export_batches(rows: ExportRows) -> tuple[list[Batch], int]:
    """Each vehicle's rows, in time order, as batches of `ROWS_PER_MESSAGE` rows; and how many rows
    repeated a (vehicle, timestamp) of an earlier row (left out)."""
    batches: list[Batch] = []
    repeated = 0
    vehicles = np.array(rows.vehicle, dtype=object)
    signals = [(name, SIGNAL_SLOT[name], column) for name, column in rows.values.items()]
    for vehicle in sorted(set(rows.vehicle)):
        idx = np.flatnonzero(vehicles == vehicle)
        idx = idx[np.argsort(rows.ts_ms[idx], kind="stable")]
        first = np.ones(len(idx), dtype=bool)
        first[1:] = np.diff(rows.ts_ms[idx]) != 0
        repeated += int((~first).sum())
        idx = idx[first]
        for start in range(0, len(idx), ROWS_PER_MESSAGE):
            part = idx[start : start + ROWS_PER_MESSAGE]
            samples = [
                SampleRecord(ts * SEQ_SLOTS + slot, ts, name, value)
                for name, slot, column in signals
                for ts, value in zip(rows.ts_ms[part].tolist(), column[part].tolist(), strict=True)
                if value == value  # NaN: an empty cell, no sample
            ]
            if samples:
                batches.append(Batch(vehicle, samples=tuple(samples)))
    return batches, repeated


async def import_export(
    store: Store,
    path: Path,
    limits: IngestSettings,
    *,
    fleet: str | None = None,
    column_map: Mapping[str, str] | None = None,
    received_at: datetime | None = None,
) -> ImportReport:
    """Store the good rows of an export through the receiver's write path; see the module's docstring."""
    if fleet is not None and not is_valid_id(fleet):
        raise HistoryImportError(f"--fleet {fleet!r} is not a fleet id (1-64 of A-Z a-z 0-9 _ . -)")
    try:
        rows = read_export(path, column_map)
    except ProtocolError as err:
        raise HistoryImportError(str(err)) from err
    report = ImportReport(path, len(rows), rows.bad_summary(), sum(rows.bad.values()))
    report.vehicles = await _fleets(store, sorted(set(rows.vehicle)), fleet)
    batches, report.repeated_rows = export_batches(rows)
    received_at = received_at or datetime.now(UTC)
    items: list[Ingested] = []
    for batch in batches:
        topic = telemetry_topic(report.vehicles[batch.vehicle_id], batch.vehicle_id)
        items.append(ingest_message(topic, encode_batch(batch, level=_WIRE_LEVEL), received_at, limits))
        report.samples_sent += len(batch.samples)
    for start in range(0, len(items), MESSAGES_PER_WRITE):
        group = items[start : start + MESSAGES_PER_WRITE]
        stats = await _write(store, group)
        report.messages += len(group)
        report.samples_inserted += stats.samples_inserted
        report.dead_letters += len(stats.dead_letters)
        for item in group:
            if isinstance(item, BatchMessage):
                report.refused.update(r.reason.value for r in item.refused)
    await store.refresh_rollups(keep_days=False)
    report.days_kept = await _keep_days(store)
    return report


async def run_import(
    settings: CloudSettings,
    path: Path,
    *,
    fleet: str | None,
    column_map: str | None,
    max_age_days: int | None,
) -> ImportReport:
    """`voltgate-cloud import`: open the store, import, close."""
    limits = settings.ingest
    if max_age_days is not None:
        if max_age_days < 1:
            raise HistoryImportError("--max-age-days must be at least 1")
        limits = limits.model_copy(update={"max_sample_age_days": max_age_days})
    try:
        mapping = parse_column_map(column_map)
    except ProtocolError as err:
        raise HistoryImportError(str(err)) from err
    store = await Store.open(settings.database, kept=_kept_of(settings))
    try:
        return await import_export(store, path, limits, fleet=fleet, column_map=mapping)
    finally:
        await store.close()


def _kept_of(settings: CloudSettings) -> KeptDays:
    """The kept days' time zone and trip gap, as the receiver's (`web.time_zone`, `web.trip_gap_s`)."""
    if settings.web is None:
        return KeptDays()
    return KeptDays.of(settings.web)


async def _fleets(store: Store, vehicles: Sequence[str], fleet: str | None) -> dict[str, str]:
    """Each vehicle's fleet: `fleet` when given, else the one the database knows it in."""
    if fleet is not None:
        return dict.fromkeys(vehicles, fleet)
    async with store.connection.cursor() as cur:
        await cur.execute(
            "SELECT vehicle_id, fleet FROM vehicles WHERE vehicle_id = ANY(%s)", (list(vehicles),)
        )
        known = {str(v): str(f) for v, f in await cur.fetchall()}
    new = [v for v in vehicles if v not in known]
    if new:
        shown = ", ".join(new[:5]) + (f" and {len(new) - 5} more" if len(new) > 5 else "")
        raise HistoryImportError(f"vehicles not in the database yet: {shown}; say their fleet with --fleet")
    return known


async def _write(store: Store, group: list[Ingested]) -> WriteStats:
    """One group in one transaction; when the database refuses it, message by message (as the receiver
    does), a refused message kept as a dead letter."""
    try:
        return await store.write(group)
    except RejectedDataError as err:
        log.warning("database rejected a group (%s); writing its messages one by one", err)
    total = WriteStats()
    for i, item in enumerate(group):
        try:
            stats = await store.write([item])
        except RejectedDataError as one:
            assert isinstance(item, BatchMessage)
            group[i] = DeadLetter(item.topic, item.vehicle_id, str(one), item.payload, item.received_at)
            stats = await store.write([group[i]])
        total.samples_inserted += stats.samples_inserted
        total.dead_letters += stats.dead_letters
    return total


async def _keep_days(store: Store) -> int | None:
    """Keep every ended bus-day the import marked (the receiver does it a budget at a time)."""
    done = 0
    while True:
        kept = await store.materialize_kpis()
        if kept is None:
            return None if done == 0 else done
        if kept == 0:
            return done
        done += kept
