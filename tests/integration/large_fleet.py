"""A large synthetic fleet for the map page: many buses' last minutes, as the agents would send them.

Each bus sends a reading a minute of SOC, speed, pack voltage and current, and its position with
latitude and longitude read apart (longitude `LON_LAG` after latitude, as the agent samples them as
two signals). Some buses carry active alerts (every `CRITICAL_EVERY`th an insulation fault, with a
low predicted risk beside it; every `WARNING_EVERY`th a low-SOC warning), some are offline.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from cloud.ingest import Ingested, ingest_message
from cloud.settings import IngestSettings
from cloud.store import Store
from protocols import signals
from protocols.topics import status_topic, telemetry_topic
from protocols.wire import AlertRecord, Batch, PredictionRecord, SampleRecord, encode_batch, encode_status

FLEET = "nairobi-east"
CENTRE = (-1.2921, 36.8219)
LON_LAG = timedelta(seconds=2)
CRITICAL_EVERY = 10
WARNING_EVERY = 7
OFFLINE_EVERY = 9
LOW_SOC_EVERY = 13
MINUTES = 12


@dataclass(frozen=True)
class FleetBus:
    vehicle_id: str
    online: bool
    critical: bool
    warning: bool
    soc_pct: float
    last_lat: float
    last_lon: float


def bus_id(k: int) -> str:
    return f"NBO-{k:04d}"


def plan_fleet(count: int, seed: int = 7) -> list[FleetBus]:
    rng = random.Random(seed)
    buses = []
    for k in range(count):
        low = k % LOW_SOC_EVERY == 5
        buses.append(
            FleetBus(
                vehicle_id=bus_id(k),
                online=k % OFFLINE_EVERY != 4,
                critical=k % CRITICAL_EVERY == 3,
                warning=k % WARNING_EVERY == 2,
                soc_pct=rng.uniform(8.0, 18.0) if low else rng.uniform(25.0, 98.0),
                last_lat=CENTRE[0] + rng.uniform(-0.25, 0.25),
                last_lon=CENTRE[1] + rng.uniform(-0.3, 0.3),
            )
        )
    return buses


def _batch(bus: FleetBus, end: datetime) -> Batch:
    samples: list[SampleRecord] = []
    seq = 0
    heading = (sum(map(ord, bus.vehicle_id)) % 360) * math.pi / 180
    for minute in range(MINUTES, 0, -1):
        at = end - timedelta(minutes=minute - 1, seconds=30)
        ms = int(at.timestamp() * 1000)
        back = (minute - 1) * 0.002  # the bus drove ~200 m a minute towards its last position
        lat = bus.last_lat - back * math.sin(heading)
        lon = bus.last_lon - back * math.cos(heading)
        soc = bus.soc_pct + (minute - 1) * 0.1
        for name, value, lag in (
            (signals.SOC, round(soc, 2), 0),
            (signals.SPEED, 24.0 if bus.online else 0.0, 0),
            (signals.PACK_VOLTAGE, 640.0, 0),
            (signals.PACK_CURRENT, 40.0, 0),
            (signals.LATITUDE, round(lat, 7), 0),
            (signals.LONGITUDE, round(lon, 7), int(LON_LAG.total_seconds() * 1000)),
        ):
            samples.append(SampleRecord(seq, ms + lag, name, value))
            seq += 1
    ms = int((end - timedelta(seconds=40)).timestamp() * 1000)
    # The model sees little risk of a large SOC drop; the alerts say otherwise for some buses.
    predictions = (PredictionRecord(seq, ms, "soc_drop_60min", "1.0.0", "p_large_drop", 0.09),)
    seq += 1
    alerts: list[AlertRecord] = []
    if bus.critical:
        alerts.append(AlertRecord(seq, ms, "insulation_fault", "critical", True, 95.0, "insulation 95 kΩ"))
        seq += 1
    if bus.warning:
        alerts.append(AlertRecord(seq, ms, "low_soc", "warning", True, bus.soc_pct, "SOC below 20 %"))
    return Batch(bus.vehicle_id, tuple(samples), predictions, tuple(alerts))


def fleet_messages(buses: list[FleetBus], end: datetime) -> list[Ingested]:
    limits = IngestSettings()
    messages: list[Ingested] = []
    for k, bus in enumerate(buses):
        topic = telemetry_topic(FLEET, bus.vehicle_id)
        messages.append(ingest_message(topic, encode_batch(_batch(bus, end)), end, limits))
        status = encode_status(
            "online" if bus.online else "offline",
            int(end.timestamp() * 1000),
            vin=f"YV3T2U820R{k:07d}",
            battery_capacity_kwh=350.0,
        )
        messages.append(ingest_message(status_topic(FLEET, bus.vehicle_id), status, end, limits))
    return messages


async def write_fleet(store: Store, buses: list[FleetBus], end: datetime) -> None:
    messages = fleet_messages(buses, end)
    for first in range(0, len(messages), 200):
        await store.write(messages[first : first + 200])
