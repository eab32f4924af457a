"""Commit acknowledgement end to end: the real uplink, the real receiver (`cloud.app.run` on a fresh
PostgreSQL schema) and a private Mosquitto *without persistence* that the tests restart.

The broker is not trusted to keep anything: a row leaves the agent's buffer only when the receiver
says it is stored. Each test has its own broker (the receiver subscribes to every fleet, so on the
shared broker another test's receiver would acknowledge this test's rows). Waits are bounded and say
what they waited for; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from agent.buffer import BufferWorker
from agent.records import Sample
from agent.settings import UplinkSettings
from agent.uplink import Uplink
from cloud import app
from cloud.settings import CloudSettings, load_settings
from protocols.catalog import Priority
from tests.integration.conftest import Broker, Database, migrated_store, unique_id
from tests.integration.test_cloud_receiver import scalar, write_config
from tests.integration.test_uplink import (
    QUANTA,
    PrivateBroker,
    _private_broker,
    _rows,
    _settings,
    _stop,
    collecting,
)

WAIT_S = 60.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """This test's own Mosquitto, persistence off (started by the test)."""
    yield from _private_broker(tmp_path, persistence=False)


def _recent_samples(start: int, count: int) -> list[Sample]:
    """Samples stamped just now (the receiver refuses stale timestamps), one per 10 ms."""
    base = time.time() - 60
    return [
        Sample(base + n * 0.01, "Vehicle.Speed", float(n % 900) / 10, Priority.NORMAL)
        for n in range(start, start + count)
    ]


async def eventually(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Poll `condition` (plain or async) until it holds; fail saying `what` after WAIT_S."""

    async def holds() -> bool:
        result = condition()
        return await result if inspect.isawaitable(result) else bool(result)

    deadline = time.monotonic() + WAIT_S
    while not await holds():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {WAIT_S:g} s waiting for {what}", pytrace=False)
        await asyncio.sleep(0.05)


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


class Cloud:
    """The receiver in this process, started and stopped at will (same client id each time)."""

    def __init__(self, settings: CloudSettings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(app.run(self.settings, self._stop), name="receiver-under-test")

    async def stop(self) -> None:
        if self._task is not None and self._stop is not None:
            self._stop.set()
            await asyncio.wait_for(self._task, WAIT_S)
        self._task = None

    async def stored(self, vehicle: str) -> tuple[int, int]:
        """(samples stored, distinct seqs stored) of `vehicle`."""
        total = "SELECT count(*) FROM samples WHERE vehicle_id = %s"
        distinct = "SELECT count(DISTINCT seq) FROM samples WHERE vehicle_id = %s"
        return (
            await asyncio.to_thread(scalar, self.db, total, vehicle),
            await asyncio.to_thread(scalar, self.db, distinct, vehicle),
        )


@asynccontextmanager
async def cloud_on(broker: PrivateBroker, db: Database, tmp_path: Path) -> AsyncIterator[Cloud]:
    await (await migrated_store(db)).close()
    namespace = unique_id("ack")
    config = write_config(tmp_path, Broker("127.0.0.1", broker.port, namespace), db, f"{namespace}-rx")
    cloud = Cloud(load_settings(config), db)
    try:
        yield cloud
    finally:
        await cloud.stop()


def _uplink_settings(broker: PrivateBroker, fleet: str, **overrides: object) -> UplinkSettings:
    values: dict[str, object] = {"ack_timeout_s": 0.5, "ack_timeout_max_s": 2.0, "backoff_max_s": 0.5}
    values.update(overrides)
    return _settings("127.0.0.1", broker.port, fleet, **values)


async def test_rows_leave_the_buffer_only_when_the_receiver_acknowledges_them(
    broker: PrivateBroker, pg_schema: Database, buffer: BufferWorker, tmp_path: Path
) -> None:
    broker.start()
    fleet, vehicle = unique_id("f"), unique_id("bus-")
    async with cloud_on(broker, pg_schema, tmp_path) as cloud:
        # GIVEN an uplink with no receiver behind the broker (the broker PUBACKs, then drops them)
        uplink = Uplink(_uplink_settings(broker, fleet, ack_timeout_s=1.0), vehicle, buffer, QUANTA)
        task = asyncio.create_task(uplink.run())
        await buffer.commit_samples(_recent_samples(0, 250))
        uplink.notify()
        await eventually(lambda: uplink.inflight_rows == 250, "250 rows in flight")
        # THEN the PUBACKed rows are in flight, still in the buffer
        assert await _rows(buffer) == 250
        acked_before = _counter("voltgate_uplink_acked_rows_total")

        # WHEN the receiver starts (the first copies are gone: the agent re-sends them when overdue)
        cloud.start()
        await buffer.commit_samples(_recent_samples(250, 50))
        uplink.notify()

        # THEN every row is stored once, acknowledged, and leaves the buffer
        async def drained() -> bool:
            return await _rows(buffer) == 0 and uplink.inflight_rows == 0

        await eventually(drained, "the buffer to drain")
        assert await cloud.stored(vehicle) == (300, 300)
        assert _counter("voltgate_uplink_acked_rows_total") - acked_before == 300
        assert _counter("voltgate_cloud_acks_published_total") > 0
        await _stop(uplink, task)


async def test_broker_restart_without_persistence_while_the_receiver_is_away_loses_nothing(
    broker: PrivateBroker, pg_schema: Database, buffer: BufferWorker, tmp_path: Path
) -> None:
    broker.start()
    fleet, vehicle = unique_id("f"), unique_id("bus-")
    async with cloud_on(broker, pg_schema, tmp_path) as cloud:
        cloud.start()
        uplink = Uplink(_uplink_settings(broker, fleet), vehicle, buffer, QUANTA)
        task = asyncio.create_task(uplink.run())
        resent_before = _counter("voltgate_uplink_resent_records_total")
        committed = 0

        async def commit(count: int) -> None:
            nonlocal committed
            await buffer.commit_samples(_recent_samples(committed, count))
            committed += count
            uplink.notify()

        # GIVEN a first part stored (the receiver's persistent session exists on the broker)
        await commit(200)

        async def first_part_done() -> bool:
            return await cloud.stored(vehicle) == (200, 200) and await _rows(buffer) == 0

        await eventually(first_part_done, "the first 200 stored and acknowledged")

        # WHEN the receiver goes away, the agent publishes (the broker PUBACKs and queues them for the
        # receiver's session) ...
        await cloud.stop()
        for _ in range(10):
            await commit(60)
            await asyncio.sleep(0.02)
        await eventually(lambda: uplink.inflight_rows == committed - 200, "the rows in flight")
        # ... and the broker restarts without persistence (its queue is gone) while the agent publishes
        broker.stop()
        await commit(300)
        broker.start()
        await commit(100)
        cloud.start()
        await commit(100)

        # THEN every committed row is stored exactly once and the buffer drains
        async def drained() -> bool:
            return await _rows(buffer) == 0

        await eventually(drained, "the buffer to drain")
        assert await cloud.stored(vehicle) == (committed, committed)
        assert uplink.inflight_rows == 0
        lost_by_the_broker = 600
        assert _counter("voltgate_uplink_resent_records_total") - resent_before >= lost_by_the_broker
        await _stop(uplink, task)


async def test_without_a_receiver_rows_stay_and_resends_back_off(
    broker: PrivateBroker, buffer: BufferWorker
) -> None:
    broker.start()
    fleet = unique_id("f")
    settings = _uplink_settings(broker, fleet, ack_timeout_s=0.2, ack_timeout_max_s=0.8)
    # GIVEN a subscriber that sees every copy but never acknowledges (no receiver ever comes)
    async with collecting("127.0.0.1", broker.port, fleet, acking=False) as collector:
        uplink = Uplink(settings, "bus-1", buffer, QUANTA)
        task = asyncio.create_task(uplink.run())
        await buffer.commit_samples(_recent_samples(0, 40))
        uplink.notify()
        # WHEN the acks never come
        await collector.wait_for("4 copies of the batch", lambda: collector.sample_seqs().count(0) >= 4)
        # THEN the rows stay in the buffer, in flight, and each re-send waits twice as long, up to the cap
        assert await _rows(buffer) == 40 and uplink.inflight_rows == 40
        [message] = uplink.in_flight()
        assert message.resends >= 3
        assert message.resend_at - message.sent_at == pytest.approx(min(0.2 * 2**message.resends, 0.8))
        copies = collector.sample_seqs().count(0)
        assert copies <= message.resends + 1, "one copy per re-send, not more"
        await _stop(uplink, task, flush_s=0.5)
        assert await _rows(buffer) == 40, "a stop does not give up rows the cloud has not stored"
