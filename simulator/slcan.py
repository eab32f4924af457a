"""A USB-CAN adapter that speaks SLCAN (the Lawicel ASCII protocol) on a pseudo-terminal.

The simulator plays the adapter: another process opens the pty's slave end as a serial port (for
example python-can's `slcan` interface) and talks to us as to a CANable or a Lawicel CANUSB:

    host -> adapter   `S0`..`S8` bitrate, `sxxyy` BTR registers, `O` open, `L` open listen-only,
                      `C` close, `V` version, `N` serial number, `F` status flags, `Z0/1` timestamps,
                      `t`/`T` transmit (acknowledged with `z`/`Z`, not forwarded: we only play the bus)
    adapter -> host   `\\r` OK, `\\a` error, and while the channel is open one line per received frame:
                      `tiiildd..\\r` (11-bit) or `Tiiiiiiiildd..\\r` (29-bit), plus `tttt` (ms) with `Z1`

Frames reach the host only while its channel is open, as with a real adapter. The adapter's own
thread owns the pty: it answers commands and writes frames from a bounded queue; a host that does
not read (or is not there) makes the queue fill and frames are dropped and counted, never blocking
the simulation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import threading
import time
import tty

import can

log = logging.getLogger(__name__)

OK = b"\r"
ERROR = b"\a"
VERSION = b"V1013\r"
SERIAL_NUMBER = b"NVG01\r"
MAX_COMMAND_CHARS = 64
TIMESTAMP_PERIOD_MS = 60_000


class RawPty:
    """A pseudo-terminal pair in raw mode; `path` is the end a host opens as its serial port.

    The slave end stays open here too, so the master never sees a hang-up when a host closes it.
    """

    def __init__(self) -> None:
        self.master_fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)
        os.set_blocking(self.master_fd, False)
        self.path = os.ttyname(self.slave_fd)

    def close(self) -> None:
        for fd in (self.master_fd, self.slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def slcan_line(msg: can.Message, timestamp_ms: int | None = None) -> bytes:
    """The adapter's line for a received frame (classic CAN, data or remote)."""
    dlc = len(msg.data) if not msg.is_remote_frame else msg.dlc
    if msg.is_extended_id:
        head = f"{'R' if msg.is_remote_frame else 'T'}{msg.arbitration_id:08X}{dlc:d}"
    else:
        head = f"{'r' if msg.is_remote_frame else 't'}{msg.arbitration_id:03X}{dlc:d}"
    data = "" if msg.is_remote_frame else bytes(msg.data).hex().upper()
    stamp = "" if timestamp_ms is None else f"{timestamp_ms % TIMESTAMP_PERIOD_MS:04X}"
    return f"{head}{data}{stamp}\r".encode("ascii")


class SlcanAdapter:
    """Serves one pty as an SLCAN adapter; `send()` puts a frame on the (simulated) bus."""

    def __init__(self, pty: RawPty, queue_frames: int = 4096) -> None:
        self.pty = pty
        self.is_open = False
        self.listen_only = False
        self.bitrate_code = ""
        self.timestamps = False
        self.dropped = 0  # frames not delivered because the host was not reading
        self.delivered = 0
        self._frames: queue.Queue[bytes] = queue.Queue(maxsize=queue_frames)
        self._out = bytearray()
        self._command = bytearray()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="slcan-adapter", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        return self.pty.path

    def send(self, msg: can.Message) -> None:
        """The frame as the adapter receives it from the bus: to the host if its channel is open."""
        if not self.is_open:
            return
        stamp = int(time.monotonic() * 1000) if self.timestamps else None
        try:
            self._frames.put_nowait(slcan_line(msg, stamp))
        except queue.Full:
            self.dropped += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.pty.close()

    # -- the adapter's thread -------------------------------------------------------------------------

    def _serve(self) -> None:
        fd = self.pty.master_fd
        while not self._stop.is_set():
            self._fill_output()
            want_write = [fd] if self._out else []
            try:
                readable, writable, _ = select.select([fd], want_write, [], 0.02)
            except (OSError, ValueError):
                return
            if readable:
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    data = b""
                except OSError:
                    return
                self._receive(data)
            if writable or self._out:
                self._flush()

    def _fill_output(self) -> None:
        while len(self._out) < 65536:
            try:
                self._out += self._frames.get_nowait()
            except queue.Empty:
                return
            self.delivered += 1

    def _flush(self) -> None:
        try:
            n = os.write(self.pty.master_fd, self._out)
        except BlockingIOError:
            return
        except OSError as err:
            log.warning("slcan pty write failed: %s", err)
            self._out.clear()
            return
        del self._out[:n]

    def _receive(self, data: bytes) -> None:
        for byte in data:
            if byte in b"\r\n":
                if byte == ord("\r") or self._command:
                    self._reply(self.handle_command(self._command.decode("ascii", "replace")))
                self._command.clear()
            elif len(self._command) < MAX_COMMAND_CHARS:
                self._command.append(byte)

    def _reply(self, answer: bytes) -> None:
        self._out += answer  # answers go ahead of queued frames that are not yet in _out
        self._flush()

    def handle_command(self, command: str) -> bytes:
        """One host command (without its CR) -> the adapter's answer."""
        if not command:
            return OK  # python-can sends an empty command for "no CAN FD data bitrate"
        code, arg = command[0], command[1:]
        if code in "OL":
            self.is_open, self.listen_only = True, code == "L"
            return OK
        if code == "C":
            self.is_open = False
            return OK
        if code in "Ss":
            if self.is_open or (code == "S" and arg not in tuple("012345678")):
                return ERROR
            self.bitrate_code = command
            return OK
        if code == "Y":  # CANable 2: CAN FD data bitrate; we carry classic frames only
            return OK if not self.is_open else ERROR
        if code == "V":
            return VERSION
        if code == "N":
            return SERIAL_NUMBER
        if code == "F":
            return b"F00\r"
        if code == "Z" and arg in ("0", "1"):
            self.timestamps = arg == "1"
            return OK
        if code in "tTrR":
            if not self.is_open or self.listen_only:
                return ERROR
            return b"z\r" if code in "tr" else b"Z\r"
        return ERROR
