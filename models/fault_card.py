"""The fault-risk model's card: definitions, threshold, held-out metrics and the history of versions."""

from __future__ import annotations

from pathlib import Path

from models.card import MODEL_VERSION, TARGETS, code_block, fault_mix, features_section, write_card
from models.dataset import Windows
from models.fault_events import FaultReport
from models.features import FEATURE_VERSION
from models.simulate import HOLDOUT_FLEET, TRAINING_FLEET
from models.train import FAULT_FOLDS, TREE_PARAMS, vehicle_of

PREVIOUS_FAULT_RESULTS = [  # earlier models, and how this one was chosen (models.fault_events; by hand)
    "Version 1 (feature version 1: no hour-long trends; threshold 0.97 from 4-fold out-of-fold predictions "
    "of 16 buses) was evaluated on 8 held-out bus-days of the training fleet (71 bus-hours): 7/10 onsets "
    "flagged [95 % CI 40-89 %], 1/3 injected; 1 false alarm = 1.41 per 100 bus-hours [0.04-7.87]: too few "
    "events to tell whether the target was met.",
    "The same version 1 model on version 2's hold-out fleet (same definitions, its own threshold 0.97): "
    "injected physical faults flagged 17/72 = 24 % [15-35 %], all onsets 33/107 = 31 % [23-40 %]; 7 false "
    "alarms in 446 bus-hours = 1.57 per 100 bus-hours [0.63-3.24]; 2.3 % of the time under alarm.",
    "Version 2 (feature version 2: 40 features, no cell spread near rest; trained on 40 bus-days with 4 "
    "faults a day, physical kinds 2 in 3; threshold 0.95 from 5-fold out-of-fold predictions) on its "
    "hold-out fleet (60 bus-days of `HOLD-nnn`, scenario seed 4 + 1000, 446 bus-hours): injected physical "
    "faults flagged 29/72 = 40 % [30-52 %] (cell imbalance growth 12/44, insulation degradation 12/14), all "
    "onsets 45/107 = 42 % [33-52 %]; 8 false alarms = 1.79 per 100 bus-hours [0.77-3.54]; 3.8 % of the time "
    "under alarm.",
    "That hold-out fleet was then examined to find why imbalance faults were missed, and served as the "
    "validation fleet while version 3 was developed: the near-rest spread features and the training fleet's "
    "size and fault rate were chosen on it and on out-of-fold predictions of the training fleet "
    "(hours-to-limit extrapolations of the spread, the temperature and the SOC were tried too and dropped: "
    "no gain). On it, at version 2's false-alarm count (8), version 3 flags 53/72 injected faults (version "
    "2: 29/72); at its own threshold, 63/72 with 12 false alarms, 9 of them at the top of a charge, where on "
    "about half the days of the training and validation fleets the BMS raises a cell-imbalance flag with no "
    "injected fault behind it (small differences in the cells' charge show large on the steep top of the LFP "
    "voltage curve) and the features do not tell which days. That fleet was retired; version 3's card "
    "used a fresh draw (scenario seed 4 + 2000).",
    "Version 3 (feature version 3, as now; target: any BMS fault onset within 30 minutes; threshold 0.85 "
    "from 5-fold out-of-fold predictions, where it gave 0.90 false alarms per 100 bus-hours) on its hold-out "
    "fleet (60 bus-days, scenario seed 4 + 2000, 437 bus-hours): injected physical faults flagged 46/55 = "
    "84 % [72-91 %], all onsets 81/96 = 84 % [76-90 %]; 10 false alarms = 2.29 per 100 bus-hours "
    "[1.10-4.20]: not met; 6.2 % of the time under alarm.",
    "Version 4 (this card) was developed on out-of-fold predictions of the training fleet and on both "
    "retired hold-out fleets, seed 4 + 1000 and seed 4 + 2000 (version 3's hold-out, retired once "
    "scored). Shipping the mean of the five fold models (the model that was thresholded) instead "
    "of the refit cut false alarms only as much as a higher threshold does (at 0.85: seed + 1000 54/72 "
    "injected flagged, 12 false alarms; seed + 2000 45/55, 9) and was dropped. Learning only the onsets "
    "with a developing (injected physical) fault behind them, not the routine flags, removed most false "
    "alarms at the top of a charge (version 3: 63/72 injected flagged with 12 false alarms; 46/55 with "
    "10): with the 5-fold threshold 0.83, seed + 1000 55/72 injected flagged, 5 false alarms; seed + 2000 "
    "41/55, 3. Down-weighting those onsets (weight 0.3) instead of dropping them kept 11-14 false alarms "
    "per fleet. With this target the out-of-fold false alarms ran above the refit's on both fleets (at "
    "0.5: 7-9 against 4 and 4), so the threshold now comes from 10 folds, whose models see 90 % of the "
    "buses: 0.74, where seed + 1000 gives 60/72 with 4 false alarms and seed + 2000 41/55 with 4 "
    "(together 0.91 per 100 bus-hours in 883). All onsets flagged fall (seed + 2000: 41/96), as the model "
    "no longer predicts the routine flags. Scored once on a fresh fleet (scenario seed 4 + 3000, 405 "
    "bus-hours), that model flagged 52/67 = 78 % [66-86 %] of the injected faults with 5 false alarms = "
    "1.24 per 100 bus-hours [0.40-2.88]; that fleet is retired too. Of its 8 false alarms on the two older "
    "fleets, 4 came in the last half hour of a bus-day on a bus with a developing insulation fault whose "
    "BMS onset fell after the recording ended: the truth labels such windows 'no fault within 30 minutes', "
    "though those minutes were never observed. The label is now unknown there (`models/dataset.py`), in "
    "training and in the counts; so counted, version 3 keeps its 10 false alarms on each older fleet (2.28 "
    "and 2.33 per 100 bus-hours) and the model before this change has 2 and 2 (60/72 and 41/55 flagged): "
    "the change is mostly in the counting. Trained on those labels (10-fold threshold 0.80): seed + 1000 "
    "56/72 injected flagged with 1 false alarm, seed + 2000 42/55 with 2. This card's hold-out fleet is a "
    "fresh draw (scenario seed 4 + 4000), simulated and scored once.",
]


def write_fault_card(
    out: Path,
    w: Windows,
    held_out: Windows,
    own_fleet: bool,
    report: FaultReport,
    oof: FaultReport | None,
    diffs: dict[str, float],
    seed: int,
) -> None:
    size = (out / "fault_risk.onnx").stat().st_size
    hold_days = sorted(set(held_out.group.tolist()))
    hold_buses = sorted(set(vehicle_of(held_out.group).tolist()))
    fleet, train_fleet = HOLDOUT_FLEET, TRAINING_FLEET
    n_days, n_buses = len(set(w.group.tolist())), len(set(vehicle_of(w.group).tolist()))
    data = [
        f"- Training: every bus of the training fleet, {n_days} bus-days ({n_buses} buses, "
        f"`{train_fleet.prefix}-nnn`), {fault_mix(train_fleet)}; scenarios as in the SOC models' cards; "
        "windows every 60 s.",
        (
            f"- Held out: the fault hold-out fleet, {len(hold_days)} bus-days of {len(hold_buses)} other "
            f"buses (`{fleet.prefix}-nnn`, scenario seed {seed} + {fleet.seed_offset}), from the same "
            "scenario machinery (`models/simulate.py`, `python -m simulator truth` per bus-day): "
            f"{fault_mix(fleet)} (cooling failure, cell imbalance growth, insulation degradation), sensor "
            "faults and GPS loss the rest. No window of a held-out bus reaches training or the threshold "
            "choice."
            if own_fleet
            else "- Held out: the training fleet's held-out buses (no hold-out fleet was simulated)."
        ),
        f"- Hyperparameters fixed, not tuned: HistGradientBoosting {TREE_PARAMS}, seed {seed}.",
        f"- Reproduce: `voltgate-train all --work DIR` (simulate --seed {seed}, then fit --seed {seed}).",
    ]
    definitions = [
        "Computed by `models/fault_events.py`; windows every 60 s.",
        "- **Scope**: windows with a fault label and no BMS fault flag or derate active (the BMS is alerting "
        "then). Bus-hours = in-scope windows x 60 s. A window in the last 30 minutes of a bus-day's "
        "recording with no onset before its end has no label: whether a fault came in its 30 minutes is not "
        "observed (the simulator's truth says no).",
        "- **Onset**: a BMS fault flag or the derate flag going from clear to set. It is *eligible* when at "
        "least one in-scope window of its bus-day lies 30 to 10 minutes before it (the bus was on with no "
        "fault active, so a warning >= 10 minutes ahead was possible), and *injected* when an injected "
        "physical fault is active at it; the others are plain physics (a cold or hot pack, a full or low "
        "pack) or the BMS reacting to a stuck or missing reading.",
        "- **Alarm**: an in-scope window with p >= the threshold. Window ROC-AUC and Brier score are against "
        "the model's target (an onset with a developing fault behind it within 30 minutes); the event rates "
        "count every onset.",
        "- **Flagged >= 10 min before the BMS fault**: an eligible onset with an alarm in at least one "
        "in-scope window from 30 to 10 minutes before it. Lead time: from the start of the alarm episode "
        "holding that first alarm to the onset.",
        "- **Alarm episode**: a bus-day's alarms in time order, merged while the next alarm follows within "
        "10 minutes of the previous one with no onset between them; an alarm that raises and stays up (or "
        "flickers for under 10 minutes) is one episode.",
        "- **False alarm**: an episode with no onset within 30 minutes after any of its windows. An alarm "
        "that rises long before a slow fault and stays up until it is therefore not false; the share of "
        "in-scope time under alarm is reported beside the rates, where a permanent alarm would show.",
        "- **Intervals** (95 %): Wilson score for the flagged shares, exact Poisson (Garwood) for false "
        "alarms per 100 bus-hours. The target counts as met with confidence only when the interval's upper "
        "end is within it.",
    ]
    threshold = [
        f"The alarm threshold (`alarm_probability` in the ONNX metadata) is the lowest on a fixed grid whose "
        f"false alarms stay within 1 per 100 bus-hours on out-of-fold predictions of the training fleet "
        f"({FAULT_FOLDS}-fold GroupKFold by bus: each bus scored by a model that never saw it). The hold-out "
        "fleet plays no part in it. Out of fold, at that threshold:",
        *code_block(oof.lines() if oof is not None else ["(no out-of-fold report)"]),
    ]
    sections = [
        ("Model", [
            f"`models/fault_risk.onnx`, version {MODEL_VERSION}, feature version {FEATURE_VERSION}, "
            f"{size / 1024:.0f} KiB; ONNX metadata carries feature names and units, thresholds and the "
            "target.",
            f"- Target: {TARGETS['fault_risk']}.",
            f"- Export check: largest |ONNX - scikit-learn| on the golden rows {diffs['fault_risk']:.1e} "
            "(`models/fault_risk.golden.json`).",
        ]),
        ("Data", data),
        ("Event-level metrics: definitions", definitions),
        ("Alarm threshold", threshold),
        ("Metrics on the held-out fleet", [*code_block(report.lines()), *report.verdict()]),
        ("History", PREVIOUS_FAULT_RESULTS),
        ("Calibration", ["![reliability](MODEL_CARD_fault_risk_reliability.png)"]),
        ("Features", features_section()),
    ]  # fmt: skip
    write_card(out / "MODEL_CARD_fault_risk.md", "Model card: fault_risk", sections)
