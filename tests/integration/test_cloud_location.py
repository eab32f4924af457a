"""The latest position of a bus, when the agent reads latitude and longitude apart.

The agent samples the two coordinates as two signals: their timestamps differ by a few seconds, and
at a standstill (deadband, then a 30-second heartbeat) by more. The last state must still have a
position: the newest whose two coordinates were read within `queries.LOCATION_PAIRING`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from cloud.ingest import ingest_message
from cloud.settings import IngestSettings
from cloud.store import Store
from cloud.web import queries
from protocols import signals
from protocols.topics import telemetry_topic
from protocols.wire import Batch, SampleRecord, encode_batch

from .conftest import Database

FLEET = "nairobi-east"
T0 = datetime(2026, 3, 2, 4, 3, 19, tzinfo=UTC)


async def write(store: Store, bus: str, readings: list[tuple[float, str, float]]) -> None:
    """Writes (seconds after T0, signal, value) readings of one bus, as one wire batch."""
    samples = tuple(
        SampleRecord(seq, int((T0 + timedelta(seconds=s)).timestamp() * 1000), signal, value)
        for seq, (s, signal, value) in enumerate(readings)
    )
    payload = encode_batch(Batch(bus, samples, (), ()))
    received = T0 + timedelta(seconds=max(s for s, _, _ in readings) + 1)
    await store.write([ingest_message(telemetry_topic(FLEET, bus), payload, received, IngestSettings())])


Connection = psycopg.AsyncConnection[tuple[object, ...]]


@pytest.fixture
async def conn(pg_schema: Database, store: Store) -> AsyncIterator[Connection]:
    async with await psycopg.AsyncConnection.connect(
        pg_schema.dsn,
        autocommit=True,
        options=f"-c search_path={pg_schema.schema},public -c timezone=UTC -c jit=off",  # as the API connects
    ) as connection:
        yield connection


async def positions(conn: Connection) -> dict[str, tuple[object, ...]]:
    return {s.vehicle_id: (s.latitude, s.longitude, s.location_at) for s in await queries.bus_states(conn)}


async def test_a_standing_bus_has_a_position(store: Store, conn: Connection) -> None:
    lat, lon = signals.LATITUDE, signals.LONGITUDE
    # GIVEN a bus driving (coordinates a second apart), then standing: each coordinate only on its
    # heartbeat, latitude at 04:03:19 and longitude at 04:03:21 (then a heartbeat later, 25 s apart)
    await write(
        store,
        "BUS-STANDING",
        [
            *((-60.0, lat, -1.2800), (-59.0, lon, 36.8100), (-30.0, lat, -1.2921), (-29.0, lon, 36.8219)),
            *((0.0, lat, -1.2921), (2.0, lon, 36.8219), (30.0, lat, -1.2921), (55.0, lon, 36.8219)),
        ],
    )
    # AND a bus whose longitude stopped coming long ago, after a last complete fix
    await write(
        store,
        "BUS-HALF",
        [(0.0, lat, -1.30), (1.0, lon, 36.80), (120.0, lat, -1.31), (240.0, lat, -1.32)],
    )
    # AND a bus whose coordinates were never read within the tolerance of each other
    await write(store, "BUS-APART", [(0.0, lat, -1.33), (100.0, lon, 36.83)])

    # WHEN the last state is read
    found = await positions(conn)

    # THEN the standing bus is where it stands, as of its newest reading of the pair
    assert found["BUS-STANDING"] == (-1.2921, 36.8219, T0 + timedelta(seconds=55))
    # AND the half-reporting bus has its last complete fix, not a mixed one
    assert found["BUS-HALF"] == (-1.30, 36.80, T0 + timedelta(seconds=1))
    # AND no position is made up from readings too far apart
    assert found["BUS-APART"] == (None, None, None)
