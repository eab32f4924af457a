"""Process faults: the agent, the receiver, the broker and the database taken away while a bus talks.

Each test audits every row the agent's buffer committed against the database (see `audit`): lost = 0
and duplicated = 0 is the promise (DESIGN.md, "Nothing acknowledged is lost"). The bus is the session's
recorded log replayed at recorded speed (a known input, ~220 samples/s with the sampling policy off),
except for the agent kill -9 test, which runs on the live simulated bus over SLCAN and NMEA ptys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.audit import assert_nothing_lost, audit_mark
from tests.faults.conftest import LiveBus, Rig
from tests.faults.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

AGENT_KILLS = 10


async def stored_at_least(rig: Rig, more: int) -> None:
    target = rig.db.stored_count() + more
    await wait_until(
        f"{more} more samples stored", lambda: rig.db.stored_count() >= target, watch=rig.watched()
    )


async def committed_at_least(rig: Rig, more: int) -> None:
    target = audit_mark(rig.buffer_path) + more
    await wait_until(
        f"{more} more samples committed to the buffer",
        lambda: audit_mark(rig.buffer_path) >= target,
        watch=rig.watched(),
    )


async def test_agent_kill9_ten_times_on_a_live_bus(
    rig_factory: Callable[..., Rig], live_bus_factory: Callable[..., LiveBus]
) -> None:
    rig = rig_factory()
    bus = live_bus_factory(600)
    live = {"slcan_pty": bus.slcan.path, "nmea_pty": bus.nmea.path}
    # GIVEN a live bus and an agent that keeps getting killed without warning mid-stream
    for _ in range(AGENT_KILLS):
        rig.start_agent(**live)
        await committed_at_least(rig, 100)
        assert rig.agent is not None
        rig.agent.kill()
    # WHEN a last agent starts on the same buffer, and the bus then stops
    rig.start_agent(**live)
    await committed_at_least(rig, 100)
    bus.stop()
    # THEN everything any of them committed is stored once
    result = await rig.audit()
    assert rig.agent is not None and rig.agent.starts == 1
    assert_nothing_lost(result, renumbering=False)


async def test_receiver_kill9(rig_factory: Callable[..., Rig], recorded_bus: Path) -> None:
    rig = rig_factory()
    rig.start_agent(replay_log=recorded_bus)
    await stored_at_least(rig, 500)
    for _ in range(3):
        # WHEN the receiver dies without warning mid-stream, and comes back a second later
        await stored_at_least(rig, 300)
        rig.receiver.kill()
        await asyncio.sleep(1.0)  # the bus keeps talking while the receiver is gone
        rig.receiver.start()
    assert_nothing_lost(await rig.audit())


async def test_broker_restart_with_persistence(rig_factory: Callable[..., Rig], recorded_bus: Path) -> None:
    rig = rig_factory(persistence=True)
    rig.start_agent(replay_log=recorded_bus)
    for _ in range(2):
        await stored_at_least(rig, 500)
        # WHEN the broker restarts (its persistence file written on the way down)
        rig.broker.restart()
    assert_nothing_lost(await rig.audit())


async def test_broker_restart_without_persistence_while_receiver_away(
    rig_factory: Callable[..., Rig], recorded_bus: Path
) -> None:
    rig = rig_factory(persistence=False)
    rig.start_agent(replay_log=recorded_bus)
    await stored_at_least(rig, 500)
    # GIVEN the receiver stopped cleanly (its session and queue stay in the broker)
    rig.receiver.terminate()
    # WHEN the bus keeps publishing, and the broker restarts without persistence
    await committed_at_least(rig, 1000)
    rig.broker.restart()
    await committed_at_least(rig, 300)
    rig.receiver.start()
    # THEN nothing the agent committed is lost: the broker is not trusted to keep anything
    assert_nothing_lost(await rig.audit())


async def test_receiver_away_longer_than_its_session_expiry(
    rig_factory: Callable[..., Rig], recorded_bus: Path
) -> None:
    expiry_s = 5
    rig = rig_factory(session_expiry_s=expiry_s)
    rig.start_agent(replay_log=recorded_bus)
    await stored_at_least(rig, 500)
    rig.receiver.terminate()
    # WHEN the receiver stays away past its session expiry while the bus keeps publishing
    await committed_at_least(rig, 500)
    await asyncio.sleep(expiry_s + 3)  # the fault itself: the broker drops the session and its queue
    rig.receiver.start()
    assert_nothing_lost(await rig.audit())


async def test_database_outage(rig_factory: Callable[..., Rig], recorded_bus: Path) -> None:
    rig = rig_factory(proxy=True)
    assert rig.proxy is not None
    rig.start_agent(replay_log=recorded_bus)
    await stored_at_least(rig, 500)
    # WHEN the receiver's way to PostgreSQL is cut for 15 s (connections reset, new ones refused)
    rig.proxy.cut()
    await committed_at_least(rig, 1000)
    await asyncio.sleep(10)  # the outage goes on
    rig.proxy.restore()
    assert_nothing_lost(await rig.audit())


async def test_agent_kill9_during_a_replay_resumes_where_it_was(
    rig_factory: Callable[..., Rig], recorded_bus: Path
) -> None:
    rig = rig_factory()
    # GIVEN an agent replaying a recorded log, killed without warning three times mid-log
    for _ in range(3):
        rig.start_agent(replay_log=recorded_bus)
        await committed_at_least(rig, 800)
        assert rig.agent is not None
        rig.agent.kill()
    # WHEN a last agent starts on the same buffer and plays the log to its end
    rig.start_agent(replay_log=recorded_bus)
    # THEN no recorded reading is stored twice under a new seq (the replay resumes, it does not restart)
    assert_nothing_lost(await rig.audit())
