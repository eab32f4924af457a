"""A pseudo-terminal tap between the simulator's serial port and the agent: relays both ways, line by
line, and lets the test put its own bytes between two lines (garbage, a crafted NMEA sentence, a forged
SLCAN frame), as a flaky adapter or a hostile device on the line would.

    voltgate-sim ──(its pty: `upstream`)── PtyTap ──(a new pty: `path`)── voltgate-agent

The host's commands (SLCAN `O`, `S6`, `V`, ...) go upstream untouched; the device's output is forwarded
only in whole lines (terminator `\\r` for SLCAN, `\\n` for NMEA), so an injection never lands inside a
valid line. Lines the agent does not read in time are dropped and counted, as the simulator's own pty
sinks do: the tap never blocks.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import threading
import tty

from simulator.slcan import RawPty

MAX_PENDING_BYTES = 1 << 20


class PtyTap:
    def __init__(self, upstream: str, terminator: bytes) -> None:
        self.upstream = upstream
        self.terminator = terminator
        self._up_fd = os.open(upstream, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._up_fd)
        self._down = RawPty()
        self.path = self._down.path
        self.lines = 0  # device lines forwarded
        self.injected = 0  # injections forwarded
        self.dropped_bytes = 0
        self._injections: queue.Queue[bytes] = queue.Queue()
        self._partial = bytearray()
        self._out = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, name=f"pty-tap {upstream}", daemon=True)
        self._thread.start()

    def inject(self, data: bytes) -> None:
        """Send `data` to the agent between the next two device lines."""
        self._injections.put(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        with contextlib.suppress(OSError):
            os.close(self._up_fd)
        self._down.close()

    def _relay(self) -> None:
        down = self._down.master_fd
        while not self._stop.is_set():
            try:
                readable, _, _ = select.select([self._up_fd, down], [], [], 0.02)
            except (OSError, ValueError):
                return
            if down in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    data = os.read(down, 4096)
                    os.write(self._up_fd, data)  # the host's commands to the device
            if self._up_fd in readable:
                try:
                    self._from_device(os.read(self._up_fd, 65536))
                except BlockingIOError:
                    pass
                except OSError:
                    return  # the simulator closed its pty
            self._flush(down)

    def _from_device(self, data: bytes) -> None:
        self._partial += data
        while (end := self._partial.find(self.terminator)) >= 0:
            self._out += self._partial[: end + 1]
            del self._partial[: end + 1]
            self.lines += 1
            while True:
                try:
                    self._out += self._injections.get_nowait()
                except queue.Empty:
                    break
                self.injected += 1
        if len(self._out) > MAX_PENDING_BYTES:  # nobody reads: drop whole pending output
            self.dropped_bytes += len(self._out)
            self._out.clear()

    def _flush(self, down: int) -> None:
        if not self._out:
            return
        try:
            n = os.write(down, self._out)
        except BlockingIOError:
            return
        except OSError:
            self.dropped_bytes += len(self._out)
            self._out.clear()
            return
        del self._out[:n]
