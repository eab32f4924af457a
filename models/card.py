"""Model cards: Markdown beside the .onnx file, with PNG plots when matplotlib is installed."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from models.evaluate import ReliabilityBin
from models.features import FEATURE_VERSION, FEATURES, FloatArray
from models.simulate import PHYSICAL_FAULT_KINDS, Fleet

log = logging.getLogger("models.card")
MODEL_VERSION = "4"
TARGETS = {
    "soc_drop": "reported SOC now minus reported SOC 60 minutes later, in percentage points "
    "(x usable kWh / 100 for kWh); for windows where the bus moved in the last 15 minutes",
    "large_drop": "probability that the reported SOC drops by at least {thr:g} pp in the next 60 minutes",
    "fault_risk": "probability that a BMS fault flag or the derate flag goes from clear to set "
    "within the next 30 minutes because of a developing fault (cooling failure, cell imbalance growth, "
    "insulation degradation), not from plain physics such as a full or cold pack; for windows with no BMS "
    "fault or derate active",
}


def fault_mix(fleet: Fleet) -> str:
    """How a fleet draws its faults, for the cards: "6 Poisson faults a day, physical kinds drawn 3 in 4"."""
    share = Fraction(sum(k in PHYSICAL_FAULT_KINDS for k in fleet.fault_kinds), len(fleet.fault_kinds))
    return (
        f"{fleet.faults_per_day:g} Poisson faults a day, physical kinds drawn "
        f"{share.numerator} in {share.denominator}"
    )


def write_card(path: Path, title: str, sections: list[tuple[str, list[str]]]) -> None:
    lines = [f"# {title}", ""]
    for head, body in sections:
        lines += [f"## {head}", "", *body, ""]
    path.write_text("\n".join(lines))


def features_section() -> list[str]:
    out = [
        f"Feature version {FEATURE_VERSION}, computed by `models/features.py` (the agent runs the same code "
        "on its sample stream). Windows end now and reach back 1, 15 or 60 minutes (the hour from thinned "
        "histories of a few signals); signals are step functions (last value held) after the catalog's "
        "sampling policy. NaN when a signal is missing.",
        "",
        "| # | feature | unit |",
        "|---|---|---|",
    ]
    out += [f"| {i} | `{n}` | {u} |" for i, (n, u) in enumerate(FEATURES)]
    return out


def code_block(lines: list[str]) -> list[str]:
    return ["```", *lines, "```"]


def _plt() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: model cards without plots")
        return None
    return plt


def plot_reliability(path: Path, bins: list[ReliabilityBin], title: str) -> bool:
    plt = _plt()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect")
    ax.plot([b.mean_predicted for b in bins], [b.observed_rate for b in bins], "o-", label="model")
    for b in bins:
        ax.annotate(
            str(b.count),
            (b.mean_predicted, b.observed_rate),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_predicted_vs_actual(path: Path, y: FloatArray, preds: dict[str, FloatArray], title: str) -> bool:
    plt = _plt()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5, 4.5))
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    ax.plot([lo, hi], [lo, hi], "--", color="grey", lw=1)
    for name, p in preds.items():
        ax.scatter(y, p, s=4, alpha=0.4, label=name)
    ax.set_xlabel("actual SOC drop next 60 min (pp)")
    ax.set_ylabel("predicted (pp)")
    ax.set_ylim(lo - 5, hi + 5)
    ax.set_title(title, fontsize=10)
    ax.legend(markerscale=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
