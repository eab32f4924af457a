"""The uplink's in-flight window: rows the broker has taken (PUBACK) that the cloud has not yet stored.

Pure bookkeeping, no I/O (the uplink is its async shell). Per message sent: its stream ("telemetry" or
"alerts"), the span of seqs it covers (`first_seq..last_seq`), the seqs still unacknowledged, and when
to re-send it. Two facts make a span enough to tell sent rows from unsent ones: a message carries the
oldest unsent rows of its stream's kinds in a seq interval with nothing skipped, and new rows only
ever get higher seqs; so every row of the stream's kinds inside an in-flight span belongs to that
message (or is gone). `gaps()` gives the seq intervals outside every span: where unsent rows are.
A per-stream floor keeps that cheap when many messages are in flight: every row of the stream below
it was sent or is gone, so gaps start there. The caller raises it past a gap it found empty
(`raise_floor`); removing a message (its rows unsent again) lowers it.

Re-send deadlines: `ack_timeout_s` after the first send, then doubling per re-send of the same message
(`ack_timeout_s * 2**resends`), capped at `ack_timeout_max_s`, so a receiver away for hours costs the
broker a few copies, not one per minute. A live (not retained) ack shows the receiver is there again:
messages that already missed a deadline are then due within `ack_timeout_s` (`receiver_alive`), so
a receiver back after hours gets the rest at once instead of at the backed-off deadlines.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SeqRange = tuple[int, int]  # inclusive


@dataclass(slots=True)
class InFlightMessage:
    stream: str
    first_seq: int
    last_seq: int
    seqs: set[int]  # not yet acknowledged
    sent_at: float  # monotonic seconds, last (re-)send
    resend_at: float
    resends: int = 0


class InFlightWindow:
    def __init__(self, ack_timeout_s: float, ack_timeout_max_s: float) -> None:
        self._ack_timeout_s = ack_timeout_s
        self._ack_timeout_max_s = max(ack_timeout_s, ack_timeout_max_s)
        self._messages: dict[int, InFlightMessage] = {}
        self._keys = itertools.count()
        self._rows = 0
        self._floors: dict[str, int] = {}  # stream → every row of it below this is in flight or gone

    @property
    def rows(self) -> int:
        """Rows in flight (sent, not yet acknowledged)."""
        return self._rows

    def __len__(self) -> int:
        return len(self._messages)

    def get(self, key: int) -> InFlightMessage | None:
        return self._messages.get(key)

    def messages(self) -> list[InFlightMessage]:
        """Copies of the messages in flight, oldest first."""
        return [dataclasses.replace(m, seqs=set(m.seqs)) for _, m in sorted(self._messages.items())]

    def add(self, stream: str, seqs: Sequence[int], now: float) -> int:
        """Register a message about to be published; returns its key."""
        key = next(self._keys)
        self._messages[key] = InFlightMessage(
            stream, min(seqs), max(seqs), set(seqs), now, now + self._ack_timeout_s
        )
        self._rows += len(self._messages[key].seqs)
        return key

    def remove(self, key: int) -> None:
        """Forget a message: its rows are unsent again (a failed first publish) or gone (evicted)."""
        message = self._messages.pop(key, None)
        if message is not None:
            self._rows -= len(message.seqs)
            floor = self._floors.get(message.stream, 0)
            self._floors[message.stream] = min(floor, message.first_seq)

    def floor(self, stream: str) -> int:
        return self._floors.get(stream, 0)

    def raise_floor(self, stream: str, seq: int) -> None:
        """The caller found no unsent row of `stream` below `seq`."""
        self._floors[stream] = max(self.floor(stream), seq)

    def resending(self, key: int, present: Iterable[int], now: float) -> None:
        """The message goes out again with the rows still `present` in the buffer; its deadline grows."""
        message = self._messages.get(key)
        if message is None:
            return
        kept = message.seqs.intersection(present)
        self._rows -= len(message.seqs) - len(kept)
        message.seqs = kept
        message.resends += 1
        message.sent_at = now
        timeout = self._ack_timeout_s * 2.0 ** min(message.resends, 30)
        message.resend_at = now + min(timeout, self._ack_timeout_max_s)
        if not kept:
            self.remove(key)

    def acknowledge(self, ranges: Iterable[SeqRange]) -> list[int]:
        """Take acknowledged seqs out of flight; returns those that were in flight (ascending)."""
        hits: list[int] = []
        ranges = list(ranges)
        for key, message in list(self._messages.items()):
            for first, last in ranges:
                if last < message.first_seq or first > message.last_seq:
                    continue
                if last - first + 1 < len(message.seqs):
                    found = [s for s in range(first, last + 1) if s in message.seqs]
                else:
                    found = [s for s in message.seqs if first <= s <= last]
                message.seqs.difference_update(found)
                hits += found
            if not message.seqs:
                del self._messages[key]
        self._rows -= len(hits)
        hits.sort()
        return hits

    def receiver_alive(self, now: float) -> None:
        """A live ack arrived: messages re-sent at least once are due within `ack_timeout_s`."""
        soon = now + self._ack_timeout_s
        for message in self._messages.values():
            if message.resends and message.resend_at > soon:
                message.resend_at = soon

    def due(self, now: float) -> list[int]:
        """Keys of messages whose re-send deadline has passed: alerts first, then oldest deadline."""
        ready = [(m.stream != "alerts", m.resend_at, k) for k, m in self._messages.items()]
        return [key for _, resend_at, key in sorted(ready) if resend_at <= now]

    def next_resend_at(self) -> float | None:
        return min((m.resend_at for m in self._messages.values()), default=None)

    def gaps(self, stream: str, from_seq: int, before_seq: int | None) -> list[tuple[int, int | None]]:
        """The intervals `[lo, hi)` of `[from_seq, before_seq)` outside every in-flight span of `stream`
        and not below its floor (`hi` None: open-ended), ascending. Adjacent spans count as one."""
        spans = sorted(
            (m.first_seq, m.last_seq) for m in self._messages.values() if m.stream == stream and m.seqs
        )
        gaps: list[tuple[int, int | None]] = []
        cursor = max(from_seq, self.floor(stream))
        for first, last in spans:
            if before_seq is not None and cursor >= before_seq:
                break
            if last < cursor:
                continue
            if first > cursor:
                hi = first if before_seq is None else min(first, before_seq)
                gaps.append((cursor, hi))
            cursor = max(cursor, last + 1)
        if before_seq is None or cursor < before_seq:
            gaps.append((cursor, before_seq))
        return gaps
