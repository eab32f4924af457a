"""Samples laid out as blocks of one vehicle, UTC minute and message (all signals, delta-coded,
scaled where exact), and de-duplication within a group."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt
from hypothesis import given
from hypothesis import strategies as st

from cloud.blocks import CODE_FIELDS, HEAD_BYTES, RUN_CODE, Blocks, GroupSamples, blocks_of, unrepeated
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


def layout(*messages: SampleColumns) -> tuple[Blocks, dict[int, tuple[str, float | None]]]:
    """Blocks of a group of messages, with ids 10 + k (scaled path) and 20 + k (float path) for the
    k-th distinct signal name."""
    names = sorted({name for m in messages for name in m.signals})
    ids = {10 + i: (name, QUANTA.get(name)) for i, name in enumerate(names)}
    ids |= {20 + i: (name, None) for i, name in enumerate(names)}

    def table(
        wanted: Sequence[str],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
        k = np.array([names.index(name) for name in wanted], dtype=np.int32)
        quantum = np.array([QUANTA.get(name, np.nan) for name in wanted], dtype=np.float64)
        return quantum, 10 + k, 20 + k

    return blocks_of(GroupSamples.of(messages, table)), ids


def fields(blocks: Blocks, b: int) -> npt.NDArray[np.int64]:
    """Block b's samples as four rows (signal id, seq offset left after ranking, ms since the minute,
    steps), decoded as block_entries() in 0013_run_code.sql does: the head's widths and tick, each
    field's byte planes, zigzag, then each run from its head and its differences."""
    n = int(blocks.stop[b] - blocks.start[b])
    runs = int(blocks.signal_count[b])
    signals = blocks.signal_list[int(blocks.signal_count[:b].sum()) :][:runs].astype(np.int64)
    at = int(blocks.code_size[:b].sum())
    code = blocks.code[at : at + int(blocks.code_size[b])].astype(np.int64)
    assert code[0] & RUN_CODE
    width, tick = (code[:CODE_FIELDS] & ~RUN_CODE).tolist(), int(code[6] | code[7] << 8)
    entries = [runs, runs, runs, n, n - runs, n - runs]
    assert len(code) == HEAD_BYTES + sum(w * e for w, e in zip(width, entries, strict=True))
    plane = HEAD_BYTES
    field: list[npt.NDArray[np.int64]] = []
    for w, count in zip(width, entries, strict=True):
        out = np.zeros(count, dtype=np.int64)
        for k in range(w):
            out |= code[plane : plane + count] << (8 * k)
            plane += count
        field.append((out >> 1) ^ -(out & 1))
    counts, first_ticks, base, seq_left, ts_steps, steps_steps = field
    run = np.repeat(np.arange(runs), counts)
    first = np.ones(n, dtype=bool)
    first[1:] = run[1:] != run[:-1]
    ts_diff, step_diff = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    ts_diff[first], step_diff[first] = first_ticks, base
    ts_diff[~first], step_diff[~first] = ts_steps, steps_steps
    run_start = np.flatnonzero(first)
    ts = np.cumsum(ts_diff) - np.repeat(np.cumsum(ts_diff)[run_start] - ts_diff[run_start], counts)
    steps = np.cumsum(step_diff) - np.repeat(np.cumsum(step_diff)[run_start] - step_diff[run_start], counts)
    return np.stack([signals[run], seq_left, ts * tick, steps])


def decoded(blocks: Blocks, ids: dict[int, tuple[str, float | None]]) -> list[tuple[int, int, str, float]]:
    """The samples back, as the database decodes them (block_entries)."""
    out = []
    for b in range(len(blocks)):
        signal, seq_left, ts_offset, steps = fields(blocks, b)
        n = len(signal)
        ts = blocks.minute_ms[b] + ts_offset
        rank = np.empty(n, dtype=np.int64)
        rank[np.lexsort((np.arange(n), ts))] = np.arange(n)
        seq = blocks.seq_min[b] + rank + seq_left
        part = slice(int(blocks.start[b]), int(blocks.stop[b]))
        for s, t, k, sid, scaled, exact in zip(
            seq.tolist(), ts.tolist(), steps.tolist(), signal.tolist(),
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
    assert blocks.signal_count.tolist() == [2, 2] and blocks.signal_list[:2].tolist() == [10, 11]
    signal, seq_left, ts_offset, _ = fields(blocks, 0)
    assert signal.tolist() == [10, 10, 10, 11, 11, 11]
    assert blocks.message.tolist() == [0, 0]
    # each run's samples 10 s apart; seq follows time (the two samples of one instant ranked by
    # position: Soc's seq is 1 above Speed's, 1 below its rank)
    assert ts_offset.tolist() == [30_000, 40_000, 50_000] * 2
    assert set(seq_left.tolist()) <= {-1, 0, 1}
    assert sorted(decoded(blocks, ids)) == sorted(records)
    # and the rollup statistics per block and signal are exact
    at = (blocks.stat_block == 1) & (blocks.stat_signal == 20 + 1)  # Vehicle.Speed's float-path id
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
    order = np.lexsort((np.arange(len(records)), [r[1] for r in records], [r[0] for r in records]))
    assert blocks.scaled.tolist() == [True, False, False, False, False]  # seq order here is block order
    assert order.tolist() == [0, 1, 2, 3, 4]
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
        assert len({int(t) // 60_000 for t in blocks.minute_ms[b] + fields(blocks, b)[2]}) == 1


def test_a_group_is_laid_out_at_once_one_block_per_message_and_minute() -> None:
    # GIVEN two buses' messages in one group, both within one minute, sharing seq numbers
    one = message("bus-1", [(s, T0_MS + s, "Vehicle.Speed", s * 0.25) for s in range(5)]).samples
    two = message("bus-2", [(s, T0_MS + s, "Vehicle.Soc", s * 1.5) for s in range(3)]).samples

    blocks, ids = layout(one, two)

    assert blocks.message.tolist() == [0, 1]
    assert (blocks.stop - blocks.start).tolist() == [5, 3]
    back = decoded(blocks, ids)
    assert back[:5] == [(s, T0_MS + s, "Vehicle.Speed", s * 0.25) for s in range(5)]
    assert back[5:] == [(s, T0_MS + s, "Vehicle.Soc", s * 1.5) for s in range(3)]


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
