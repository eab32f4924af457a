"""The uplink's in-flight window (pure bookkeeping) and the reconnect backoff rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from agent.inflight import InFlightWindow
from agent.uplink import next_attempt


def test_a_message_stays_in_flight_until_every_seq_is_acknowledged() -> None:
    window = InFlightWindow(ack_timeout_s=10, ack_timeout_max_s=100)
    key = window.add("telemetry", [3, 4, 5, 7], now=0)
    assert window.rows == 4
    assert window.acknowledge([(0, 4)]) == [3, 4]
    assert window.rows == 2 and window.get(key) is not None
    assert window.acknowledge([(5, 5), (7, 9)]) == [5, 7]
    assert window.rows == 0 and window.get(key) is None and len(window) == 0


def test_acks_for_rows_not_in_flight_change_nothing() -> None:
    window = InFlightWindow(10, 100)
    window.add("telemetry", [10, 11], now=0)
    assert window.acknowledge([(0, 9), (12, 2**53 - 1)]) == []
    assert window.rows == 2


def test_resend_deadline_doubles_per_resend_up_to_the_cap() -> None:
    window = InFlightWindow(ack_timeout_s=10, ack_timeout_max_s=35)
    key = window.add("telemetry", [1, 2], now=0)
    assert window.due(9.9) == [] and window.due(10) == [key]
    deadlines = []
    now = 10.0
    for _ in range(4):
        window.resending(key, [1, 2], now)
        message = window.get(key)
        assert message is not None
        deadlines.append(message.resend_at - now)
        now = message.resend_at
    assert deadlines == [20, 35, 35, 35]


def test_resending_keeps_only_rows_still_in_the_buffer() -> None:
    window = InFlightWindow(10, 100)
    key = window.add("telemetry", [1, 2, 3], now=0)
    window.resending(key, [2, 3, 99], now=10)  # 1 was evicted; 99 is not this message's
    message = window.get(key)
    assert message is not None and message.seqs == {2, 3} and window.rows == 2
    window.resending(key, [], now=20)  # all gone
    assert window.get(key) is None and window.rows == 0


def test_alerts_are_due_first() -> None:
    window = InFlightWindow(10, 100)
    telemetry = window.add("telemetry", [1], now=0)
    alerts = window.add("alerts", [2], now=5)
    assert window.due(100) == [alerts, telemetry]
    assert window.next_resend_at() == 10


def test_gaps_skip_in_flight_spans_of_the_same_stream_only() -> None:
    window = InFlightWindow(10, 100)
    window.add("telemetry", [0, 1, 2], now=0)
    window.add("telemetry", [3, 4], now=0)  # adjacent: one span 0..4
    window.add("telemetry", [10, 12], now=0)
    window.add("alerts", [6], now=0)
    assert window.gaps("telemetry", 0, None) == [(5, 10), (13, None)]
    assert window.gaps("telemetry", 0, 11) == [(5, 10)]
    assert window.gaps("telemetry", 11, 20) == [(13, 20)]
    assert window.gaps("alerts", 0, None) == [(0, 6), (7, None)]


@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(1, 20)), max_size=8),
    st.integers(0, 250),
    st.one_of(st.none(), st.integers(0, 260)),
)
def test_gaps_and_spans_partition_the_interval(
    messages: list[tuple[int, int]], from_seq: int, before_seq: int | None
) -> None:
    window = InFlightWindow(10, 100)
    in_flight: set[int] = set()
    for first, size in messages:
        seqs = [s for s in range(first, first + size) if s not in in_flight]
        if seqs and not any(first <= s <= first + size for s in in_flight):
            window.add("telemetry", seqs, now=0)
            in_flight.update(range(min(seqs), max(seqs) + 1))
    top = before_seq if before_seq is not None else 300
    gaps = window.gaps("telemetry", from_seq, before_seq)
    covered = {s for low, high in gaps for s in range(low, high if high is not None else top)}
    expected = {s for s in range(from_seq, top) if s not in in_flight}
    assert covered == expected
    assert all(high is None or low < high for low, high in gaps)


def test_backoff_restarts_only_after_an_accepted_publish_and_no_refusal() -> None:
    attempt = 0
    for _ in range(5):  # connects fine, but the ACL refuses every publish
        attempt = next_attempt(attempt, accepted=False, refused=True)
    assert attempt == 5
    assert next_attempt(attempt, accepted=True, refused=True) == 6, "status accepted, telemetry refused"
    assert next_attempt(attempt, accepted=False, refused=False) == 6, "connect failed"
    assert next_attempt(attempt, accepted=True, refused=False) == 1


def test_the_floor_skips_what_was_found_sent_and_drops_back_when_rows_are_unsent_again() -> None:
    window = InFlightWindow(10, 100)
    first = window.add("alerts", [2], now=0)
    window.add("alerts", [5], now=0)
    assert window.gaps("alerts", 0, None) == [(0, 2), (3, 5), (6, None)]
    window.raise_floor("alerts", 3)  # the caller found nothing unsent in [0, 2)
    window.raise_floor("alerts", 6)  # ... nor in [3, 5)
    assert window.gaps("alerts", 0, None) == [(6, None)]
    assert window.gaps("telemetry", 0, None) == [(0, None)], "floors are per stream"
    window.remove(first)  # its publish failed: seq 2 is unsent again
    assert window.gaps("alerts", 0, None) == [(2, 5), (6, None)]


def test_a_live_ack_brings_backed_off_resends_forward() -> None:
    window = InFlightWindow(ack_timeout_s=10, ack_timeout_max_s=1000)
    fresh = window.add("telemetry", [1], now=0)
    stale = window.add("telemetry", [2], now=0)
    for now in (10.0, 30.0, 70.0, 150.0):  # the receiver was away: 20, 40, 80, 160 s
        window.resending(stale, [2], now)
    window.receiver_alive(now=200)
    stale_message, fresh_message = window.get(stale), window.get(fresh)
    assert stale_message is not None and stale_message.resend_at == 210
    assert fresh_message is not None and fresh_message.resend_at == 10, "never re-sent: unchanged"
    window.receiver_alive(now=205)
    assert stale_message.resend_at == 210, "further acks do not keep pushing it"
