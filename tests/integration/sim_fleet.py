"""Simulated buses stored through the real receiver: the simulator records a CAN log and NMEA, the
agent's own decoder and GPS sampler turn them into the samples a gateway would buffer, and those go
on the wire as the uplink sends them (one batch per 10 minutes) into the real `Store`.

Shared by the fleet-analytics tests (block risk, billing, battery health).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.decode import decode_log_to_csv
from agent.sources.gps import FixSampler
from cloud.ingest import BatchMessage, Ingested, StatusMessage, ingest_message
from cloud.settings import IngestSettings
from protocols.catalog import load_catalog
from protocols.nmea import NmeaReader
from protocols.topics import status_topic, telemetry_topic
from protocols.wire import Batch, SampleRecord, encode_batch, encode_status
from simulator.battery import PACK_NOMINAL_KWH
from simulator.bus import BusConfig, BusSimulator
from simulator.emit_can import CanEmitter
from simulator.emit_nmea import NmeaEmitter
from simulator.emit_sinks import LogSink, NmeaFileSink, Outputs, Pacer, RunStats, stream

BATCH_SPAN_MS = 600_000  # one wire batch per 10 minutes of samples, as the agent's uplink sends


@dataclass(frozen=True)
class SimulatedBus:
    vehicle_id: str
    config: BusConfig
    duration_s: float
    samples: list[tuple[float, str, float]]  # (ts, signal, value), as the agent would buffer them
    final_odometer_km: float


def simulate_bus(
    vehicle_id: str, config: BusConfig, duration_s: float, work: Path, dt_s: float
) -> SimulatedBus:
    """Run the simulator for `duration_s` (physics and CAN emission every `dt_s`) and decode its output
    with the agent's decoder (sampling policy on) and GPS sampler."""
    log, nmea = work / f"{vehicle_id}.log", work / f"{vehicle_id}.nmea"
    outputs = Outputs(can_emitter=CanEmitter(seed=config.seed), nmea_emitter=NmeaEmitter("GN"))
    outputs.can_sinks.append(LogSink(log))
    outputs.nmea_sinks.append(NmeaFileSink(nmea))
    sim = BusSimulator(config)
    last_odometer = config.odometer_start_km
    try:
        for state in stream(sim.run(duration_s, dt_s), outputs, Pacer(None), RunStats(), start_t_s=sim.t_s):
            last_odometer = state.odometer_km
    finally:
        outputs.close()
    catalog = load_catalog()
    text = io.StringIO()
    decode_log_to_csv(log, catalog, text, apply_policy=True)
    text.seek(0)
    rows = [(float(r["ts"]), r["signal"], float(r["value"])) for r in csv.DictReader(text)]
    reader, sampler = NmeaReader(), FixSampler(catalog)
    for fix in reader.feed(nmea.read_bytes()) + reader.flush():
        rows.extend((s.ts, s.signal, s.value) for s in sampler.samples(fix))
    rows.sort(key=lambda r: r[0])
    return SimulatedBus(vehicle_id, config, duration_s, rows, last_odometer)


def bus_messages(bus: SimulatedBus, fleet: str, limits: IngestSettings | None = None) -> list[Ingested]:
    """The bus's samples as wire batches (10 minutes each) and a status naming its pack, as received."""
    limits = limits or IngestSettings()
    by_batch: dict[int, list[SampleRecord]] = {}
    for seq, (ts, signal, value) in enumerate(bus.samples):
        ts_ms = round(ts * 1000)
        by_batch.setdefault(ts_ms // BATCH_SPAN_MS, []).append(SampleRecord(seq, ts_ms, signal, value))
    messages: list[Ingested] = []
    topic = telemetry_topic(fleet, bus.vehicle_id)
    for records in by_batch.values():
        received = datetime.fromtimestamp(records[-1].ts_ms / 1000 + 2, UTC)
        payload = encode_batch(Batch(bus.vehicle_id, samples=tuple(records)))
        messages.append(ingest_message(topic, payload, received, limits))
    last = datetime.fromtimestamp(bus.samples[-1][0], UTC) + timedelta(seconds=3)
    status = encode_status("online", int(last.timestamp() * 1000), battery_capacity_kwh=PACK_NOMINAL_KWH)
    messages.append(ingest_message(status_topic(fleet, bus.vehicle_id), status, last, limits))
    assert all(isinstance(m, BatchMessage | StatusMessage) for m in messages), messages[:1]
    return messages
