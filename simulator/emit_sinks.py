"""Where the emitted frames and sentences go, and the loop that paces a run.

CAN sinks: any python-can bus (`virtual`, `socketcan`, ...), the SLCAN adapter on a pty
(`simulator.slcan`), a log file through python-can's writers (`candump -L` `.log`, `.asc`, `.blf`).
NMEA sinks: a file, a pty, a serial port. `stream()` runs the states through the emitters into the
sinks, in real time (scaled by `speed`, paced by the monotonic clock) or as fast as the CPU allows,
and yields each state on, so a ground-truth writer can consume the same run.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import can
import serial

from simulator.emit_can import CanEmitter
from simulator.emit_nmea import NmeaEmitter
from simulator.slcan import RawPty, SlcanAdapter
from simulator.state import BusState

log = logging.getLogger(__name__)

LOG_SUFFIXES = (".log", ".asc", ".blf")


class CanSink(Protocol):
    def send(self, msg: can.Message) -> None: ...
    def close(self) -> None: ...


class NmeaSink(Protocol):
    def write(self, text: str) -> None: ...
    def close(self) -> None: ...


class BusSink:
    """A python-can bus: `virtual` (in-process), `socketcan` (a real gateway), any other interface."""

    def __init__(self, bus: can.BusABC) -> None:
        self.bus = bus
        self.errors = 0

    @classmethod
    def open(cls, interface: str, channel: str) -> BusSink:
        return cls(can.Bus(interface=interface, channel=channel))

    def send(self, msg: can.Message) -> None:
        try:
            self.bus.send(msg)
        except can.CanError as err:
            if not self.errors:
                log.warning("CAN send failed (counting further failures): %s", err)
            self.errors += 1

    def close(self) -> None:
        self.bus.shutdown()


class LogSink:
    """A recorded log through python-can's writer for the file's extension."""

    def __init__(self, path: Path) -> None:
        if path.suffix.lower() not in LOG_SUFFIXES:
            raise ValueError(f"a CAN log ends in one of {', '.join(LOG_SUFFIXES)}, not {path.name!r}")
        self.path = path
        self.writer = can.Logger(str(path))

    def send(self, msg: can.Message) -> None:
        self.writer.on_message_received(msg)

    def close(self) -> None:
        self.writer.stop()


class SlcanSink:
    """The simulated bus seen through an SLCAN adapter on a fresh pty (`path` for the host)."""

    def __init__(self) -> None:
        self.adapter = SlcanAdapter(RawPty())
        self.path = self.adapter.path

    def send(self, msg: can.Message) -> None:
        self.adapter.send(msg)

    def close(self) -> None:
        if self.adapter.dropped:
            log.info("slcan: %d frames dropped while the host was not reading", self.adapter.dropped)
        self.adapter.close()


class NmeaFileSink:
    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="ascii", newline="")

    def write(self, text: str) -> None:
        self._file.write(text)

    def close(self) -> None:
        self._file.close()


class NmeaPtySink:
    """The GPS receiver on a fresh pty; a host that does not read loses sentences, never blocks us."""

    def __init__(self) -> None:
        self.pty = RawPty()
        self.path = self.pty.path
        self.dropped = 0

    def write(self, text: str) -> None:
        data = text.encode("ascii")
        try:
            written = os.write(self.pty.master_fd, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            # the pty buffer is full: drop the rest of the epoch, end the torn line (as a UART overrun)
            self.dropped += 1
            with contextlib.suppress(BlockingIOError):
                if written:
                    os.write(self.pty.master_fd, b"\r\n")

    def close(self) -> None:
        self.pty.close()


class NmeaSerialSink:
    """A real serial port (or any pyserial URL), e.g. a USB-serial cable into the gateway."""

    def __init__(self, port: str, baudrate: int = 9600) -> None:
        self._port = serial.serial_for_url(port, baudrate=baudrate, write_timeout=1.0)

    def write(self, text: str) -> None:
        try:
            self._port.write(text.encode("ascii"))
        except serial.SerialTimeoutException:
            log.warning("NMEA serial write timed out; sentences dropped")

    def close(self) -> None:
        self._port.close()


class Pacer:
    """Holds each state back until its simulation time, scaled by `speed`, on the monotonic clock.

    `speed` None: as fast as the CPU allows.
    """

    def __init__(self, speed: float | None, sleep: Callable[[float], None] = time.sleep) -> None:
        if speed is not None and not speed > 0.0:
            raise ValueError(f"speed must be above zero, not {speed}")
        self.speed = speed
        self._sleep = sleep
        self._origin: tuple[float, float] | None = None  # (sim t_s, monotonic) at the first state

    def wait(self, t_s: float) -> None:
        if self.speed is None:
            return
        now = time.monotonic()
        if self._origin is None:
            self._origin = (t_s, now)
            return
        sim0, wall0 = self._origin
        delay = wall0 + (t_s - sim0) / self.speed - now
        if delay > 0.0:
            self._sleep(delay)


@dataclass(slots=True)
class RunStats:
    states: int = 0
    frames: int = 0
    nmea_epochs: int = 0
    sim_s: float = 0.0
    wall_s: float = 0.0

    @property
    def speedup(self) -> float:
        return self.sim_s / self.wall_s if self.wall_s > 0 else math.inf


@dataclass(slots=True)
class Outputs:
    can_emitter: CanEmitter | None = None
    can_sinks: list[CanSink] = field(default_factory=list)
    nmea_emitter: NmeaEmitter | None = None
    nmea_sinks: list[NmeaSink] = field(default_factory=list)

    def close(self) -> None:
        sinks: list[CanSink | NmeaSink] = [*self.can_sinks, *self.nmea_sinks]
        for sink in sinks:
            try:
                sink.close()
            except Exception:  # one sink failing to close must not keep the others open
                log.exception("closing %s failed", type(sink).__name__)


def stream(
    states: Iterable[BusState],
    outputs: Outputs,
    pacer: Pacer,
    stats: RunStats,
    start_t_s: float = 0.0,
    status_every_s: float = 0.0,
    on_status: Callable[[BusState, RunStats], None] | None = None,
) -> Iterator[BusState]:
    """Emit each state's frames and sentences into the sinks (paced), then yield the state.

    `start_t_s` is the simulation time the run starts from (the first state comes one step later).
    """
    start = time.perf_counter()
    next_status = start_t_s + status_every_s
    for state in states:
        pacer.wait(state.t_s)
        if outputs.can_emitter is not None:
            for frame in outputs.can_emitter.frames(state):
                for can_sink in outputs.can_sinks:
                    can_sink.send(frame)
                stats.frames += 1
        if outputs.nmea_emitter is not None:
            text = "".join(outputs.nmea_emitter.sentences(state))
            if text:
                stats.nmea_epochs += 1
                for nmea_sink in outputs.nmea_sinks:
                    nmea_sink.write(text)
        stats.states += 1
        stats.sim_s = state.t_s - start_t_s
        stats.wall_s = time.perf_counter() - start
        if on_status is not None and status_every_s > 0 and state.t_s >= next_status - 1e-6:
            on_status(state, stats)
            next_status += status_every_s
        yield state
