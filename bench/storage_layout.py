"""Bytes per stored sample: the receiver's sample blocks beside a narrow table of one row per sample,
hot and (TimescaleDB) compressed, on a realistic fleet mix; and late / redelivered writes into
compressed chunks beside hot writes.

    python bench/storage_layout.py [--moving 6] [--parked 3] [--duration 1h] [--seed 7]
                                   [--dsn postgresql://postgres@127.0.0.1:5432/test]
                                   [--timescale-dsn postgresql://postgres@127.0.0.1:5433/test]

Workload: the simulator's bus in service (route, from 03:00 UTC) and parked overnight (from 22:00 UTC)
for `--duration` each, through the agent's decode and sampling policy (bench/wire_size.py), every bus
under its own id and sequence, shifted into the same hours; cut into messages by 60 s age as the
uplink cuts them, encoded with the wire format and the catalog's quanta, and taken in by the
receiver's own `ingest_message`, so the store sees exactly what it sees in service.

Layouts, each in a fresh schema of each database:
  * blocks: the receiver's own write path (`cloud.store.Store.write`, groups of 20 messages);
  * narrow (the baseline): one row per sample (vehicle_id text, signal text, ts, seq, value float8)
    keyed on (vehicle_id, seq, ts), loaded by COPY; on TimescaleDB a hypertable with 6-hour chunks,
    compressed segmentby vehicle_id, signal orderby ts (what TimescaleDB's documentation suggests).
Sizes: pg_total_relation_size over every partition (plain PostgreSQL) or hypertable_size (TimescaleDB)
plus the signal dictionary, after VACUUM ANALYZE: heap, TOAST and indexes. "compressed": after
compress_chunk of every chunk.

Late and redelivered data (the mix only): 5 % of the messages (every 20th of each bus) are held back
and written after the rest is stored (and, on TimescaleDB, compressed), then 5 % of the messages are
written again (all duplicates). Their samples/s beside the hot writes' of the same run.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from cloud.ingest import BatchMessage, ingest_message
from cloud.settings import DatabaseSettings, IngestSettings
from cloud.store import Store
from protocols.catalog import load_catalog
from protocols.topics import telemetry_topic
from protocols.wire import Batch, SampleRecord, encode_batch

sys.path.insert(0, str(Path(__file__).parent))
import wire_size  # bench/wire_size.py, beside this file

STARTS = {"moving": "2024-03-04T03:00:00Z", "parked": "2024-03-03T22:00:00Z"}
GROUP = 20  # messages per write group
NARROW_DDL = (
    "CREATE TABLE narrow_samples (vehicle_id text NOT NULL, signal text NOT NULL, ts timestamptz NOT NULL,"
    " seq bigint NOT NULL, value double precision NOT NULL, PRIMARY KEY (vehicle_id, seq, ts))"
)


def simulate(kind: str, duration: str, seed: int, work: Path) -> list[SampleRecord]:
    """The samples the agent keeps from one simulated bus (numbered from 0 in time order)."""
    (work / kind).mkdir()
    log, nmea = wire_size.simulate(STARTS[kind], duration, seed, work / kind)
    return wire_size.agent_samples(log, nmea, load_catalog())[1]


@dataclass(frozen=True)
class Fleet:
    messages: list[BatchMessage]  # in fleet order (batch k of every bus, then k + 1)
    late: list[BatchMessage]  # held back
    samples: int


def build_fleet(recorded: dict[str, list[SampleRecord]], buses: dict[str, int], start: datetime) -> Fleet:
    quanta = load_catalog().quanta()
    received_at = datetime.now(UTC)
    limits = IngestSettings()
    per_bus: list[list[BatchMessage]] = []
    for kind, count in buses.items():
        rows = recorded[kind]
        shift_ms = round(start.timestamp() * 1000) - rows[0].ts_ms
        for bus in range(count):
            vehicle = f"{kind}-{bus:03d}"
            records = [SampleRecord(1000 + r.seq, r.ts_ms + shift_ms, r.signal, r.value) for r in rows]
            topic = telemetry_topic("bench", vehicle)
            messages = []
            for group in wire_size.batches_by_age(records, 60):
                payload = encode_batch(Batch(vehicle, tuple(group)), quanta)
                message = ingest_message(topic, payload, received_at, limits)
                assert isinstance(message, BatchMessage) and not message.refused
                messages.append(message)
            per_bus.append(messages)
    ordered = [bus[k] for k in range(max(map(len, per_bus))) for bus in per_bus if k < len(bus)]
    late = [m for bus in per_bus for k, m in enumerate(bus) if k % 20 == 10]
    late_ids = {id(m) for m in late}
    return Fleet([m for m in ordered if id(m) not in late_ids], late, sum(len(m.samples) for m in ordered))


async def write_groups(store: Store, messages: list[BatchMessage]) -> tuple[int, float]:
    inserted, started = 0, time.perf_counter()
    for k in range(0, len(messages), GROUP):
        inserted += (await store.write(messages[k : k + GROUP])).samples_inserted
    return inserted, time.perf_counter() - started


def sizes(conn: psycopg.Connection[tuple[object, ...]], table: str, timescale: bool, extra: str = "") -> int:
    conn.execute(f"VACUUM ANALYZE {table}".encode())
    if timescale:
        query = f"SELECT hypertable_size('{table}')"
    else:
        query = (  # pg_partition_tree gives nothing for a table without partitions
            f"SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('{table}')),"
            f" pg_total_relation_size('{table}'))"
        )
    row = conn.execute(query.encode()).fetchone()
    total = int(str(row[0])) if row and row[0] is not None else 0
    if extra:
        conn.execute(f"VACUUM ANALYZE {extra}".encode())
        row = conn.execute(f"SELECT pg_total_relation_size('{extra}')".encode()).fetchone()
        total += int(str(row[0])) if row else 0
    return total


def compress_all(conn: psycopg.Connection[tuple[object, ...]], table: str) -> None:
    conn.execute(
        f"SELECT compress_chunk(c, if_not_compressed => true) FROM show_chunks('{table}') c".encode()
    )


def load_narrow(conn: psycopg.Connection[tuple[object, ...]], fleet: Fleet, timescale: bool) -> None:
    conn.execute(NARROW_DDL.encode())
    if timescale:
        conn.execute(
            b"SELECT create_hypertable('narrow_samples', 'ts', chunk_time_interval => interval '6 hours');"
            b"ALTER TABLE narrow_samples SET (timescaledb.compress,"
            b" timescaledb.compress_segmentby = 'vehicle_id, signal', timescaledb.compress_orderby = 'ts')"
        )
    with conn.cursor().copy(b"COPY narrow_samples FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "timestamptz", "int8", "float8"])
        for m in fleet.messages + fleet.late:
            for r in m.samples.records():
                copy.write_row(
                    (m.vehicle_id, r.signal, datetime.fromtimestamp(r.ts_ms / 1000, UTC), r.seq, r.value)
                )


async def measure(dsn: str, fleet: Fleet, label: str, *, late_phase: bool) -> None:
    schema = f"bench_layout_{uuid.uuid4().hex[:8]}"
    settings = DatabaseSettings.model_validate({"dsn": dsn, "schema": schema})
    store = await Store.open(settings, require_schema=False)
    try:
        await store.migrate()
        await store.close()
        store = await Store.open(settings)
        timescale = store.flavour.value == "timescale"
        flavour = "TimescaleDB" if timescale else "PostgreSQL"
        hot_inserted, hot_s = await write_groups(store, fleet.messages)
        if not late_phase:
            hot_inserted += (await write_groups(store, fleet.late))[0]
        with psycopg.connect(dsn, autocommit=True, options=f"-c search_path={schema},public") as conn:
            # per sample stored in each (the mix holds its late messages back until later)
            blocks = sizes(conn, "sample_blocks", timescale, "sample_signals")
            load_narrow(conn, fleet, timescale)
            narrow = sizes(conn, "narrow_samples", timescale)
            n = fleet.samples
            line = f"{label:<22} {flavour:<12} {n:>9} {blocks / hot_inserted:>10.2f} {narrow / n:>11.2f}"
            if timescale:
                compress_all(conn, "sample_blocks")
                compress_all(conn, "narrow_samples")
                line += (
                    f" {sizes(conn, 'sample_blocks', True, 'sample_signals') / hot_inserted:>14.2f}"
                    f" {sizes(conn, 'narrow_samples', True) / n:>15.2f}"
                )
            print(line, flush=True)
        if late_phase:
            late_inserted, late_s = await write_groups(store, fleet.late)
            redelivered = fleet.messages[::20]
            again, again_s = await write_groups(store, redelivered)
            late_n = sum(len(m.samples) for m in fleet.late)
            again_n = sum(len(m.samples) for m in redelivered)
            into = "compressed chunks" if timescale else "stored days"
            print(
                f"  {flavour}: hot writes {hot_inserted / hot_s:,.0f} samples/s;"
                f" late into {into} {late_inserted / late_s:,.0f} samples/s ({late_inserted}/{late_n} stored,"
                f" {late_s / late_n * hot_inserted / hot_s:.1f}x the hot time per sample);"
                f" redelivered {again_n / again_s:,.0f} samples/s ({again} stored again)",
                flush=True,
            )
            assert hot_inserted + late_inserted == fleet.samples
    finally:
        await store.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'.encode())


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="voltgate-layout-") as tmp:
        recorded = {kind: simulate(kind, args.duration, args.seed, Path(tmp)) for kind in STARTS}
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=3)
    start = day + timedelta(hours=6)
    fleets = {
        "moving buses": build_fleet(recorded, {"moving": args.moving}, start),
        "parked buses": build_fleet(recorded, {"parked": args.parked}, start),
        "mix": build_fleet(recorded, {"moving": args.moving, "parked": args.parked}, start),
    }
    for name, fleet in fleets.items():
        print(
            f"{name}: {len(fleet.messages) + len(fleet.late)} messages, {fleet.samples} samples", flush=True
        )
    print(
        f"\n{'bytes per sample':<22} {'database':<12} {'samples':>9} {'blocks':>10} {'narrow rows':>11}"
        f" {'blocks compr.':>14} {'narrow compr.':>15}"
    )
    dsns = [args.dsn] + ([args.timescale_dsn] if args.timescale_dsn else [])
    for dsn in dsns:
        for name, fleet in fleets.items():
            await measure(dsn, fleet, name, late_phase=name == "mix")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--moving", type=int, default=6)
    parser.add_argument("--parked", type=int, default=3)
    parser.add_argument("--duration", default="1h")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--timescale-dsn", default="postgresql://postgres@127.0.0.1:5433/test")
    asyncio.run(run(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
