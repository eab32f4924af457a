"""Rollouts of a signed model to a fleet, as pure functions: who gets a release, and when a rollout moves on.

A rollout starts at `canary`: only its canary buses get the release (named at push time, or a percentage of
the fleet's buses picked by `pick_canaries`). When every canary reports the release `applied`, it is
`rolling`: every bus of the fleet gets it (a bus added to the fleet later too); when every bus has applied
it, `done`. A canary reporting `refused` or `rolled_back` halts it (`halted`, with the reason): nothing more
is published for it, so the buses that are not canaries never get it. A newer rollout of the same model
name halts an unfinished older one ("superseded"). A failure reported by a bus that is not a canary, once
rolling, does not halt it (the release is already published to everyone); `voltgate-cloud fleet status`
and the API show it.

Which release a bus should run for a model name (`desired_rollout`): the newest rollout of that name whose
current stage includes the bus. A halted rollout includes nobody, so a bus whose canary release was halted
is offered the previous release again (with its old, lower revision: the bus has moved past it and ignores
it; a bus installed afresh runs it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from protocols.fleet_control import ModelRelease, Outcome, OutcomeState, encode_model_release
from protocols.topics import ID_MAX_LEN, downlink_model_topic


class RolloutState(StrEnum):
    CANARY = "canary"
    ROLLING = "rolling"
    DONE = "done"
    HALTED = "halted"


ACTIVE_STATES = frozenset({RolloutState.CANARY, RolloutState.ROLLING})


@dataclass(frozen=True, slots=True)
class Rollout:
    rollout_id: str
    release_id: int
    fleet: str
    name: str
    revision: int
    canaries: tuple[str, ...]
    percent: float | None
    state: RolloutState
    reason: str | None = None


def rollout_id_for(name: str, revision: int) -> str:
    """The rollout's id, sent with the release and reported back: unique, as the revision is."""
    return f"{name}-r{revision}"


def pick_canaries(vehicles: Collection[str], percent: float, salt: str) -> tuple[str, ...]:
    """`percent` of the fleet's buses (rounded up, at least one), in an order fixed by `salt` (the rollout):
    the same buses are not always the first to take a new model."""
    if not 0 < percent <= 100:
        raise ValueError(f"a canary percentage is in (0, 100], not {percent}")
    ranked = sorted(vehicles, key=lambda v: hashlib.sha256(f"{salt}\n{v}".encode()).digest())
    count = min(len(ranked), max(1, math.ceil(len(ranked) * percent / 100)))
    return tuple(sorted(ranked[:count]))


def targets(rollout: Rollout, fleet_vehicles: Collection[str]) -> frozenset[str]:
    """The buses the rollout's current stage publishes to."""
    if rollout.state is RolloutState.CANARY:
        return frozenset(rollout.canaries)
    if rollout.state in (RolloutState.ROLLING, RolloutState.DONE):
        return frozenset(fleet_vehicles) | frozenset(rollout.canaries)
    return frozenset()


def desired_rollout(
    rollouts: Sequence[Rollout], vehicle: str, fleet_vehicles: Collection[str]
) -> Rollout | None:
    """The newest of one model name's `rollouts` whose stage includes `vehicle` (None: no release for it)."""
    for rollout in sorted(rollouts, key=lambda r: r.revision, reverse=True):
        if vehicle in targets(rollout, fleet_vehicles):
            return rollout
    return None


def _outcome_of(rollout: Rollout, outcome: Outcome | None) -> Outcome | None:
    """The bus's outcome for this rollout's release; None when it has not reported on it (yet)."""
    return outcome if outcome is not None and outcome.revision == rollout.revision else None


def advance(
    rollout: Rollout, fleet_vehicles: Collection[str], outcomes: Mapping[str, Outcome | None]
) -> tuple[RolloutState, str | None]:
    """The rollout's next state and reason, given each bus's reported outcome for the rollout's model name."""
    if rollout.state not in ACTIVE_STATES:
        return rollout.state, rollout.reason
    everyone = set(fleet_vehicles) | set(rollout.canaries)
    state = rollout.state
    if state is RolloutState.CANARY:
        for canary in sorted(rollout.canaries):
            outcome = _outcome_of(rollout, outcomes.get(canary))
            if outcome is not None and outcome.state is not OutcomeState.APPLIED:
                detail = f": {outcome.detail}" if outcome.detail else ""
                return RolloutState.HALTED, f"canary {canary} reported {outcome.state.value}{detail}"
        if not all(_applied(rollout, outcomes.get(c)) for c in rollout.canaries):
            return state, rollout.reason
        state = RolloutState.ROLLING
    if all(_applied(rollout, outcomes.get(v)) for v in everyone):
        return RolloutState.DONE, None
    return state, None


def _applied(rollout: Rollout, outcome: Outcome | None) -> bool:
    found = _outcome_of(rollout, outcome)
    return found is not None and found.state is OutcomeState.APPLIED


def packet_bytes(release: ModelRelease, fleet: str) -> int:
    """An upper bound of a release's PUBLISH packet: payload, topic (for the longest vehicle id), headers."""
    topic = downlink_model_topic(fleet, "v" * ID_MAX_LEN, release.name)
    return len(encode_model_release(release)) + len(topic.encode()) + 64
