"""The per-signal sampling policy of the catalog (minimum interval, deadband, heartbeat), on source
timestamps. Pure state, shared by the CAN decode stage and the GPS source (see `protocols/catalog.toml`)."""

from __future__ import annotations

from protocols.catalog import SamplingPolicy


class SignalSampler:
    """The sampling policy of one signal, on source timestamps.

    A value is kept when it is the first, when `max_interval_s` has passed since the last kept
    value (heartbeat), or when `min_interval_s` has passed AND it moved at least `deadband` from
    the last kept value. A timestamp earlier than the last kept one (a source clock reset, a
    second log replayed) restarts the signal: that value is kept.
    """

    __slots__ = ("_last_ts", "_last_value", "policy")

    def __init__(self, policy: SamplingPolicy) -> None:
        self.policy = policy
        self._last_ts: float | None = None
        self._last_value = 0.0

    def offer(self, ts: float, value: float) -> bool:
        last_ts = self._last_ts
        if last_ts is not None and ts >= last_ts:
            elapsed = ts - last_ts
            policy = self.policy
            if elapsed < policy.max_interval_s and (
                elapsed < policy.min_interval_s or abs(value - self._last_value) < policy.deadband
            ):
                return False
        self._last_ts = ts
        self._last_value = value
        return True
