"""How the receiver's inbox cuts write groups: by size, or once the oldest message has waited long enough."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from cloud.mqtt import InboundMessage, Inbox

WAIT_S = 5.0  # generous: none of these groups should wait at all on the real clock


def _message(mid: int) -> InboundMessage:
    return InboundMessage("voltgate/v1/f/bus-1/telemetry", b"x", datetime.now(UTC), mid, 1, 0)


class FrozenClock:
    """A clock that moves only when told: waiting on it for a deadline ahead would never end."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_messages_that_waited_their_age_while_the_writer_was_busy_are_taken_at_once() -> None:
    # GIVEN three messages that arrived while the writer was busy with the previous group
    clock = FrozenClock()
    inbox = Inbox(10, clock=clock)
    for mid in range(3):
        inbox.push(_message(mid))
    # WHEN the writer asks for the next group after they have waited longer than the group age
    clock.now += 0.5
    group = await asyncio.wait_for(inbox.next_group(100, 0.2, asyncio.Event()), WAIT_S)
    # THEN it gets them without waiting for a group to fill (on the frozen clock, a deadline counted
    # from the request would never pass)
    assert [m.mid for m in group] == [0, 1, 2]
    assert len(inbox) == 0


async def test_a_full_group_is_cut_at_the_size_limit_and_the_rest_keeps_its_arrival() -> None:
    clock = FrozenClock()
    inbox = Inbox(10, clock=clock)
    for mid in range(5):
        inbox.push(_message(mid))
    clock.now += 0.05  # younger than the age: only the size limit can cut the first group
    first = await asyncio.wait_for(inbox.next_group(3, 0.2, asyncio.Event()), WAIT_S)
    assert [m.mid for m in first] == [0, 1, 2]
    clock.now += 0.2  # now the rest has waited 0.25 s: taken at once, not another 0.2 s
    second = await asyncio.wait_for(inbox.next_group(3, 0.2, asyncio.Event()), WAIT_S)
    assert [m.mid for m in second] == [3, 4]


async def test_a_young_group_waits_for_more_until_it_fills() -> None:
    clock = FrozenClock()
    inbox = Inbox(10, clock=clock)
    inbox.push(_message(0))
    waiting = asyncio.create_task(inbox.next_group(2, 0.2, asyncio.Event()))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the clock has not moved: the group is younger than its age
    inbox.push(_message(1))
    group = await asyncio.wait_for(waiting, WAIT_S)
    assert [m.mid for m in group] == [0, 1]


async def test_stop_returns_nothing_from_an_empty_inbox() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await Inbox(10).next_group(10, 0.2, stop) == []
