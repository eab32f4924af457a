"""A CAN serial port with garbage on it: every valid frame arrives, each bad line is counted, the link
stays up.

The adapter end is another process writing to the master side of a pty (as a misbehaving adapter or a
noisy USB link would); the agent's `CanSource` reads the slave side through `TolerantSlcanBus`.
"""

from __future__ import annotations

import ast
import asyncio
import os
import subprocess
import sys
import tty
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from agent.records import Frame
from agent.settings import CanBusSettings
from agent.sources.can import CanSource
from protocols.catalog import DEFAULT_CATALOG, load_catalog

CATALOG = load_catalog(DEFAULT_CATALOG)
WAIT_S = 30.0
FRAMES = 600

# The adapter process: FRAMES valid frames (id and data say which), and between them, in turn, one kind of
# garbage. It prints how many pieces of each kind it wrote, then drains what the bus sends it.
WRITER = r"""
import os, random, sys, time
fd, count = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(9)
NOT_ENDS = [b for b in range(256) if b not in (13, 7)]  # random bytes without CR or BEL glue onto a frame
def frame(i):
    if i % 3 == 0:
        return b"T%08X8%s\r" % (0x18FEF100 + i % 7, i.to_bytes(8, "big").hex().upper().encode())
    return b"t%03X4%s\r" % (0x100 + i % 50, i.to_bytes(4, "big").hex().upper().encode())
kinds = {
    "random": lambda: bytes(rng.choice(NOT_ENDS) for _ in range(rng.randint(1, 40))),
    "truncated": lambda: b"t12\r",
    "bad_hex": lambda: b"t1232ZZ11\r",
    "bad_id": lambda: b"tXYZ2AABB\r",
    "overlong": lambda: b"t" + b"1" * 500 + b"\r",
    "no_cr": lambda: b"T1234",
    "not_ascii": lambda: b"\xff\xfe\x80\r",
    "bel": lambda: b"\x07",
}
names = list(kinds)
written = dict.fromkeys(names, 0)
out = bytearray()
for i in range(count):
    kind = names[i % len(names)]
    out += kinds[kind]()
    written[kind] += 1
    out += frame(i)
for start in range(0, len(out), 97):  # odd-sized writes, so lines straddle reads
    os.write(fd, out[start:start + 97])
    if start % (97 * 20) == 0:
        time.sleep(0.002)
print(repr(written), flush=True)
"""


def frame_number(frame: Frame) -> int:
    return int.from_bytes(frame.data, "big")


async def eventually(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"gave up after {WAIT_S:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_garbage_costs_only_the_bad_lines_each_counted() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    settings = CanBusSettings(
        name="garbled",
        interface="slcan",
        channel=os.ttyname(slave),
        hardware_filters=False,  # every id, catalog or not
        options={"sleep_after_open": 0.0},
    )
    source = CanSource(settings, CATALOG, poll_timeout_s=0.1, backoff_initial_s=0.05, backoff_max_s=0.2)
    frames: asyncio.Queue[Frame] = asyncio.Queue()
    bad_hex_before = metric("voltgate_can_serial_lines_rejected_total", bus="garbled", reason="bad_hex")
    task = asyncio.create_task(source.run(frames), name="source:garbled")
    writer: subprocess.Popen[str] | None = None
    try:
        await eventually(lambda: source.connected, "the SLCAN link to open")
        assert metric("voltgate_source_up", source="garbled") == 1.0
        # GIVEN an adapter process that interleaves FRAMES valid frames with eight kinds of garbage
        writer = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block; waiting is in a thread)
            [sys.executable, "-c", WRITER, str(master), str(FRAMES)],
            pass_fds=(master,),
            stdout=subprocess.PIPE,
            text=True,
        )
        # WHEN the source reads it
        await eventually(lambda: frames.qsize() >= FRAMES, f"{FRAMES} valid frames")
        out, _ = await asyncio.to_thread(writer.communicate, timeout=WAIT_S)
        written: dict[str, int] = ast.literal_eval(out)
        received = [frames.get_nowait() for _ in range(frames.qsize())]
        # THEN every valid frame arrived, once, in order
        assert [frame_number(f) for f in received] == list(range(FRAMES))
        # AND the link never dropped
        assert source.stats.failures == 0 and source.stats.connects == 1 and source.connected
        # AND each bad line is counted by reason (random garbage may split into several bad lines)
        rejected = source.line_stats.snapshot()
        per_kind = FRAMES // len(written)
        assert rejected["bad_hex"] == written["bad_hex"] == per_kind
        assert rejected["overlong"] == written["overlong"]
        assert rejected["adapter_error"] >= written["bel"]
        assert rejected["not_ascii"] >= written["not_ascii"]
        assert rejected["bad_id"] >= written["bad_id"] + written["no_cr"]  # "T1234t1004..." has a bad id
        assert rejected["bad_length"] >= written["truncated"]
        assert sum(rejected.values()) >= sum(written.values())
        assert (
            metric("voltgate_can_serial_lines_rejected_total", bus="garbled", reason="bad_hex")
            - bad_hex_before
            == rejected["bad_hex"]
        )
    finally:
        if writer is not None and writer.poll() is None:
            writer.kill()
            writer.wait()
        source.stop()
        await asyncio.wait_for(task, WAIT_S)
        os.close(master)
        os.close(slave)
    assert metric("voltgate_source_up", source="garbled") == 0.0
