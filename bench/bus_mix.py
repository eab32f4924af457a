"""The realistic bus of the agent benches: the simulator's frames at production cycle times, on a full bus.

    record_bus_mix(out, duration_s, start_utc)  →  a candump `.log` and what is in it (`MixCounts`)

The simulator's own recording (`voltgate-sim record`) sends each DBC message at its `GenMsgCycleTime`:
13 messages, 59 frames/s, every one of them a catalog frame. A gateway's bus carries far more, and most of
it is of no use to the sampling policy at that moment. This mix, per bus:

* The catalog's frames, as the simulator encodes them from its physics (a real block: the bus parked in the
  depot, then leaving on route 102), at the cycle times in `MIX_CYCLES_MS`: the battery management
  system's pack status (voltage, current, SOC) and the motor controller's status every 10 ms (the rate
  they feed the vehicle control unit's torque and power limiting), its limits and cell extremes every
  20 ms, the per-module frame every 10 ms (a module every 120 ms, 12 modules), temperatures and health
  every 100 ms; the J1939 parameter groups at their SAE J1939-71 default rates (CCVS1 100 ms, VDHR and
  AMB 1 s, as the DBC already has them). 462 frames/s; the sampling policy keeps a value of most signals
  at most once a second (`protocols/catalog.toml`), so nearly all of them carry nothing it needs then.
  These BMS and MCU cycle times are within the 10–100 ms band issue 12 names for production buses; they
  are this bench's choice inside it, not taken from one supplier's document.
* Every other controller on the bus (doors, HVAC, brakes, instruments, lighting): frames whose ids the
  catalog does not name, 8 bytes each, every 10 ms, enough of them that the bus carries
  `FULL_BUS_FRAMES_PER_S` frames a second — a fully loaded 500 kbit/s bus (an 11-bit frame with 8 data
  bytes is 111 bits plus stuffing, ~125 on average: 500,000 / 125 = 4,000). Buses are usually laid out
  for half that load; a full one is the upper end a gateway must carry, as issue 12 sizes it.

Within each 10 ms step the frames are stamped one after another across the step in arbitration order
(lower id first), as a busy bus serialises them, instead of all at one instant.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import can
from cantools.database.can import Database

from simulator.bus import BusConfig, BusSimulator
from simulator.emit_can import CanEmitter, load_bus_dbc

STEP_S = 0.010  # physics step = the shortest cycle time, so every message keeps its rate
FULL_BUS_FRAMES_PER_S = 4_000
OTHER_ECU_CYCLE_MS = 10
OTHER_ECU_FIRST_ID = 0x600
MIX_CYCLES_MS: Mapping[str, int] = {
    "BMS_PackStatus": 10,
    "BMS_Limits": 20,
    "BMS_CellVoltage": 20,
    "BMS_Temperature": 100,
    "BMS_Health": 100,
    "BMS_ModuleData": 10,
    "MCU_Status": 10,
    "MCU_Temperature": 100,
    "AUX_Power": 100,
    "CHG_Status": 100,
    "CCVS1": 100,  # SAE J1939-71 default
    "VDHR": 1000,  # SAE J1939-71 default
    "AMB": 1000,  # SAE J1939-71 default
}


@dataclass(frozen=True)
class MixCounts:
    frames: int
    catalog_frames: int
    other_ids: int  # distinct ids of the other controllers
    duration_s: float

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.duration_s

    @property
    def catalog_share(self) -> float:
        return self.catalog_frames / self.frames


def mix_database(cycles_ms: Mapping[str, int] = MIX_CYCLES_MS) -> Database:
    """The bus DBC with each message's cycle time set as the mix sends it."""
    db = load_bus_dbc()
    if set(cycles_ms) != {m.name for m in db.messages if m.cycle_time}:
        raise ValueError("the mix must give a cycle time to every cyclic message of the DBC")
    for name, cycle_ms in cycles_ms.items():
        if cycle_ms % round(STEP_S * 1000):
            raise ValueError(f"{name}: {cycle_ms} ms is not a multiple of the {STEP_S * 1000:g} ms step")
        db.get_message_by_name(name).cycle_time = cycle_ms
    return db


def other_ecu_ids(db: Database, frames_per_s: float) -> list[int]:
    """Standard ids the DBC does not name, enough at OTHER_ECU_CYCLE_MS to send `frames_per_s`."""
    count = max(0, round(frames_per_s * OTHER_ECU_CYCLE_MS / 1000))
    taken = {m.frame_id for m in db.messages}
    ids = [i for i in range(OTHER_ECU_FIRST_ID, 0x7FF) if i not in taken][:count]
    if len(ids) < count:
        raise ValueError(f"{frames_per_s:.0f} frames/s of other controllers needs more standard ids")
    return ids


def catalog_frames_per_s(cycles_ms: Mapping[str, int] = MIX_CYCLES_MS) -> float:
    return sum(1000 / cycle for cycle in cycles_ms.values())


def record_bus_mix(
    out: Path,
    duration_s: float,
    start_utc: datetime,
    *,
    bus_frames_per_s: float = FULL_BUS_FRAMES_PER_S,
    seed: int = 0,
) -> MixCounts:
    """Write `duration_s` of the mix from `start_utc` to `out` (a python-can log: `.log`, `.asc`, `.blf`)."""
    db = mix_database()
    emitter = CanEmitter(db=db, seed=seed)
    other_ids = other_ecu_ids(db, bus_frames_per_s - catalog_frames_per_s())
    other_every = round(OTHER_ECU_CYCLE_MS / (STEP_S * 1000))
    simulator = BusSimulator(BusConfig(seed=seed, start_utc=start_utc))
    writer = can.Logger(str(out))
    frames = catalog = 0
    try:
        for step, state in enumerate(simulator.run(duration_s, STEP_S)):
            due = [(m.arbitration_id, True, m) for m in emitter.frames(state)]
            if step % other_every == 0:
                due += [
                    (i, False, can.Message(arbitration_id=i, is_extended_id=False, data=_payload(i, step)))
                    for i in other_ids
                ]
            due.sort(key=lambda entry: entry[0])
            spacing = STEP_S / len(due) if due else 0.0
            for k, (_, _, message) in enumerate(due):
                message.timestamp = state.ts + k * spacing
                writer.on_message_received(message)
            frames += len(due)
            catalog += sum(known for _, known, _ in due)
    finally:
        writer.stop()
    return MixCounts(frames, catalog, len(other_ids), duration_s)


def _payload(frame_id: int, step: int) -> bytes:
    """Eight bytes that change from frame to frame, as a live controller's do (a counter, its id)."""
    return struct.pack("<IHH", step, frame_id, (step * 7 + frame_id) & 0xFFFF)
