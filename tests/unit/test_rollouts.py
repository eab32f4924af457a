"""The rollout state machine and who gets a release (cloud.rollouts), as pure functions."""

from __future__ import annotations

import dataclasses

import pytest

from cloud.fleet_store import merge_settings
from cloud.rollouts import Rollout, RolloutState, advance, desired_rollout, pick_canaries, targets
from protocols.fleet_control import Outcome, OutcomeState, SettingValue

FLEET = ("bus-1", "bus-2", "bus-3", "bus-4")


def _rollout(revision: int = 10, state: RolloutState = RolloutState.CANARY, **kw: object) -> Rollout:
    fields: dict[str, object] = {
        "rollout_id": f"soc_drop-r{revision}", "release_id": 1, "fleet": "f", "name": "soc_drop",
        "revision": revision, "canaries": ("bus-1", "bus-2"), "percent": None, "state": state, **kw,
    }  # fmt: skip
    return Rollout(**fields)  # type: ignore[arg-type]


def _ok(revision: int = 10) -> Outcome:
    return Outcome(revision, OutcomeState.APPLIED, "", "ab" * 32)


def test_canaries_then_everyone_then_done() -> None:
    rollout = _rollout()
    assert targets(rollout, FLEET) == {"bus-1", "bus-2"}
    # one canary applied: still canary
    assert advance(rollout, FLEET, {"bus-1": _ok()}) == (RolloutState.CANARY, None)
    # an outcome about an older release does not count
    assert advance(rollout, FLEET, {"bus-1": _ok(), "bus-2": _ok(9)})[0] is RolloutState.CANARY
    # both canaries applied: rolling, to the whole fleet
    state, _ = advance(rollout, FLEET, {"bus-1": _ok(), "bus-2": _ok()})
    assert state is RolloutState.ROLLING
    rolling = dataclasses.replace(rollout, state=state)
    assert targets(rolling, FLEET) == set(FLEET)
    assert advance(rolling, FLEET, dict.fromkeys(FLEET[:3], _ok()))[0] is RolloutState.ROLLING
    assert advance(rolling, FLEET, dict.fromkeys(FLEET, _ok())) == (RolloutState.DONE, None)


@pytest.mark.parametrize("failure", [OutcomeState.REFUSED, OutcomeState.ROLLED_BACK])
def test_a_canary_failure_halts_with_the_reason(failure: OutcomeState) -> None:
    outcomes = {"bus-1": _ok(), "bus-2": Outcome(10, failure, "model did not load", "cd" * 32)}
    state, reason = advance(_rollout(), FLEET, outcomes)
    assert state is RolloutState.HALTED
    assert reason == f"canary bus-2 reported {failure.value}: model did not load"
    assert targets(dataclasses.replace(_rollout(), state=state), FLEET) == frozenset()
    # a halted rollout stays halted
    assert advance(dataclasses.replace(_rollout(), state=state, reason=reason), FLEET, {})[0] is state


def test_every_canary_at_once_goes_straight_to_done() -> None:
    rollout = _rollout(canaries=FLEET)
    assert advance(rollout, FLEET, dict.fromkeys(FLEET, _ok())) == (RolloutState.DONE, None)


def test_a_bus_runs_the_newest_rollout_whose_stage_includes_it() -> None:
    old = _rollout(5, RolloutState.DONE)
    new = _rollout(10, RolloutState.CANARY, canaries=("bus-1",))
    assert desired_rollout([old, new], "bus-1", FLEET) is new
    assert desired_rollout([old, new], "bus-3", FLEET) is old
    halted = dataclasses.replace(new, state=RolloutState.HALTED)
    assert desired_rollout([old, halted], "bus-1", FLEET) is old
    assert desired_rollout([halted], "bus-1", FLEET) is None


def test_a_percentage_picks_at_least_one_canary_and_rounds_up() -> None:
    assert len(pick_canaries(FLEET, 1, "r1")) == 1
    assert len(pick_canaries(FLEET, 50, "r1")) == 2
    assert len(pick_canaries(FLEET, 51, "r1")) == 3
    assert pick_canaries(FLEET, 100, "r1") == FLEET
    assert pick_canaries(FLEET, 25, "r1") == pick_canaries(list(reversed(FLEET)), 25, "r1")
    # different rollouts do not always start at the same bus
    assert len({pick_canaries(FLEET, 25, f"r{n}") for n in range(20)}) > 1
    with pytest.raises(ValueError, match="percentage"):
        pick_canaries(FLEET, 0, "r1")


def test_a_bus_setting_goes_over_the_fleet_setting_key_by_key() -> None:
    fleet: dict[str, dict[str, SettingValue]] = {
        "uplink": {"batch_max_age_s": 5.0, "batch_max_samples": 100},
        "alerts": {"low_soc_pct": 20},
    }
    own: dict[str, dict[str, SettingValue]] = {"uplink": {"batch_max_age_s": 2.0}}
    assert merge_settings(fleet, own) == {
        "uplink": {"batch_max_age_s": 2.0, "batch_max_samples": 100},
        "alerts": {"low_soc_pct": 20},
    }
    assert fleet["uplink"]["batch_max_age_s"] == 5.0  # not changed in place
