"""Sources with real components: python-can's virtual bus, SLCAN over a pseudo-terminal read by
python-can's `slcan` interface through pyserial, recorded logs, and NMEA over a pseudo-terminal.

"Unplugging" closes the pty and removes the symlink the source was configured with (as udev
removes /dev/serial/by-id/... when an adapter goes); "plugging back" points the symlink at a new
pty. Waits are bounded and say what they waited for; nothing asserts on durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import threading
import time
import tty
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import can
import pytest
from prometheus_client import REGISTRY

from agent.decode import Decoder
from agent.logfiles import FrameLog
from agent.records import Frame, Sample
from agent.settings import CanBusSettings, GpsSettings, ReplaySettings
from agent.sources import SourceError
from agent.sources.can import CanSource, catalog_filters
from agent.sources.gps import FixSampler, GpsSource
from agent.sources.replay import ReplayError, ReplayFrameQueue, ReplaySource, TallyQueue
from protocols.catalog import DEFAULT_CATALOG, load_catalog
from protocols.nmea import NmeaReader

CATALOG = load_catalog(DEFAULT_CATALOG)
DB = CATALOG.database
NMEA = Path(__file__).parents[1] / "data" / "nmea"
WAIT_S = 15.0
T0 = 1_750_000_000.0
FAST_BACKOFF = {"backoff_initial_s": 0.05, "backoff_max_s": 0.2}

T = TypeVar("T")


async def eventually(condition: Callable[[], bool], what: str, limit_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up after {limit_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def take(queue: asyncio.Queue[T], count: int, what: str, limit_s: float = WAIT_S) -> list[T]:
    items: list[T] = []
    try:
        async with asyncio.timeout(limit_s):
            while len(items) < count:
                items.append(await queue.get())
    except TimeoutError:
        pytest.fail(f"gave up after {limit_s:.0f} s waiting for {what}: got {len(items)} of {count}")
    return items


@asynccontextmanager
async def running(*stages: tuple[str, Callable[[], object]]) -> AsyncIterator[None]:
    """Run stage coroutines as named tasks; cancel them (and surface their errors) at the end."""
    tasks = [asyncio.create_task(start(), name=name) for name, start in stages]  # type: ignore[arg-type]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [
            r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        ]
        assert not errors, errors


def encode(message_name: str, values: dict[str, float]) -> tuple[int, bool, bytes]:
    message = DB.get_message_by_name(message_name)
    return message.frame_id, bool(message.is_extended_frame), bytes(message.encode(values, strict=True))


SPEED = {"ParkingBrakeSwitch": 0, "WheelBasedVehicleSpeed": 36.5, "BrakeSwitch": 0}
MOTOR = {"MotorSpeed": 1200, "MotorTorque": -50, "MotorPower": 12.5, "DriveState": 2}


# --------------------------------------------------------------------------- virtual bus


async def test_virtual_bus_frames_keep_sender_timestamps_and_decode() -> None:
    channel = f"vg-{uuid.uuid4().hex}"
    settings = CanBusSettings(name="traction", interface="virtual", channel=channel, bitrate=None)
    source = CanSource(settings, CATALOG)
    decoder = Decoder(CATALOG, bus="traction")
    frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=1000)
    samples: asyncio.Queue[Sample] = asyncio.Queue(maxsize=1000)
    # a tee: the test sees the frames, the decoder gets them too
    decoder_inbox: asyncio.Queue[Frame] = asyncio.Queue(maxsize=1000)
    seen: list[Frame] = []

    async def tee() -> None:
        while True:
            frame = await frames.get()
            seen.append(frame)
            await decoder_inbox.put(frame)

    sender = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    try:
        async with running(
            ("can", lambda: source.run(frames)),
            ("tee", tee),
            ("decode", lambda: decoder.run(decoder_inbox, samples)),
        ):
            await eventually(lambda: source.connected, "the CAN source to open the virtual bus")
            sent: list[tuple[float, int, bytes]] = []
            for i, (name, values) in enumerate([("CCVS1", SPEED), ("MCU_Status", MOTOR)]):
                frame_id, extended, data = encode(name, values)
                ts = T0 + i * 0.1
                sender.send(
                    can.Message(timestamp=ts, arbitration_id=frame_id, is_extended_id=extended, data=data)
                )
                sent.append((ts, frame_id, data))
            # not in the catalog: the catalog's filters keep it out
            sender.send(
                can.Message(timestamp=T0 + 1, arbitration_id=0x7AB, is_extended_id=False, data=b"\x01")
            )
            got = await take(samples, 2 + 4, "the decoded samples of two frames")
            await eventually(lambda: inbox_empty(decoder_inbox), "the decoder to take every frame")
    finally:
        sender.shutdown()
    assert [(f.ts, f.arbitration_id, f.data) for f in seen] == sent
    assert seen[0].is_extended and not seen[1].is_extended and all(f.bus == "traction" for f in seen)
    by_name = {s.signal: s for s in got}
    assert by_name["Vehicle.Speed"].value == 36.5 and by_name["Vehicle.Speed"].ts == T0
    assert by_name["Vehicle.Powertrain.ElectricMotor.Torque"].value == -50.0
    assert by_name["Vehicle.Powertrain.ElectricMotor.Torque"].ts == T0 + 0.1
    assert source.stats.frames == 2 and source.stats.dropped == 0
    assert decoder.stats.frames_in == 2 and decoder.stats.skipped["unknown_id"] == 0


def inbox_empty(queue: asyncio.Queue[Frame]) -> bool:
    return queue.empty()


async def test_full_outbox_drops_are_counted() -> None:
    channel = f"vg-{uuid.uuid4().hex}"
    settings = CanBusSettings(name="aux", interface="virtual", channel=channel, bitrate=None)
    source = CanSource(settings, CATALOG)
    frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=3)  # nobody reads it
    sender = can.Bus(interface="virtual", channel=channel)
    try:
        async with running(("can", lambda: source.run(frames))):
            await eventually(lambda: source.connected, "the CAN source to open the virtual bus")
            frame_id, extended, data = encode("CCVS1", SPEED)
            for _ in range(10):
                sender.send(can.Message(arbitration_id=frame_id, is_extended_id=extended, data=data))
            await eventually(lambda: source.stats.frames + source.stats.dropped == 10, "10 frames handled")
    finally:
        sender.shutdown()
    assert (source.stats.frames, source.stats.dropped) == (3, 7)


def test_catalog_filters_have_the_extended_flag_right() -> None:
    filters = {f["can_id"]: f for f in catalog_filters(CATALOG)}
    # J1939 by PGN: priority and source address masked (CCVS1, PGN 0xFEF1, PDU2)
    assert filters[0x00FEF100] == {"can_id": 0x00FEF100, "can_mask": 0x03FFFF00, "extended": True}
    # the transport protocol (PDU1: the destination masked too) and DM1, for the catalog's [[dm1]] entries
    assert filters[0x00EC0000] == {"can_id": 0x00EC0000, "can_mask": 0x03FF0000, "extended": True}
    assert filters[0x00EB0000] == {"can_id": 0x00EB0000, "can_mask": 0x03FF0000, "extended": True}
    assert filters[0x00FECA00] == {"can_id": 0x00FECA00, "can_mask": 0x03FFFF00, "extended": True}
    assert filters[0x100] == {"can_id": 0x100, "can_mask": 0x7FF, "extended": False}
    standard = {frame_id for frame_id, spec in CATALOG.frames().items() if not spec.message.is_extended_frame}
    assert {f for f, spec in filters.items() if not spec["extended"]} == standard
    assert len(filters) == len(CATALOG.frames()) + 3


async def test_unknown_interface_is_one_clear_error() -> None:
    settings = CanBusSettings(name="x", interface="no-such-interface", channel="can0")
    with pytest.raises(SourceError, match=r"CAN bus x: python-can refuses interface 'no-such-interface'"):
        async with asyncio.timeout(WAIT_S):
            await CanSource(settings, CATALOG).run(asyncio.Queue())


async def test_stop_ends_run() -> None:
    settings = CanBusSettings(name="x", interface="virtual", channel=f"vg-{uuid.uuid4().hex}", bitrate=None)
    source = CanSource(settings, CATALOG)
    task = asyncio.create_task(source.run(asyncio.Queue(maxsize=10)), name="can")
    await eventually(lambda: source.connected, "the CAN source to open the virtual bus")
    source.stop()
    async with asyncio.timeout(WAIT_S):
        await task


# --------------------------------------------------------------------------- SLCAN over a pty


class LawicelAdapter:
    """The adapter end of an SLCAN link, on the master side of a pty: acknowledges every command
    (S6, O, C, ...) with CR, as a Lawicel/CANable adapter does, and sends frames as t/T/r lines."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.commands: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lawicel-adapter", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        pending = b""
        while not self._closed.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 256)
            except OSError:
                return
            pending += chunk
            while b"\r" in pending:
                command, pending = pending.split(b"\r", 1)
                self.commands.append(command.decode("ascii", "replace"))
                self._write(b"\r")

    def _write(self, data: bytes) -> None:
        with self._lock:
            if not self._closed.is_set():
                os.write(self.master, data)

    def send(self, arbitration_id: int, data: bytes, *, extended: bool = False, remote: bool = False) -> None:
        kind = ("R" if remote else "T") if extended else ("r" if remote else "t")
        ident = f"{arbitration_id:08X}" if extended else f"{arbitration_id:03X}"
        payload = "" if remote else data.hex().upper()
        self._write(f"{kind}{ident}{len(data)}{payload}\r".encode("ascii"))

    def unplug(self) -> None:
        with self._lock:
            self._closed.set()
        self._thread.join(timeout=WAIT_S)
        os.close(self.master)
        os.close(self.slave)


def plug(link: Path, adapter_path: str) -> None:
    link.unlink(missing_ok=True)
    link.symlink_to(adapter_path)


async def test_slcan_over_pty_reads_frames_and_reconnects_after_unplug(tmp_path: Path) -> None:
    link = tmp_path / "ttyCAN0"
    adapter = LawicelAdapter()
    plug(link, adapter.path)
    settings = CanBusSettings(
        name="chassis", interface="slcan", channel=str(link), options={"sleep_after_open": 0.0}
    )
    source = CanSource(settings, CATALOG, poll_timeout_s=0.1, **FAST_BACKOFF)
    frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=100)
    unknown_before = REGISTRY.get_sample_value("voltgate_can_frames_unknown_total", {"bus": "chassis"}) or 0.0
    try:
        async with running(("can", lambda: source.run(frames))):
            await eventually(lambda: "O" in adapter.commands, "python-can to open the SLCAN channel ('O')")
            assert adapter.commands.index("S6") < adapter.commands.index("O")  # 500 kbit/s, then open
            before = time.time()
            frame_id, extended, data = encode("CCVS1", SPEED)
            adapter.send(frame_id, data, extended=extended)
            frame_id2, _, data2 = encode("MCU_Status", MOTOR)
            adapter.send(frame_id2, data2)
            adapter.send(0x7AB, b"\x00\x01")  # not in the catalog: filtered
            adapter.send(frame_id2, b"", remote=True)
            first = await take(frames, 3, "three frames over SLCAN")
            assert [(f.arbitration_id, f.is_extended, f.data, f.is_remote) for f in first] == [
                (frame_id, True, data, False),
                (frame_id2, False, data2, False),
                (frame_id2, False, b"", True),
            ]
            # python-can's slcan stamps frames on receipt (the protocol carries no time)
            assert all(before <= f.ts <= time.time() for f in first)
            # the id the catalog does not know never became a frame, and is counted as an unknown id
            assert source.unknown_ids_filtered == 1
            unknown = REGISTRY.get_sample_value("voltgate_can_frames_unknown_total", {"bus": "chassis"})
            assert unknown == unknown_before + 1

            # WHEN the adapter is unplugged THEN the link is lost and retried
            adapter.unplug()
            link.unlink()
            await eventually(lambda: source.stats.failures >= 2, "the lost link and a failed reopen")
            assert not source.connected
            # WHEN it is plugged back (a new pty behind the same name) THEN the source reconnects
            adapter = LawicelAdapter()
            plug(link, adapter.path)
            await eventually(lambda: source.stats.reconnects == 1, "the source to reconnect")
            await eventually(lambda: "O" in adapter.commands, "the reopened channel")
            adapter.send(frame_id, data, extended=True)
            (again,) = await take(frames, 1, "a frame after the reconnect")
            assert again.data == data
            assert source.stats.connects == 2 and source.connected
    finally:
        adapter.unplug()


async def test_socketcan_when_vcan_exists() -> None:
    try:
        bus = can.Bus(interface="socketcan", channel="vcan0")
    except (OSError, can.CanError, ImportError) as err:
        pytest.skip(f"no SocketCAN vcan0 on this machine ({err}); runs on a gateway or a dev box with vcan")
    bus.shutdown()
    settings = CanBusSettings(name="vcan", interface="socketcan", channel="vcan0", bitrate=None)
    source = CanSource(settings, CATALOG)
    frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=10)
    sender = can.Bus(interface="socketcan", channel="vcan0", receive_own_messages=False)
    try:
        async with running(("can", lambda: source.run(frames))):
            await eventually(lambda: source.connected, "the socketcan bus")
            frame_id, extended, data = encode("CCVS1", SPEED)
            sender.send(can.Message(arbitration_id=frame_id, is_extended_id=extended, data=data))
            (frame,) = await take(frames, 1, "a frame from vcan0")
            assert frame.data == data and frame.is_extended
    finally:
        sender.shutdown()


# --------------------------------------------------------------------------- replay


def write_log(path: Path, count: int, step_s: float = 0.01) -> list[tuple[float, int, bool, bytes]]:
    records = []
    with can.Logger(path) as logger:
        for i in range(count):
            name, values = ("CCVS1", SPEED) if i % 2 == 0 else ("MCU_Status", MOTOR)
            frame_id, extended, data = encode(name, values)
            ts = T0 + i * step_s
            logger.on_message_received(
                can.Message(
                    timestamp=ts, arbitration_id=frame_id, is_extended_id=extended, data=data, channel=0
                )
            )
            records.append((ts, frame_id, extended, data))
    return records


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".mf4", ".csv"])
async def test_replay_as_fast_as_possible_keeps_recorded_timestamps(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"day{suffix}"
    records = write_log(path, 3000)
    source = ReplaySource(ReplaySettings(name="day", path=path, speed="max"), CATALOG, chunk_frames=256)
    chunks: asyncio.Queue[list[Frame]] = asyncio.Queue(maxsize=2)  # smaller than the log: backpressure
    got: list[Frame] = []

    async def consume() -> None:
        while True:
            chunk = await chunks.get()
            assert 0 < len(chunk) <= 256  # chunks of the configured size at most
            got.extend(chunk)

    async with running(("consume", consume)):
        async with asyncio.timeout(WAIT_S):
            await source.run(chunks)
        await eventually(lambda: len(got) == len(records), "every replayed frame")
    assert source.finished and source.stats.frames == len(records) and source.stats.dropped == 0
    assert [(f.arbitration_id, f.is_extended, f.data) for f in got] == [r[1:] for r in records]
    assert [f.ts for f in got] == pytest.approx([r[0] for r in records], abs=1e-5)  # .asc keeps 6 decimals


async def test_replay_at_recorded_speed_paces_by_the_recorded_deltas(tmp_path: Path) -> None:
    path = tmp_path / "short.log"
    records = write_log(path, 21, step_s=0.02)  # 0.4 s of bus time
    source = ReplaySource(ReplaySettings(path=path, speed="recorded"), CATALOG)
    chunks: asyncio.Queue[list[Frame]] = asyncio.Queue(maxsize=100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(WAIT_S):
        await source.run(chunks)
    elapsed = loop.time() - started
    played = [frame for _ in range(chunks.qsize()) for frame in chunks.get_nowait()]
    assert [f.ts for f in played] == pytest.approx([r[0] for r in records])
    # sleeping by the deltas can only take longer than the recording, never less
    assert elapsed >= (records[-1][0] - records[0][0]) - 0.01


async def test_replay_skips_a_malformed_line_and_plays_every_good_frame(tmp_path: Path) -> None:
    path = tmp_path / "day.log"
    records = write_log(path, 300)
    lines = path.read_text().splitlines(keepends=True)
    lines.insert(100, "(1700000000.5) can0 18FEF100#0102ZZ\n")  # GIVEN one line that is no frame
    path.write_text("".join(lines))
    source = ReplaySource(ReplaySettings(name="day", path=path, speed="max"), CATALOG, chunk_frames=64)
    chunks: asyncio.Queue[list[Frame]] = asyncio.Queue()
    async with asyncio.timeout(WAIT_S):
        await source.run(chunks)
    # THEN the replay goes on past it: every good frame, in order, and the end of the log
    got = [frame for _ in range(chunks.qsize()) for frame in chunks.get_nowait()]
    assert source.finished and len(got) == len(records)
    assert [(f.arbitration_id, f.is_extended, f.data) for f in got] == [r[1:] for r in records]


async def test_replay_of_a_missing_log_says_so(tmp_path: Path) -> None:
    source = ReplaySource(ReplaySettings(path=tmp_path / "nope.log"), CATALOG)
    with pytest.raises(ReplayError, match=r"nope\.log: cannot open the log"):
        await source.run(asyncio.Queue())


async def test_replay_then_decode_through_the_same_stage(tmp_path: Path) -> None:
    path = tmp_path / "day.log"
    write_log(path, 200, step_s=0.1)
    source = ReplaySource(ReplaySettings(path=path), CATALOG)
    decoder = Decoder(CATALOG, bus="replay")
    frames: asyncio.Queue[list[Frame]] = asyncio.Queue(maxsize=2)
    samples: asyncio.Queue[Sample] = asyncio.Queue(maxsize=10_000)
    async with running(("decode", lambda: decoder.run(frames, samples))):
        async with asyncio.timeout(WAIT_S):
            await source.run(frames)
            await frames.join()  # the decoder marks each chunk done: the stage is drained
    stats = decoder.stats  # a repeated frame whose values the policy refuses is not decoded (not due)
    assert stats.frames_in == 200 and stats.frames_decoded + stats.frames_not_due == 200
    kept = [samples.get_nowait() for _ in range(samples.qsize())]
    speed = [s for s in kept if s.signal == "Vehicle.Speed"]
    assert speed[0].ts == T0 and len(speed) >= 1  # constant speed: first value, then heartbeats only
    assert stats.frames_not_due > 0  # constant values: the repeats are refused without decoding


def write_varied_log(path: Path, count: int) -> None:
    """Frames whose values move (several samples per frame), then a still tail (frames with none)."""
    with can.Logger(path) as logger:
        for i in range(count):
            moving = i < count - 40
            if i % 2 == 0:
                name, values = "CCVS1", {**SPEED, "WheelBasedVehicleSpeed": (i % 90) if moving else 10.0}
            else:
                power = float(i % 50) if moving else 1.0
                name, values = (
                    "MCU_Status",
                    {**MOTOR, "MotorSpeed": 40 * (i % 60) if moving else 0, "MotorPower": power},
                )
            frame_id, extended, data = encode(name, values)
            message = can.Message(
                timestamp=T0 + i * 0.5, arbitration_id=frame_id, is_extended_id=extended, data=data, channel=0
            )
            logger.on_message_received(message)


async def test_replay_position_never_claims_a_frame_whose_samples_are_not_all_taken(tmp_path: Path) -> None:
    path = tmp_path / "varied.log"
    write_varied_log(path, 400)
    reference = Decoder(CATALOG)
    with FrameLog(path, "replay") as log_frames:
        per_frame = [len(reference.process(frame)) for frame in log_frames]
    assert max(per_frame) >= 2 and per_frame[-30:] == [0] * 30  # frames with several samples, and none
    # GIVEN a sample queue so small that the decoder waits in the middle of a frame's samples
    samples: TallyQueue[Sample] = TallyQueue(maxsize=2)
    frames = ReplayFrameQueue(16, samples)
    source = ReplaySource(ReplaySettings(path=path), CATALOG, chunk_frames=32)
    decoder = Decoder(CATALOG, bus="replay")
    rng = random.Random(5)
    position, checks = 0, 0
    async with running(
        ("decode", lambda: decoder.run(frames, samples)), ("replay", lambda: source.run(frames))
    ):
        async with asyncio.timeout(WAIT_S):
            while position < len(per_frame):
                # WHEN a committer takes a few samples at a time and asks how far they reach
                for _ in range(min(rng.randint(0, 3), samples.qsize())):
                    samples.get_nowait()
                position = frames.position_within(samples.taken_total) or position
                # THEN every sample of every frame before the position was taken
                assert sum(per_frame[:position]) <= samples.taken_total
                checks += 1
                await asyncio.sleep(0)
    # AND the position reaches the end, the still tail included
    assert position == len(per_frame) and samples.taken_total == sum(per_frame) and checks > 100


async def test_replay_position_freezes_when_the_decoder_is_cancelled_mid_frame() -> None:
    samples: TallyQueue[Sample] = TallyQueue(maxsize=1)
    frames = ReplayFrameQueue(4, samples)
    decoder = Decoder(CATALOG, bus="replay")
    frame_id, extended, data = encode("MCU_Status", MOTOR)  # four signals: four samples
    frames.put_nowait([Frame("replay", T0, frame_id, extended, data)])
    task = asyncio.create_task(decoder.run(frames, samples))
    await eventually(lambda: samples.full(), "the decoder to wait with a frame half-delivered")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # the frame's other samples never reached the queue: its position must not count as stored
    assert frames.position_within(10**9) is None


async def test_replay_position_counts_the_frames_of_a_chunk_cut_short_whose_samples_were_all_put() -> None:
    # GIVEN a chunk of two frames of four samples each, and room for five samples
    samples: TallyQueue[Sample] = TallyQueue(maxsize=5)
    frames = ReplayFrameQueue(4, samples, start_position=10)
    decoder = Decoder(CATALOG, bus="replay")
    frame_id, extended, data = encode("MCU_Status", MOTOR)  # four signals: four samples
    later = T0 + 100  # past every heartbeat: all four kept again
    frames.put_nowait(
        [Frame("replay", T0, frame_id, extended, data), Frame("replay", later, frame_id, extended, data)]
    )
    assert frames.qsize() == 1 and frames.frames_queued == 2  # one chunk, two frames (the depth metric)
    task = asyncio.create_task(decoder.run(frames, samples))
    await eventually(lambda: samples.full(), "the decoder to wait with the second frame half-delivered")
    assert frames.frames_queued == 0
    # WHEN the decoder is cancelled there
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    # THEN the position claims the first frame once its four samples are taken, never the second
    assert frames.position_within(3) is None
    assert frames.position_within(4) == 11
    assert frames.position_within(10**9) is None


async def test_a_resumed_replay_warms_up_on_the_stored_frames_and_plays_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "day.log"
    records = write_log(path, 300)
    warmed: list[Frame] = []
    source = ReplaySource(
        ReplaySettings(path=path), CATALOG, chunk_frames=64, start_position=170, warm_up=warmed.extend
    )
    chunks: asyncio.Queue[list[Frame]] = asyncio.Queue()
    async with asyncio.timeout(WAIT_S):
        await source.run(chunks)
    played = [frame for _ in range(chunks.qsize()) for frame in chunks.get_nowait()]
    assert [f.ts for f in warmed] == pytest.approx([r[0] for r in records[:170]])
    assert [f.ts for f in played] == pytest.approx([r[0] for r in records[170:]])
    assert source.finished and source.stats.frames == 130


# --------------------------------------------------------------------------- GPS over a pty


class NmeaPort:
    """The receiver end of a GPS serial line, on the master side of a pty."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)

    def write(self, data: bytes, chunk: int = 97) -> None:
        for start in range(0, len(data), chunk):  # odd chunks: sentences split across reads
            os.write(self.master, data[start : start + chunk])

    def unplug(self) -> None:
        os.close(self.master)
        os.close(self.slave)


def expected_samples(stream: bytes) -> list[Sample]:
    """The reference: the same bytes through the NMEA reader and sampler directly."""
    reader, sampler = NmeaReader(), FixSampler(CATALOG)
    return [s for fix in reader.feed(stream) for s in sampler.samples(fix)]


async def test_gps_from_pty_with_garbage_and_port_removal(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    port = NmeaPort()
    plug(link, port.path)
    source = GpsSource(GpsSettings(enabled=True, port=str(link), baudrate=9600), CATALOG, **FAST_BACKOFF)
    samples: asyncio.Queue[Sample] = asyncio.Queue(maxsize=10_000)
    garbage = b"\x00\xff\xb5\x62\x01\x07garbage\r\n$GPRMC,12*00\r\n"  # binary, a UBX header, a bad sentence
    rmc_before = gps_metric("voltgate_gps_sentences_total", result="RMC")
    stream = garbage + (NMEA / "neo-m8n.log").read_bytes()
    expected = expected_samples(stream)
    assert len(expected) >= 5  # a receiver standing still: the policy keeps few
    try:
        async with running(("gps", lambda: source.run(samples))):
            await eventually(lambda: source.stats.connects == 1, "the GPS port to open")
            await asyncio.to_thread(port.write, stream)
            got = await take(samples, len(expected), "the samples of the neo-m8n capture")
            assert got == expected
            assert all(s.ts > 1.4e9 for s in got)  # GPS time of the 2015 capture, not the gateway clock
            assert source.nmea_counts["garbage"] >= 1 and source.nmea_counts["RMC"] > 20
            assert source.sampler.stats.fixes > 20
            # AND what was accepted and skipped is exported, by sentence type and by reason
            assert gps_metric("voltgate_gps_sentences_total", result="RMC") - rmc_before >= 20
            for reason in ("garbage", "checksum"):
                assert source.nmea_counts[reason] >= 1
                assert gps_metric("voltgate_gps_sentences_total", result=reason) >= source.nmea_counts[reason]
            assert gps_metric("voltgate_source_up", source="gps") == 1.0

            # WHEN the receiver disappears THEN the port is retried; WHEN it is back THEN data flows
            port.unplug()
            link.unlink()
            await eventually(lambda: source.stats.failures >= 2, "the lost port and a failed reopen")
            assert gps_metric("voltgate_source_up", source="gps") == 0.0
            port = NmeaPort()
            plug(link, port.path)
            await eventually(lambda: source.stats.reconnects == 1, "the GPS port to reopen")
            later = (NMEA / "mt3339.log").read_bytes()  # a later capture (2015-04)
            await asyncio.to_thread(port.write, later)
            more = await take(samples, 1, "samples after the reconnect")
            assert more[0].ts > got[-1].ts
            assert gps_metric("voltgate_source_up", source="gps") == 1.0
    finally:
        port.unplug()
    assert gps_metric("voltgate_source_up", source="gps") == 0.0  # stopped


def gps_metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0
