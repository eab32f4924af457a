"""Bytes per sample on the uplink: voltgate's wire format against one JSON message per sample.

    python bench/wire_size.py [--duration 1h] [--seed 7]

A simulated hour of a bus (`voltgate-sim record`, CAN log + NMEA) goes through the agent's own decode
and sampling policy (`agent.decode.decode_log_to_csv`, `agent.sources.gps.FixSampler`), exactly the
samples a gateway would buffer. They are numbered like the buffer numbers them and cut into batches by
age, as the uplink does, then encoded with `protocols.wire.encode_batch` (quanta from the catalog), and
decoded again; the wall time of both is printed per batch (this machine, one core). The baseline is what
a quick bridge sends: one JSON object per sample. Payload bytes only; MQTT framing (fixed header, topic,
packet id: ~40 bytes per PUBLISH here) comes on top of both, once per message. Prints figures; asserts
only that every batch decodes to as many samples as it had.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agent.decode import decode_log_to_csv
from agent.sources.gps import FixSampler
from protocols.catalog import Priority, load_catalog
from protocols.nmea import NmeaReader
from protocols.wire import WIRE_VERSION, Batch, SampleRecord, decode_batch, encode_batch

VEHICLE = "KBZ-101A"
_T = TypeVar("_T")


def simulate(duration: str, seed: int, work: Path) -> tuple[Path, Path]:
    log, nmea = work / "bus.log", work / "gps.nmea"
    subprocess.run(
        [sys.executable, "-m", "simulator", "record", "--duration", duration, "--seed", str(seed),
         "--start", "2024-03-04T02:25:00Z", "--out", str(log), "--nmea", str(nmea)],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return log, nmea


def agent_samples(log: Path, nmea: Path) -> list[tuple[float, str, float, Priority]]:
    catalog = load_catalog()
    text = io.StringIO()
    decode_log_to_csv(log, catalog, text, apply_policy=True)
    text.seek(0)
    rows = [
        (float(r["ts"]), r["signal"], float(r["value"]), catalog.by_name(r["signal"]).priority)
        for r in csv.DictReader(text)
    ]
    reader, sampler = NmeaReader(), FixSampler(catalog)
    fixes = reader.feed(nmea.read_bytes()) + reader.flush()
    for fix in fixes:
        rows.extend((s.ts, s.signal, s.value, s.priority) for s in sampler.samples(fix))
    rows.sort(key=lambda r: r[0])
    return rows


def batches_by_age(records: list[SampleRecord], age_s: float) -> list[list[SampleRecord]]:
    out: list[list[SampleRecord]] = []
    for record in records:
        if not out or record.ts_ms - out[-1][0].ts_ms >= age_s * 1000:
            out.append([])
        out[-1].append(record)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", default="1h")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        log, nmea = simulate(args.duration, args.seed, Path(tmp))
        frames = sum(1 for _ in log.open())
        samples = agent_samples(log, nmea)
    quanta = load_catalog().quanta()
    records = [
        SampleRecord(seq=i, ts_ms=round(ts * 1000), signal=name, value=value)
        for i, (ts, name, value, _) in enumerate(samples)
    ]
    routine = [r for r, s in zip(records, samples, strict=True) if s[3] == Priority.ROUTINE]
    print(
        f"simulated {args.duration}: {frames} CAN frames -> {len(records)} samples kept by the sampling"
        " policy"
    )
    print(
        f"  ({len(routine)} of them routine-priority; {len({r.signal for r in records})} distinct signals)\n"
    )

    json_bytes = sum(
        len(json.dumps(
            {"vehicle": VEHICLE, "seq": r.seq, "ts_ms": r.ts_ms, "signal": r.signal, "value": r.value},
            separators=(",", ":"),
        ))
        for r in records
    )  # fmt: skip
    json_per_sample = json_bytes / len(records)
    print(f"{'encoding':<38} {'messages':>9} {'bytes':>10} {'bytes/sample':>13} {'vs JSON':>8}")
    print(
        f"{'JSON, one message per sample':<38} {len(records):>9} {json_bytes:>10} "
        f"{json_per_sample:>13.2f} {1:>7.1f}x"
    )
    print(f"{'':<38} {'':>9} {'':>10} {'':>13} {'':>8}  encode/decode per batch, median of 3 runs")
    for age in (5.0, 30.0, 60.0, 300.0):
        for label, subset in (("all", records), ("routine", routine)):
            batches = [Batch(VEHICLE, samples=tuple(g)) for g in batches_by_age(subset, age)]
            payloads, encode_s = timed(lambda b=batches: [encode_batch(batch, quanta) for batch in b])
            decoded, decode_s = timed(lambda p=payloads: [decode_batch(payload) for payload in p])
            assert [len(d.samples) for d in decoded] == [len(b.samples) for b in batches]
            size = sum(map(len, payloads))
            per = size / len(subset)
            name = f"voltgate wire v{WIRE_VERSION}, {age:g} s batches, {label}"
            print(
                f"{name:<38} {len(batches):>9} {size:>10} {per:>13.2f} {json_per_sample / per:>7.1f}x"
                f"  {1e3 * encode_s / len(batches):6.2f} / {1e3 * decode_s / len(batches):6.2f} ms"
            )
    return 0


def timed(run: Callable[[], list[_T]]) -> tuple[list[_T], float]:
    """The result of `run` and its median wall time over three runs, in seconds."""
    times = []
    for _ in range(3):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
