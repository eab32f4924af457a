"""Sources: where frames and fixes enter the agent (CAN buses, recorded logs, the GPS receiver).

What the sources share lives here: counters and the reconnect policy (tenacity exponential backoff with
full jitter; one log line when a link fails, one when it recovers). `Link` also sets
`voltgate_source_up{source}`: 1 from a successful open until the link is lost, 0 while it is down or
reconnecting and after the source stopped. The python-can message → `Frame`
conversion is `agent.records.frame_from_message`, shared with the `decode` CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from agent import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True)
class SourceStats:
    """Counters of one source, for the app to export."""

    frames: int = 0  # frames (or fixes, for GPS) handed to the outbox
    dropped: int = 0  # not handed on because the outbox was full
    connects: int = 0  # successful opens, the first one included
    reconnects: int = 0  # recoveries after a failure
    failures: int = 0  # failed opens and lost links


class SourceError(Exception):
    """A source that cannot run: a configuration the interface refuses, an unreadable log."""


class SourceStoppedError(Exception):
    """Raised inside a source's connect loop when `stop()` was called; never leaves `run`."""


def offer(outbox: asyncio.Queue[T], item: T, stats: SourceStats) -> None:
    """Hand an item on without waiting; a full outbox drops it, counted (a bus cannot be paused)."""
    try:
        outbox.put_nowait(item)
    except asyncio.QueueFull:
        stats.dropped += 1
    else:
        stats.frames += 1


class Link:
    """Connects a source with backoff and logs its state changes once each way."""

    def __init__(
        self,
        what: str,
        stats: SourceStats,
        errors: tuple[type[BaseException], ...],
        *,
        backoff_initial_s: float,
        backoff_max_s: float,
        stopping: asyncio.Event,
        label: str,
    ) -> None:
        self.what = what
        self._up = metrics.SOURCE_UP.labels(label)
        self._up.set(0)
        self.stats = stats
        self.errors = errors
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.down = False
        self._stopping = stopping
        self._failed_attempts = 0

    async def connect(self, open_link: Callable[[], T]) -> T:
        """Call the blocking `open_link` in a thread until it succeeds, backing off between
        attempts. Raises `SourceStoppedError` when the source is stopped meanwhile."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(self.errors),
            # full jitter: uniform in [0, min(max, initial * 2**n)], so a fleet's gateways spread out
            wait=wait_random_exponential(multiplier=self.backoff_initial_s, max=self.backoff_max_s),
            before_sleep=self._attempt_failed,
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self._stopping.is_set():
                    raise SourceStoppedError
                opened = await asyncio.to_thread(open_link)
                self._connected()
                return opened
        raise AssertionError("unreachable: tenacity retries forever or reraises")

    def lost(self, err: BaseException) -> None:
        """An open link failed (adapter unplugged, port gone)."""
        self.stats.failures += 1
        self._up.set(0)
        if not self.down:
            self.down = True
            self._failed_attempts = 0
            log.warning("%s: link lost (%s); reconnecting with backoff", self.what, _describe(err))

    def closed(self) -> None:
        """The source stopped: its link is closed on purpose."""
        self._up.set(0)

    def _attempt_failed(self, state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome is not None else None
        self.stats.failures += 1
        self._failed_attempts += 1
        if not self.down:
            self.down = True
            log.warning("%s: cannot connect (%s); retrying with backoff", self.what, _describe(err))
        else:
            log.debug("%s: attempt %d failed (%s)", self.what, self._failed_attempts, _describe(err))

    def _connected(self) -> None:
        self.stats.connects += 1
        self._up.set(1)
        if self.down:
            self.down = False
            self.stats.reconnects += 1
            log.info("%s: link recovered after %d failed attempts", self.what, self._failed_attempts)
        self._failed_attempts = 0

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _describe(err: BaseException | None) -> str:
    if err is None:
        return "unknown error"
    return f"{type(err).__name__}: {err}"
