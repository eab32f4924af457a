"""Bytes per sample on the uplink: voltgate's wire format against what a competent engineer sends.

    python bench/wire_size.py [--start 2024-03-03T21:00:00Z] [--duration 24h] [--seed 7]

Workload (default): one full simulated day of one bus, local midnight to midnight (Nairobi, UTC+3).
The day is what the fleet's uplink carries: the bus is parked and charging in the depot overnight,
powers up before its 05:30 departure, runs its block of round trips on route 102 (layovers at each
terminus), then parks and charges again; every bus of a fleet goes through such a day. An hour in
service alone would overstate the samples per hour and the batch fill; parked hours alone would
understate them. `--start 2024-03-04T03:00:00Z --duration 1h` gives one hour in service,
`--start 2024-03-03T22:00:00Z --duration 1h` one parked (charging) hour.

The simulated CAN log and NMEA go through the agent's own decode and sampling policy
(`agent.decode.Decoder`, `agent.sources.gps.FixSampler`): exactly the samples a gateway would
buffer. They are numbered like the buffer numbers them and cut into batches by source-time age, as
the uplink does, and every encoding below carries the same batches:

* voltgate: `protocols.wire.encode_batch` (values as integer steps of the catalog's resolution,
  columns, msgpack, zstd level 19 with the codebook's dictionary).
* JSON rows + gzip / + zstd: one JSON object per batch, `{"vehicle": ..., "samples": [[seq,
  ts_ms, signal, value], ...]}`, compressed with `gzip.compress` (its default level, 9) or a
  default `zstandard.ZstdCompressor()` (level 3). Values are rounded to the decimals of the
  catalog's resolution (the DBC scale), so the baselines carry the same information as voltgate's
  quantized values and not float noise such as 61.300000000000004; one extra line at the uplink's
  default batch age shows the cost of sending the values as cantools returns them.
* msgpack rows + zstd: the same rows with `msgpack.packb`, zstd level 3 (and level 19, to show how
  much of the gap is the compression level).
* JSON per sample: the strawman (one uncompressed message per sample), for reference only.

Bytes are payload bytes, plus a column with the MQTT 5 PUBLISH framing at QoS 1 (fixed header,
topic, packet id, empty properties) for this vehicle's real telemetry topic; TLS comes on top of all
alike. The encode and decode wall times are one pass per batch on this machine (one core, shared).
Prints figures; asserts only that every payload decodes to as many samples as its batch had.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack
import zstandard

from agent.decode import Decoder
from agent.logfiles import FrameLog
from agent.settings import UplinkSettings
from agent.sources.gps import FixSampler
from protocols.catalog import Catalog, load_catalog
from protocols.nmea import NmeaReader
from protocols.topics import telemetry_topic
from protocols.wire import WIRE_VERSION, Batch, SampleRecord, decode_batch, encode_batch
from simulator.scenario import parse_duration, parse_start

VEHICLE = "KBZ-101A"
FLEET = "nairobi-brt"
DAY_START = "2024-03-03T21:00:00Z"  # 00:00 in Nairobi
AGES_S = (5.0, 30.0, 60.0, 300.0)


def simulate(start: str, duration: str, seed: int, work: Path) -> tuple[Path, Path]:
    log, nmea = work / "bus.log", work / "gps.nmea"
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", duration, "--seed", str(seed),
         "--start", start, "--out", str(log), "--nmea", str(nmea)],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return log, nmea


def agent_samples(log: Path, nmea: Path, catalog: Catalog) -> tuple[int, list[SampleRecord]]:
    """Frames in the log and the samples the agent keeps from it and the GPS, numbered in time order."""
    decoder = Decoder(catalog, bus="bench")
    rows: list[tuple[float, str, float]] = []
    with FrameLog(log, "bench") as frames:
        for frame in frames:
            rows.extend((s.ts, s.signal, s.value) for s in decoder.process(frame))
    reader, sampler = NmeaReader(), FixSampler(catalog)
    for fix in reader.feed(nmea.read_bytes()) + reader.flush():
        rows.extend((s.ts, s.signal, s.value) for s in sampler.samples(fix))
    rows.sort(key=lambda r: r[0])
    records = [SampleRecord(seq, round(ts * 1000), name, value) for seq, (ts, name, value) in enumerate(rows)]
    return decoder.stats.frames_in, records


def batches_by_age(records: list[SampleRecord], age_s: float) -> list[list[SampleRecord]]:
    out: list[list[SampleRecord]] = []
    for record in records:
        if not out or record.ts_ms - out[-1][0].ts_ms >= age_s * 1000:
            out.append([])
        out[-1].append(record)
    return out


def decimals(resolution: float) -> int:
    """Decimals that write a multiple of `resolution` exactly (0.1 → 1, 0.03125 → 5, 1 → 0)."""
    return next((d for d in range(12) if math.isclose(round(resolution, d), resolution)), 12)


# --- the encodings -----------------------------------------------------------------------------------------

Rows = list[list[object]]


def rows_of(batch: Sequence[SampleRecord], places: dict[str, int] | None) -> Rows:
    if places is None:
        return [[r.seq, r.ts_ms, r.signal, r.value] for r in batch]
    return [[r.seq, r.ts_ms, r.signal, round(r.value, places[r.signal])] for r in batch]


def json_body(rows: Rows) -> bytes:
    return json.dumps({"vehicle": VEHICLE, "samples": rows}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Encoding:
    name: str
    encode: Callable[[Sequence[SampleRecord]], bytes]
    count: Callable[[bytes], int]  # decodes a payload; returns its number of samples


def encodings(catalog: Catalog) -> list[Encoding]:
    places = {s.name: decimals(s.resolution) for s in catalog}
    quanta = catalog.quanta()
    zstd3, zstd19 = zstandard.ZstdCompressor(), zstandard.ZstdCompressor(level=19)
    unzstd = zstandard.ZstdDecompressor()

    def json_count(body: bytes) -> int:
        return len(json.loads(body)["samples"])

    def msgpack_count(body: bytes) -> int:
        return len(msgpack.unpackb(body)[1])

    def msgpack_body(batch: Sequence[SampleRecord]) -> bytes:
        return msgpack.packb([VEHICLE, rows_of(batch, places)])  # type: ignore[no-any-return]

    return [
        Encoding(
            "JSON rows + gzip",
            lambda b: gzip.compress(json_body(rows_of(b, places))),
            lambda p: json_count(gzip.decompress(p)),
        ),
        Encoding(
            "JSON rows + zstd",
            lambda b: zstd3.compress(json_body(rows_of(b, places))),
            lambda p: json_count(unzstd.decompress(p)),
        ),
        Encoding(
            "msgpack rows + zstd",
            lambda b: zstd3.compress(msgpack_body(b)),
            lambda p: msgpack_count(unzstd.decompress(p)),
        ),
        Encoding(
            "msgpack rows + zstd -19",
            lambda b: zstd19.compress(msgpack_body(b)),
            lambda p: msgpack_count(unzstd.decompress(p)),
        ),
        Encoding(
            f"voltgate wire v{WIRE_VERSION}",
            lambda b: encode_batch(Batch(VEHICLE, samples=tuple(b)), quanta),
            lambda p: len(decode_batch(p).samples),
        ),
    ]


def unrounded_json_zstd() -> Encoding:
    zstd3, unzstd = zstandard.ZstdCompressor(), zstandard.ZstdDecompressor()
    return Encoding(
        "JSON rows + zstd, values as decoded",
        lambda b: zstd3.compress(json_body(rows_of(b, None))),
        lambda p: len(json.loads(unzstd.decompress(p))["samples"]),
    )


def mqtt5_publish_overhead(topic: str, payload_bytes: int) -> int:
    """Bytes of an MQTT 5 PUBLISH at QoS 1 around its payload: fixed header, remaining length, topic
    name, packet identifier, property length (no properties) — MQTT 5.0 §3.3."""
    variable = 2 + len(topic.encode()) + 2 + 1
    remaining = variable + payload_bytes
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16_384 else 3 if remaining < 2_097_152 else 4
    return 1 + length_bytes + variable


@dataclass(frozen=True)
class Measured:
    messages: int
    payload_bytes: int
    framed_bytes: int
    encode_ms: float  # per batch
    decode_ms: float


def measure(encoding: Encoding, batches: list[list[SampleRecord]], topic: str) -> Measured:
    started = time.perf_counter()
    payloads = [encoding.encode(batch) for batch in batches]
    encoded = time.perf_counter()
    counts = [encoding.count(payload) for payload in payloads]
    decoded = time.perf_counter()
    assert counts == [len(batch) for batch in batches], encoding.name
    size = sum(map(len, payloads))
    framing = sum(mqtt5_publish_overhead(topic, len(payload)) for payload in payloads)
    n = len(batches)
    return Measured(n, size, size + framing, 1e3 * (encoded - started) / n, 1e3 * (decoded - encoded) / n)


# --- main ---------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--start", default=DAY_START, help="simulation start, ISO 8601 UTC")
    parser.add_argument("--duration", default="24h")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    catalog = load_catalog()
    with tempfile.TemporaryDirectory() as tmp:
        log, nmea = simulate(args.start, args.duration, args.seed, Path(tmp))
        frames, records = agent_samples(log, nmea, catalog)
    if not records:
        raise SystemExit("the simulated bus yielded no samples")
    topic = telemetry_topic(FLEET, VEHICLE)
    start_ms = round(parse_start(args.start).timestamp() * 1000)
    last_hour = max(math.ceil(parse_duration(args.duration) / 3600) - 1, 0)
    hours = Counter(min((r.ts_ms - start_ms) // 3_600_000, last_hour) for r in records)
    per_hour = sorted(hours.values())
    print(
        f"simulated {args.duration} from {args.start}: {frames:,} CAN frames + 1 Hz NMEA -> "
        f"{len(records):,} samples kept by the sampling policy ({len({r.signal for r in records})} signals)"
    )
    print(
        f"samples per simulated hour: min {per_hour[0]:,}, median {statistics.median(per_hour):,.0f}, "
        f"max {per_hour[-1]:,} ({len(per_hour)} h)\n"
    )

    strawman = sum(
        len(json.dumps(
            {"vehicle": VEHICLE, "seq": r.seq, "ts_ms": r.ts_ms, "signal": r.signal, "value": r.value},
            separators=(",", ":"),
        ))
        for r in records
    )  # fmt: skip
    print(
        f"reference, not a baseline: JSON, one uncompressed message per sample: "
        f"{strawman / len(records):.1f} B/sample\n"
    )

    header = (
        f"{'batch age':>9}  {'encoding':<36} {'messages':>8} {'bytes':>11} {'B/sample':>9} {'+MQTT':>7} "
        f"{'best baseline/this':>18} {'enc ms':>7} {'dec ms':>7}"
    )
    print(header)
    default_age = UplinkSettings().batch_max_age_s
    for age in AGES_S:
        batches = batches_by_age(records, age)
        rows = [(e.name, measure(e, batches, topic)) for e in encodings(catalog)]
        if age == default_age:
            extra = unrounded_json_zstd()
            rows.append((extra.name, measure(extra, batches, topic)))
        best = min(m.payload_bytes for name, m in rows if not name.startswith("voltgate"))
        for name, m in rows:
            print(
                f"{age:>8g}s  {name:<36} {m.messages:>8,} {m.payload_bytes:>11,} "
                f"{m.payload_bytes / len(records):>9.2f} "
                f"{m.framed_bytes / len(records):>7.2f} {best / m.payload_bytes:>17.2f}x "
                f"{m.encode_ms:>7.2f} {m.decode_ms:>7.2f}"
            )
        print()
    print(
        f"B/sample: payload bytes per sample; +MQTT: with each PUBLISH's framing on topic {topic!r}.\n"
        "best baseline/this: the smallest baseline payload (JSON/msgpack rows) over this row's, same\n"
        f"batches; above 1: smaller than every baseline. The uplink's default batch age is {default_age:g} s."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
