"""`BufferWorker`: the `SampleBuffer` on its own thread, awaited from the event loop (see `agent.buffer`).

Import it from `agent.buffer`. It imports `SampleBuffer` only when it opens, so either module may be
imported first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from agent.buffer_records import Kind, WireRecord
from agent.records import Alert, Prediction, Sample

if TYPE_CHECKING:
    from agent.buffer import BufferStats, SampleBuffer

_T = TypeVar("_T")


class BufferWorker:
    """Runs a `SampleBuffer` on its own thread; every method is awaited from the event loop."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voltgate-buffer")
        self._buffer: SampleBuffer | None = None

    async def open(self) -> None:
        from agent.buffer import SampleBuffer

        self._buffer = await self._call_raw(lambda: SampleBuffer(self._path, self._max_bytes))

    async def _call_raw(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def call(self, fn: Callable[[SampleBuffer], _T]) -> _T:
        """Run `fn(buffer)` on the buffer's thread."""
        buffer = self._buffer
        if buffer is None:
            raise RuntimeError("BufferWorker.open() was not awaited")
        return await self._call_raw(lambda: fn(buffer))

    async def commit_samples(self, samples: Sequence[Sample], marks: Mapping[str, int] | None = None) -> int:
        """Stage and commit `samples` together with `marks` (see `SampleBuffer.mark`) in one transaction."""

        def work(buffer: SampleBuffer) -> int:
            buffer.append_samples(samples)
            for key, value in (marks or {}).items():
                buffer.mark(key, value)
            return buffer.commit()

        return await self.call(work)

    async def commit_derived(self, records: Sequence[Prediction | Alert]) -> int:
        def work(buffer: SampleBuffer) -> int:
            for record in records:
                if isinstance(record, Alert):
                    buffer.append_alert(record)
                else:
                    buffer.append_prediction(record)
            return buffer.commit()

        return await self.call(work)

    async def pending(
        self, limit: int, kinds: Collection[Kind], *, from_seq: int = 0, before_seq: int | None = None
    ) -> list[WireRecord]:
        return await self.call(lambda b: b.pending(limit, kinds, from_seq=from_seq, before_seq=before_seq))

    async def count_pending(self, kinds: Collection[Kind] = tuple(Kind), *, from_seq: int = 0) -> int:
        return await self.call(lambda b: b.count_pending(kinds, from_seq=from_seq))

    async def acknowledge(self, seqs: Sequence[int]) -> int:
        return await self.call(lambda b: b.acknowledge(seqs))

    async def discard(self, seqs: Sequence[int]) -> int:
        return await self.call(lambda b: b.discard(seqs))

    async def get_mark(self, key: str) -> int | None:
        return await self.call(lambda b: b.get_mark(key))

    async def committed_seq(self) -> int:
        return await self.call(lambda b: b.committed_seq)

    async def snapshot(self) -> BufferStats:
        return await self.call(lambda b: b.snapshot())

    async def close(self) -> None:
        if self._buffer is not None:
            await self.call(lambda b: b.close())
            self._buffer = None
        self._executor.shutdown(wait=True)
