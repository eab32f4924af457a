"""The GPS receiver: NMEA 0183 over a serial port → catalog samples.

Bytes are read with pyserial in a worker thread and fed to `protocols.nmea.NmeaReader`, which
assembles fixes and counts what it skips (`nmea_counts`); after each read the new counts go to
`voltgate_gps_sentences{result}` (sentence type accepted, or the reason a line was skipped), and the
port's state to `voltgate_source_up{source="gps"}`. The first skip of each kind is logged once (a
warning, or a note for well-formed sentences we do not use), with its reason and the start of the
line; later ones are only counted. Sentences without a checksum are accepted only when the
source's `accept_missing_checksum` says so. Each valid fix becomes samples through the catalog's
GPS entries and their sampling policy, timestamped with the fix time (GPS time, never the
gateway's clock). A port that fails or disappears is reopened with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass

import serial

from agent import metrics
from agent.records import Sample
from agent.settings import GpsSettings
from agent.sources import Link, SourceStats, SourceStoppedError, offer
from protocols.catalog import Catalog, SignalSampler, SignalSpec
from protocols.nmea import GpsFix, NmeaReader

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 0.2  # a blocked read returns this often, so stop() is noticed
MAX_READ_BYTES = 4096
PORT_ERRORS: tuple[type[BaseException], ...] = (serial.SerialException, OSError)
# well-formed sentences the gateway does not use (GSV, TXT, maker-specific $P...): a note, not a warning
_EXPECTED_SKIPS = frozenset({"unsupported", "proprietary"})


@dataclass(slots=True)
class FixStats:
    fixes: int = 0  # fixes the NMEA reader completed
    invalid: int = 0  # of those, fixes without a valid position (skipped)
    samples_kept: int = 0
    samples_suppressed: int = 0  # by the sampling policy


class FixSampler:
    """Pure: `GpsFix` → kept `Sample`s for the catalog's GPS entries, with their sampling policy."""

    def __init__(self, catalog: Catalog) -> None:
        self.stats = FixStats()
        self._entries: tuple[tuple[SignalSpec, SignalSampler], ...] = tuple(
            (spec, SignalSampler(spec.policy)) for spec in catalog.gps_signals()
        )

    def samples(self, fix: GpsFix) -> list[Sample]:
        self.stats.fixes += 1
        if not fix.valid:
            self.stats.invalid += 1
            return []
        kept: list[Sample] = []
        for spec, sampler in self._entries:
            raw = getattr(fix, spec.gps_field)
            if raw is None:
                continue
            value = float(raw)
            if not math.isfinite(value):
                continue
            if sampler.offer(fix.ts, value):
                kept.append(Sample(fix.ts, spec.name, value, spec.priority))
            else:
                self.stats.samples_suppressed += 1
        self.stats.samples_kept += len(kept)
        return kept


class GpsSource:
    def __init__(
        self,
        settings: GpsSettings,
        catalog: Catalog,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.stats = SourceStats()  # `frames` counts samples handed on
        self.sampler = FixSampler(catalog)
        self.reader = NmeaReader(checksum_required=not settings.accept_missing_checksum)
        self._reported: set[str] = set()  # skip kinds already logged
        self._exported: dict[str, int] = {}  # reader counts already added to voltgate_gps_sentences
        self._stopping = asyncio.Event()
        self._link = Link(
            f"GPS {settings.port}",
            self.stats,
            PORT_ERRORS,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            stopping=self._stopping,
            label="gps",
        )

    @property
    def nmea_counts(self) -> dict[str, int]:
        """Accepted sentences by type and skipped lines by kind (see `NmeaReader`)."""
        return self.reader.counts

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, outbox: asyncio.Queue[Sample]) -> None:
        """Until `stop()` (or cancellation): read the receiver, hand samples to `outbox`."""
        try:
            while not self._stopping.is_set():
                try:
                    port = await self._link.connect(self._open)
                except SourceStoppedError:
                    return
                try:
                    failure = await self._pump(port, outbox)
                finally:
                    await asyncio.to_thread(_close_quietly, port)
                if failure is not None:
                    self._link.lost(failure)
        finally:
            self._link.closed()  # stopped or cancelled: the link is closed
        for fix in self.reader.flush():
            self._hand_on(fix, outbox)
        self._export_counts()

    def _open(self) -> serial.Serial:
        return serial.Serial(self.settings.port, self.settings.baudrate, timeout=READ_TIMEOUT_S)

    async def _pump(self, port: serial.Serial, outbox: asyncio.Queue[Sample]) -> BaseException | None:
        while not self._stopping.is_set():
            try:
                data = await asyncio.to_thread(_read_available, port)
            except PORT_ERRORS as err:
                return err
            for fix in self.reader.feed(data):
                self._hand_on(fix, outbox)
            self._export_counts()
        return None

    def _export_counts(self) -> None:
        """Add what the NMEA reader counted since the last call to `voltgate_gps_sentences`."""
        for result, count in self.reader.counts.items():
            new = count - self._exported.get(result, 0)
            if new:
                metrics.GPS_SENTENCES.labels(result).inc(new)
                self._exported[result] = count
        for kind, detail in self.reader.first_skips.items():
            if kind not in self._reported:
                self._reported.add(kind)
                log.log(
                    logging.INFO if kind in _EXPECTED_SKIPS else logging.WARNING,
                    "GPS %s: skipping %s lines (first: %s); further ones are only counted in %s",
                    self.settings.port,
                    kind,
                    detail,
                    "voltgate_gps_sentences",
                )

    def _hand_on(self, fix: GpsFix, outbox: asyncio.Queue[Sample]) -> None:
        for sample in self.sampler.samples(fix):
            offer(outbox, sample, self.stats)


def _read_available(port: serial.Serial) -> bytes:
    """Blocks until at least one byte or the read timeout; then returns what has arrived."""
    return bytes(port.read(min(max(port.in_waiting, 1), MAX_READ_BYTES)))


def _close_quietly(port: serial.Serial) -> None:
    with contextlib.suppress(*PORT_ERRORS):
        port.close()
