"""A live CAN bus through python-can, any interface by configuration.

The bus is opened off the event loop and read through `can.Notifier(bus, [listener], loop=loop)`:
python-can reads in its own thread (or watches the bus's file descriptor, for socketcan) and
delivers each message on the loop, where it becomes a `Frame` (interface timestamp) and goes into
the bounded outbox; a full outbox drops the frame, counted in `stats.dropped`.

An SLCAN bus is read by `_ChunkReader` instead: its thread reads all the bytes waiting on the port at
once, the reader drops the frames whose id the catalog's filters refuse before building any object
(counted with the decoder's unknown ids in `voltgate_can_frames_unknown{bus}`, and in
`unknown_ids_filtered`), and the wanted frames of that read reach the loop in one call, where each is
offered to the outbox as above (a full outbox drops and counts per frame).

A failing link (adapter unplugged, serial port gone, socket error) is closed and reopened with
backoff; see `agent.sources.Link`. A malformed line on an SLCAN serial port is not a failing link:
interface "slcan" is opened as `agent.sources.slcan.TolerantSlcanBus`, which skips and counts bad lines
(`line_stats`) and delivers every valid frame around them. Every other interface (socketcan, virtual,
pcan, ...) is python-can's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import can
import serial
from can.typechecking import CanFilter

from agent import metrics
from agent.records import Frame, frame_from_message
from agent.settings import CanBusSettings
from agent.sources import Link, SourceError, SourceStats, SourceStoppedError, offer
from agent.sources.slcan import SlcanLineStats, TolerantSlcanBus
from protocols.catalog import Catalog
from protocols.j1939 import PGN_DM1, PGN_TP_CM, PGN_TP_DT, pgn_filter, pgn_id

log = logging.getLogger(__name__)

# Errors of a link that reconnecting may cure. A ValueError, TypeError or
# CanInterfaceNotImplementedError (unknown interface, bad option) is a configuration mistake: `run`
# raises `SourceError`.
LINK_ERRORS: tuple[type[BaseException], ...] = (
    can.CanInitializationError,
    can.CanOperationError,
    OSError,  # serial.SerialException is an OSError too
    serial.SerialException,
)
STANDARD_MASK = 0x7FF
EXTENDED_MASK = 0x1FFFFFFF


def catalog_filters(catalog: Catalog) -> list[CanFilter]:
    """python-can filters passing exactly the frame ids the catalog decodes: J1939 messages by PGN (any
    priority, sender and destination), with the transport protocol and DM1 when the catalog has any."""
    filters: list[CanFilter] = []
    j1939 = bool(catalog.dm1_signals())
    for frame_id, spec in sorted(catalog.frames().items()):
        extended = bool(spec.message.is_extended_frame)
        mask = EXTENDED_MASK if extended else STANDARD_MASK
        if extended and spec.message.protocol == "j1939":
            j1939 = True
            frame_id, mask = pgn_filter(frame_id)
        filters.append(CanFilter(can_id=frame_id, can_mask=mask, extended=extended))
    if j1939:
        for pgn in (PGN_TP_CM, PGN_TP_DT, PGN_DM1):
            can_id, mask = pgn_filter(pgn_id(pgn))
            filters.append(CanFilter(can_id=can_id, can_mask=mask, extended=True))
    return filters


class _FrameListener(can.Listener):
    """Runs on the event loop (the Notifier is given the loop): converts and hands frames on."""

    def __init__(self, bus: str, outbox: asyncio.Queue[Frame], stats: SourceStats) -> None:
        self.bus = bus
        self.outbox = outbox
        self.stats = stats
        self.failure: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        self.stopped = False

    def on_message_received(self, msg: can.Message) -> None:
        if not self.stopped:
            offer(self.outbox, frame_from_message(self.bus, msg), self.stats)

    def on_error(self, exc: Exception) -> None:
        if not self.failure.done():
            self.failure.set_result(exc)

    def stop(self) -> None:
        self.stopped = True


class _ChunkReader:
    """Reads a `TolerantSlcanBus` in its own thread: each read of the port (its wanted frames as
    `Frame`s, stamped on receipt, and the count of unwanted ones) is one call on the loop."""

    def __init__(
        self,
        bus: TolerantSlcanBus,
        listener: _FrameListener,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
        on_unwanted: Callable[[int], None],
    ) -> None:
        self.bus = bus
        self.listener = listener
        self.loop = loop
        self.timeout_s = timeout_s
        self.on_unwanted = on_unwanted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"slcan:{listener.bus}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        name, bus, timeout_s, loop = self.listener.bus, self.bus, self.timeout_s, self.loop
        try:
            while not self._stop.is_set():
                chunk = bus.read_chunk(timeout_s)
                if not chunk.frames and not chunk.unwanted:
                    continue
                ts = time.time()  # SLCAN carries no usable time: stamped on receipt, as python-can does
                frames = [
                    Frame(name, ts, f.arbitration_id, f.is_extended, f.data, False, f.is_remote)
                    for f in chunk.frames
                ]
                loop.call_soon_threadsafe(self._deliver, frames, chunk.unwanted)
        except Exception as exc:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(self.listener.on_error, exc)

    def _deliver(self, frames: list[Frame], unwanted: int) -> None:
        listener = self.listener
        if listener.stopped:
            return
        for frame in frames:
            offer(listener.outbox, frame, listener.stats)
        if unwanted:
            self.on_unwanted(unwanted)

    def stop(self, timeout_s: float) -> None:
        """Ends the thread (blocks up to `timeout_s`: call off the loop)."""
        self._stop.set()
        self._thread.join(timeout_s)


class _Notifier(can.Notifier):
    """A Notifier whose read failures reach the listeners' `on_error` and nothing else.

    python-can re-raises a reader thread's exception after reporting it (a traceback on stderr
    from a dead thread), and lets a file-descriptor reader's exception escape into the event
    loop's handler; both are reported to the listeners here and then end that reader quietly.
    """

    def _rx_thread(self, bus: can.BusABC) -> None:
        with contextlib.suppress(Exception):  # already passed to on_error by python-can
            super()._rx_thread(bus)

    def _on_message_available(self, bus: can.BusABC) -> None:
        try:
            super()._on_message_available(bus)
        except Exception as exc:
            self.exception = exc
            self._on_error(exc)


class CanSource:
    """One configured CAN bus as a stream of `Frame`s."""

    def __init__(
        self,
        settings: CanBusSettings,
        catalog: Catalog,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        poll_timeout_s: float = 0.5,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.stats = SourceStats()
        self.poll_timeout_s = poll_timeout_s
        self.line_stats = SlcanLineStats(settings.name)  # bad SLCAN lines (interface "slcan" only)
        # frames dropped by the catalog's filters in the SLCAN reader (interface "slcan" only)
        self.unknown_ids_filtered = 0
        self._unknown_metric = metrics.FRAMES_UNKNOWN.labels(settings.name)
        self._stopping = asyncio.Event()
        self._link = Link(
            f"CAN bus {settings.name} ({settings.interface} {settings.channel})",
            self.stats,
            LINK_ERRORS,
            label=settings.name,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            stopping=self._stopping,
        )

    @property
    def connected(self) -> bool:
        return self.stats.connects > 0 and not self._link.down

    def stop(self) -> None:
        """Ask `run` to close the bus and return."""
        self._stopping.set()

    async def run(self, outbox: asyncio.Queue[Frame]) -> None:
        """Until `stop()` (or cancellation): open the bus, read it into `outbox`, reopen on failure."""
        try:
            while not self._stopping.is_set():
                try:
                    bus = await self._link.connect(self._open)
                except SourceStoppedError:
                    return
                except (ValueError, TypeError, can.CanInterfaceNotImplementedError) as err:
                    s = self.settings
                    raise SourceError(
                        f"CAN bus {s.name}: python-can refuses interface {s.interface!r} "
                        f"channel {s.channel!r}: {err}"
                    ) from err
                try:
                    failure = await self._pump(bus, outbox)
                finally:
                    await asyncio.to_thread(_shutdown_quietly, bus)
                if failure is not None:
                    self._link.lost(failure)
        finally:
            self._link.closed()  # stopped or cancelled: the link is closed

    def _open(self) -> can.BusABC:
        s = self.settings
        kwargs: dict[str, Any] = dict(s.options)
        if s.bitrate is not None:
            kwargs["bitrate"] = s.bitrate
        if s.hardware_filters:
            kwargs["can_filters"] = catalog_filters(self.catalog)
        if s.interface == "slcan":
            return TolerantSlcanBus(s.channel, line_stats=self.line_stats, **kwargs)
        return can.Bus(interface=s.interface, channel=s.channel, **kwargs)

    async def _pump(self, bus: can.BusABC, outbox: asyncio.Queue[Frame]) -> BaseException | None:
        """Read until the link fails (returns the error) or the source is stopped (None)."""
        loop = asyncio.get_running_loop()
        listener = _FrameListener(self.settings.name, outbox, self.stats)
        reader: _ChunkReader | _Notifier
        if isinstance(bus, TolerantSlcanBus):
            reader = _ChunkReader(bus, listener, loop, self.poll_timeout_s, self._count_unwanted)
        else:
            reader = notifier = _Notifier(bus, [listener], timeout=self.poll_timeout_s, loop=loop)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            waiters: list[asyncio.Future[Any]] = [listener.failure, stopping]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            listener.stop()
            if isinstance(reader, _ChunkReader):
                await asyncio.to_thread(reader.stop, self.poll_timeout_s + 1.0)
            elif _watches_fd(bus):
                notifier.stop()  # removes the loop reader: must run on the loop, and never blocks
            else:
                await asyncio.to_thread(notifier.stop, self.poll_timeout_s + 1.0)  # joins the reader
        return listener.failure.result() if listener.failure.done() else None

    def _count_unwanted(self, frames: int) -> None:
        """Frames the SLCAN reader dropped by id: unknown ids, as the decoder would have counted them."""
        self.unknown_ids_filtered += frames
        self._unknown_metric.inc(frames)


def _watches_fd(bus: can.BusABC) -> bool:
    try:
        return bus.fileno() >= 0
    except (NotImplementedError, can.CanError, OSError):
        return False


def _shutdown_quietly(bus: can.BusABC) -> None:
    try:
        bus.shutdown()
    except (can.CanError, OSError, serial.SerialException) as err:  # the link is gone already
        log.debug("closing a failed bus: %s", err)
