"""The agent's loop exception filter drops exactly aiomqtt's closed-socket watcher race, nothing else."""

import asyncio
import logging
import os

import pytest

from agent import metrics
from agent.uplink import filter_closed_socket_watchers


def _closed_fd() -> int:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    os.close(write_fd)
    return write_fd


def _count() -> float:
    return metrics.UPLINK_FAILURES.labels("closed_socket_watcher")._value.get()


async def test_watcher_on_a_closed_socket_is_counted_not_logged_as_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    filter_closed_socket_watchers(loop)
    before = _count()
    # GIVEN what aiomqtt does: a write watcher scheduled thread-safely for a socket closed meanwhile
    with caplog.at_level(logging.DEBUG):
        loop.call_soon_threadsafe(loop.add_writer, _closed_fd(), lambda: None)
        await asyncio.sleep(0.05)
    # THEN no error (no traceback) reaches the log, and the case is counted
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert _count() == before + 1


async def test_other_loop_errors_still_reach_the_default_handler(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    filter_closed_socket_watchers(loop)

    def broken() -> None:
        raise OSError(9, "Bad file descriptor")  # the same error, but not from a socket watcher

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(broken)
        await asyncio.sleep(0.05)
    assert any("Exception in callback" in r.getMessage() for r in caplog.records)
