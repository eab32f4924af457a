"""Samples laid out as blocks of one vehicle, UTC minute and message (all signals, delta-coded,
scaled where exact), and de-duplication within a group."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cloud.blocks import Blocks, blocks_of, unrepeated
from cloud.ingest import BatchMessage
from protocols.topics import TopicKind, telemetry_topic
from protocols.wire import Batch, SampleColumns, SampleRecord

T0_MS = int(datetime(2024, 5, 14, 10, 0, 30, tzinfo=UTC).timestamp() * 1000)
QUANTA = {"Vehicle.Speed": 0.25, "Vehicle.Soc": 0.1}


def message(vehicle: str, records: list[tuple[int, int, str, float]]) -> BatchMessage:
    batch = Batch(vehicle, samples=tuple(SampleRecord(*r) for r in records))
    return BatchMessage.of(
        telemetry_topic("f1", vehicle), "f1", TopicKind.TELEMETRY, batch, datetime.now(UTC), 1
    )


def layout(columns: SampleColumns) -> tuple[Blocks, dict[int, tuple[str, float | None]]]:
    """Blocks with ids 10 + k (scaled path) and 20 + k (float path) for signal index k."""
    names = columns.signals
    quantum = np.array([QUANTA.get(name, np.nan) for name in names], dtype=np.float64)
    k = np.arange(len(names), dtype=np.int32)
    ids = {10 + i: (name, QUANTA.get(name)) for i, name in enumerate(names)}
    ids |= {20 + i: (name, None) for i, name in enumerate(names)}
    return blocks_of(columns, quantum, 10 + k, 20 + k), ids


def decoded(blocks: Blocks, ids: dict[int, tuple[str, float | None]]) -> list[tuple[int, int, str, float]]:
    """The samples back, as the database decodes them (0009_signal_block_reads.sql, block_entries)."""
    out = []
    for b in range(len(blocks)):
        part = slice(int(blocks.start[b]), int(blocks.stop[b]))
        seq = blocks.seq_min[b] + np.cumsum(blocks.seq_delta[part].astype(np.int64))
        ts = blocks.minute_ms[b] + np.cumsum(blocks.ts_delta[part].astype(np.int64))
        steps = np.cumsum(blocks.step_delta[part].astype(np.int64))
        for s, t, k, sid, scaled, exact in zip(
            seq.tolist(), ts.tolist(), steps.tolist(), blocks.signal_id[part].tolist(),
            blocks.scaled[part].tolist(), blocks.exact[part].tolist(), strict=True,
        ):  # fmt: skip
            name, quantum = ids[sid]
            assert scaled == (quantum is not None)
            out.append((s, t, name, float(k) * quantum if quantum is not None else exact))
    return out


def test_a_block_holds_every_signal_of_one_minute_coded_as_differences() -> None:
    # GIVEN two signals sampled every 10 s for 90 s from 10:00:30, recorded out of order
    records = [
        (i * 2 + k, T0_MS + i * 10_000, name, i * 0.25 if k == 0 else i * 0.1)
        for i in range(9)
        for k, name in enumerate(("Vehicle.Speed", "Vehicle.Soc"))
    ]
    columns = message("bus-1", records[::-1]).samples

    blocks, ids = layout(columns)

    # THEN one block per minute (3 samples of each signal at 10:00, 6 at 10:01), each signal a run
    assert len(blocks) == 2
    assert (blocks.stop - blocks.start).tolist() == [6, 12]
    assert blocks.minute_ms.tolist() == [T0_MS - 30_000, T0_MS + 30_000]
    first = blocks.signal_id[: blocks.stop[0]].tolist()
    assert first == sorted(first)
    # within a run the differences are the sampling period and the seq step
    assert blocks.ts_delta[1:3].tolist() == [10_000, 10_000]
    assert blocks.seq_delta[1:3].tolist() == [2, 2]
    assert sorted(decoded(blocks, ids)) == sorted(records)
    # and the rollup statistics per block and signal are exact
    speed = columns.signals.index("Vehicle.Speed")
    at = (blocks.stat_block == 1) & (blocks.stat_signal == speed)
    values = [r[3] for r in records if r[2] == "Vehicle.Speed" and r[1] >= T0_MS + 30_000]
    assert (blocks.stat_n[at][0], blocks.stat_total[at][0]) == (6, sum(values))
    assert (blocks.stat_min[at][0], blocks.stat_max[at][0]) == (min(values), max(values))


def test_a_value_not_exactly_steps_of_its_quantum_takes_the_float_path() -> None:
    # 0.1 steps of Soc: 0.30000000000000004 (3 * 0.1 in floats) is steps, 0.3 itself is not;
    # -0.0 keeps its sign; a signal without a quantum is always exact
    records = [
        (0, T0_MS, "Vehicle.Soc", 0.30000000000000004),
        (1, T0_MS + 1, "Vehicle.Soc", 0.3),
        (2, T0_MS + 2, "Vehicle.Speed", -0.0),
        (3, T0_MS + 3, "Vehicle.Speed", 2.0**40),
        (4, T0_MS + 4, "Other", 1.5),
    ]
    blocks, ids = layout(message("bus-1", records).samples)

    by_seq = {r[0]: r for r in decoded(blocks, ids)}
    scaled = dict(zip(
        (blocks.seq_min[0] + np.cumsum(blocks.seq_delta)).tolist(), blocks.scaled.tolist(), strict=True
    ))  # fmt: skip
    assert scaled == {0: True, 1: False, 2: False, 3: False, 4: False}
    for seq, ts, name, value in records:
        assert by_seq[seq][:3] == (seq, ts, name)
        assert np.float64(by_seq[seq][3]).tobytes() == np.float64(value).tobytes()


def test_a_block_spans_less_than_2_to_the_30_seqs() -> None:
    records = [(0, T0_MS, "Vehicle.Speed", 1.0), (3 << 30, T0_MS + 1, "Vehicle.Speed", 2.0)]
    blocks, ids = layout(message("bus-1", records).samples)
    assert len(blocks) == 2
    assert sorted(decoded(blocks, ids)) == records


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5_000),
            st.integers(0, 180_000),
            st.sampled_from(["Vehicle.Speed", "Vehicle.Soc", "Other"]),
            st.one_of(
                st.integers(-1000, 1000).map(lambda k: k * 0.25),
                st.floats(allow_nan=False, allow_infinity=False),
            ),
        ),
        max_size=60,
        unique_by=lambda r: (r[0], r[1]),
    )
)
def test_blocks_give_back_every_sample_exactly(records: list[tuple[int, int, str, float]]) -> None:
    records = [(s, T0_MS + t, name, v) for s, t, name, v in records]
    blocks, ids = layout(message("bus-1", records).samples)
    back = decoded(blocks, ids)
    key = lambda r: (r[0], r[1])  # noqa: E731
    assert [(r[:3], np.float64(r[3]).tobytes()) for r in sorted(back, key=key)] == [
        (r[:3], np.float64(r[3]).tobytes()) for r in sorted(records, key=key)
    ]
    for b in range(len(blocks)):
        part = slice(int(blocks.start[b]), int(blocks.stop[b]))
        assert len({int(t) // 60_000 for t in blocks.minute_ms[b] + np.cumsum(blocks.ts_delta[part])}) == 1


def test_blocks_of_no_samples_is_empty() -> None:
    assert len(layout(SampleColumns.of([]))[0]) == 0


def test_a_group_keeps_each_vehicle_sample_once_even_when_re_sent_in_another_batch() -> None:
    # GIVEN a batch, then the agent re-sending part of it inside a larger batch, and another bus
    first = message("bus-1", [(s, T0_MS + s * 1000, "Vehicle.Speed", 1.0) for s in range(0, 60)])
    resent = message("bus-1", [(s, T0_MS + s * 1000, "Vehicle.Speed", 1.0) for s in range(30, 90)])
    other_bus = message("bus-2", [(s, T0_MS + s * 1000, "Vehicle.Speed", 1.0) for s in range(0, 60)])
    # the same seq with another ts is another sample (the agent lost its buffer and started again)
    restarted = message("bus-1", [(s, T0_MS + 86_400_000 + s, "Vehicle.Speed", 1.0) for s in range(0, 5)])

    kept = unrepeated([first, resent, other_bus, restarted])

    assert [len(c) for c in kept] == [60, 30, 60, 5]
    assert kept[1].seq.tolist() == list(range(60, 90))
    assert kept[0] is first.samples and kept[2] is other_bus.samples  # untouched, not copied
