"""The LFP pack, its BMS and the depot charger, exercised directly."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.battery import (
    CELL_CAPACITY_AH,
    INSULATION_WARN_OHM_PER_V,
    N_CELLS,
    OCV_CELL_V,
    OCV_SOC_PCT,
    PACK_NOMINAL_V,
    BatteryPack,
    Bms,
    DepotCharger,
    PackParams,
    ocv_cell_v,
)
from simulator.state import ChargingState, ContactorState


def _pack(soc: float = 50.0, temp_c: float = 25.0, seed: int = 1, **kw: float) -> tuple[BatteryPack, Bms]:
    params = PackParams(**kw)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    return BatteryPack(params, rng, soc, temp_c), Bms(params, rng, soc)


def test_ocv_curve_is_monotonic_and_lfp_shaped() -> None:
    assert np.all(np.diff(OCV_SOC_PCT) > 0)
    assert np.all(np.diff(OCV_CELL_V) > 0)
    fine = ocv_cell_v(np.linspace(0.0, 100.0, 1001))
    assert np.all(np.diff(fine) >= 0)
    assert float(ocv_cell_v(50.0)) == pytest.approx(3.27, abs=0.05)  # the LFP plateau
    assert float(ocv_cell_v(90.0)) - float(ocv_cell_v(20.0)) < 0.15


def test_pack_is_about_300_kwh_192s() -> None:
    assert N_CELLS == 192
    assert pytest.approx(300.0, rel=0.01) == CELL_CAPACITY_AH * 3.2 * N_CELLS / 1000
    assert pytest.approx(614.4) == PACK_NOMINAL_V


def test_pack_voltage_is_sum_of_cells_and_sags_under_load() -> None:
    pack, _ = _pack()
    rest = pack.pack_voltage_v
    assert rest == pytest.approx(float(pack.cell_v.sum()))
    i = pack.current_for_power(200_000.0)
    pack.step(i, 1.0, 25.0, pump_on=True)
    assert pack.pack_voltage_v * i == pytest.approx(200_000.0, rel=0.02)
    assert pack.pack_voltage_v < rest
    assert pack.pack_voltage_v == pytest.approx(float(pack.cell_v.sum()))
    assert pack.cell_v.min() <= pack.cell_v.max()


def test_resistance_rises_in_the_cold_and_with_age() -> None:
    warm, _ = _pack(temp_c=25.0)
    cold, _ = _pack(temp_c=-10.0)
    aged, _ = _pack(temp_c=25.0, soh_pct=80.0)
    assert cold.r0.sum() > 2.0 * warm.r0.sum()
    assert aged.r0.sum() > 1.3 * warm.r0.sum()
    assert aged.capacity_ah.mean() == pytest.approx(0.8 * CELL_CAPACITY_AH, rel=0.01)


def test_coulomb_counting_drifts_but_stays_close() -> None:
    pack, bms = _pack(soc=90.0)
    for _ in range(3600):
        i = pack.current_for_power(60_000.0)
        pack.step(i, 1.0, 25.0, pump_on=True)
        rep = bms.update(pack, i, 1.0, True, 5000.0)
    assert rep.soc_pct != pytest.approx(pack.soc_true_pct, abs=1e-6)
    assert abs(rep.soc_pct - pack.soc_true_pct) < 2.0
    assert 65.0 < pack.soc_true_pct < 75.0  # 60 kWh out of ~300 kWh


def test_cc_cv_charge_respects_charger_and_ends_full() -> None:
    pack, bms = _pack(soc=20.0)
    charger = DepotCharger(max_power_kw=150.0)
    rep = bms.update(pack, 0.0, 1.0, True, 5000.0)
    states = set()
    for _ in range(6 * 3600):
        step = charger.charge_current(pack, rep.soc_pct, rep.charge_limit_kw, aux_kw=2.0)
        states.add(step.state)
        pack.step(-step.current_a, 1.0, 25.0, pump_on=True)
        rep = bms.update(pack, -step.current_a, 1.0, True, 5000.0)
        assert pack.pack_voltage_v * step.current_a / 1000.0 + 2.0 <= 150.0 + 1e-6
        assert pack.cell_v.max() <= 3.65
        if step.state == ChargingState.COMPLETE:
            break
    assert {ChargingState.CONSTANT_CURRENT, ChargingState.CONSTANT_VOLTAGE, ChargingState.COMPLETE} <= states
    assert pack.soc_true_pct > 97.0


def test_bms_flags_follow_physics() -> None:
    pack, bms = _pack()
    rep = bms.update(pack, 0.0, 1.0, True, 5000.0)
    assert not rep.flags.any_fault and not rep.flags.derate
    # GIVEN a pack that got hot WHEN the BMS measures it THEN it derates, then flags over-temperature
    pack.module_temp_c[:] = 47.0
    rep = bms.update(pack, 0.0, 1.0, True, 5000.0)
    assert rep.flags.derate and not rep.flags.over_temperature
    pack.module_temp_c[3] = 51.0
    rep = bms.update(pack, 0.0, 1.0, True, 5000.0)
    assert rep.flags.over_temperature and rep.discharge_limit_kw < 350.0
    # insulation: UN ECE R100 500 Ω/V warning
    pack.module_temp_c[:] = 25.0
    warn_kohm = INSULATION_WARN_OHM_PER_V * PACK_NOMINAL_V / 1000.0
    assert not bms.update(pack, 0.0, 1.0, True, warn_kohm * 1.05).flags.insulation_low
    assert bms.update(pack, 0.0, 1.0, True, warn_kohm * 0.95).flags.insulation_low


def test_contactor_precharges_then_closes_and_opens_on_cell_undervoltage() -> None:
    pack, bms = _pack(soc=50.0)
    assert bms.update(pack, 0.0, 1.0, True, 5000.0).contactor == ContactorState.PRECHARGE
    for _ in range(3):
        rep = bms.update(pack, 0.0, 1.0, True, 5000.0)
    assert rep.contactor == ContactorState.CLOSED
    pack.soc_pct[10] = -2.5  # one cell driven flat
    pack.step(0.0, 1.0, 25.0, pump_on=True)
    rep = bms.update(pack, 0.0, 1.0, True, 5000.0)
    assert rep.flags.under_voltage and rep.contactor == ContactorState.OPEN
