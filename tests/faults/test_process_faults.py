"""Process faults: the agent, the receiver and the broker killed or restarted while a bus talks.

Each test audits every row the agent's buffer committed against the database (see `audit`): lost = 0
and duplicated = 0 is the promise (DESIGN.md, "Nothing acknowledged is lost").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faults.conftest import Rig
from tests.faults.harness import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def assert_nothing_lost(result: object) -> None:
    from tests.faults.audit import AuditResult

    assert isinstance(result, AuditResult)
    assert result.committed > 0, result.explain()
    assert result.reused == 0, "a committed seq was handed out again: " + result.explain()
    assert result.lost == 0, "committed samples never stored: " + result.explain()
    assert result.duplicated == 0, "(vehicle, seq) stored more than once: " + result.explain()
    assert result.renumbered == 0, "a reading stored again under a new seq: " + result.explain()
    assert result.refused == 0, "committed samples dead-lettered: " + result.explain()


async def test_receiver_kill9(rig_factory, recorded_bus: Path) -> None:
    rig: Rig = rig_factory()
    agent = rig.start_agent(replay_log=recorded_bus)
    # GIVEN data flowing into the database
    await wait_until(
        "the first 500 samples stored", lambda: rig.db.stored_count() >= 500, watch=rig.watched()
    )
    for _ in range(3):
        # WHEN the receiver dies without warning (twice mid-stream), and comes back
        before = rig.db.stored_count()
        await wait_until("300 more samples stored", lambda b=before: rig.db.stored_count() >= b + 300,
                         watch=rig.watched())  # fmt: skip
        rig.receiver.kill()
        await asyncio.sleep(1.0)  # the bus keeps talking while the receiver is gone
        rig.receiver.start()
    agent.alive()
    result = await rig.audit()
    assert_nothing_lost(result)
