"""The traction battery: a 192 S LFP pack (12 modules x 16 cells), its thermal loop, its BMS and DC charging.

Physics (`BatteryPack`): every cell (a parallel group of ~488 Ah) is a 1-RC equivalent circuit
(OCV(SOC) - I*R0 - v1, with dv1/dt = -v1/tau + I/C1), R0 and R1 rising at low temperature (Arrhenius form),
capacity and resistance faded with SOH and spread from cell to cell. Heat I^2*R0 + v1^2/R1 warms a lumped
thermal mass per module; a liquid loop carries it to a chiller (or a PTC heater) and a little leaks to
ambient.

Measurement and reaction (`Bms`): the BMS sees the cell voltages, module temperatures, the current (with a
small gain and offset error) and an insulation monitor. It estimates SOC by coulomb counting (so its SOC
drifts from the true SOC until it re-anchors at full charge), computes power limits with derates, and sets
flags when the physics crosses limits; it never looks at which fault was injected.

Current is positive when the pack discharges. Units are in the names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from simulator.state import CELLS_PER_MODULE, N_MODULES, BmsFlags, ChargingState, ContactorState

N_CELLS = N_MODULES * CELLS_PER_MODULE  # 192 in series
CELL_NOMINAL_V = 3.2
PACK_NOMINAL_KWH = 300.0
CELL_CAPACITY_AH = PACK_NOMINAL_KWH * 1000.0 / (N_CELLS * CELL_NOMINAL_V)  # ~488 Ah
PACK_NOMINAL_V = N_CELLS * CELL_NOMINAL_V  # 614 V

# LFP open-circuit voltage at rest vs SOC (graphite / LiFePO4 cell, ~25 °C). Key points follow the widely
# reproduced LiFePO4 rest-voltage chart (diysolarforum.com/threads/lifepo4-voltage-chart.3156, community
# measurements on large prismatic LFP cells: ~3.0 V at 10 %, 3.2-3.3 V plateau from 20 to 90 %, ~3.35 V at
# 95 %, knee to ~3.45 V at full) and the 2.5 V / 3.65 V cell limits of LFP datasheets. Beyond 100 % the
# voltage climbs steeply (overcharge), below 0 % it collapses: so a charger's CV phase ends and a cell pushed
# past its limits shows it in its voltage. Strictly increasing.
OCV_SOC_PCT = np.array(
    [
        -3.0,
        0.0,
        2.0,
        5.0,
        10.0,
        15.0,
        20.0,
        30.0,
        40.0,
        50.0,
        60.0,
        70.0,
        80.0,
        90.0,
        95.0,
        98.0,
        100.0,
        101.0,
        103.0,
    ]
)
OCV_CELL_V = np.array(
    [
        2.00,
        2.50,
        2.80,
        3.00,
        3.13,
        3.19,
        3.22,
        3.25,
        3.26,
        3.27,
        3.28,
        3.30,
        3.32,
        3.33,
        3.35,
        3.40,
        3.45,
        3.60,
        3.90,
    ]
)

CELL_V_MAX = 3.65  # LFP charge cut-off; above it -> over_voltage
CELL_V_MIN = 2.50  # LFP discharge cut-off; below it -> under_voltage
CELL_V_CHARGE_CV = 3.55  # the charger's constant-voltage phase holds the highest cell here

# Isolation resistance thresholds from UN ECE Regulation No. 100 (Rev. 2, §5.1.3): >= 100 Ω/V for DC
# circuits and >= 500 Ω/V for AC circuits galvanically connected to them (our inverter's motor side is).
# The BMS warns (insulation_low) below 500 Ω/V and opens the contactors below 100 Ω/V.
INSULATION_WARN_OHM_PER_V = 500.0
INSULATION_TRIP_OHM_PER_V = 100.0
INSULATION_HEALTHY_KOHM = 5000.0

T_REF_K = 298.15


def ocv_cell_v(soc_pct: np.ndarray | float) -> np.ndarray:
    return np.asarray(np.interp(soc_pct, OCV_SOC_PCT, OCV_CELL_V))


@dataclass(frozen=True, slots=True)
class PackParams:
    cell_capacity_ah: float = CELL_CAPACITY_AH
    r0_cell_ohm: float = 0.25e-3  # at 25 °C, fresh cell (a ~490 Ah LFP group: tenths of a milliohm)
    r1_cell_ohm: float = 0.20e-3
    tau1_s: float = 40.0  # R1*C1 diffusion time constant
    r_arrhenius_k: float = 2800.0  # R(T) = R25 * exp(B (1/T - 1/T25)): ~2.3x at 0 °C
    soh_pct: float = 100.0  # capacity fade; resistance grows 2 % per 1 % of fade
    capacity_spread: float = 0.01  # relative standard deviations, cell to cell
    resistance_spread: float = 0.04
    soc_spread_pct: float = 0.3
    module_heat_capacity_j_per_k: float = 172_000.0  # ~2.06 MJ/K pack (1.9 t of LFP cells x ~1.1 kJ/kg/K)
    module_to_coolant_w_per_k: float = 45.0
    module_to_ambient_w_per_k: float = 6.0  # roof-mounted enclosure, insulated
    sol_air_rise_c: float = 18.0  # sun on the dark roof enclosure raises its effective ambient at noon
    coolant_flow_w_per_k: float = 1_050.0  # m_dot * cp of the glycol loop (0.3 kg/s x 3.5 kJ/kg/K)
    coolant_heat_capacity_j_per_k: float = 70_000.0
    chiller_max_w: float = 10_000.0  # thermal
    chiller_cop: float = 2.5
    heater_max_w: float = 5_000.0  # PTC coolant heater
    chiller_on_c: float = 30.0  # hottest module above this -> chiller on, coolant inlet towards setpoint
    chiller_off_c: float = 26.0
    coolant_setpoint_c: float = 20.0
    heater_on_c: float = 8.0
    heater_off_c: float = 14.0
    discharge_limit_kw: float = 350.0
    charge_limit_kw: float = 200.0


class BatteryPack:
    """Cell-level electrical state and module-level thermal state of the pack."""

    def __init__(self, params: PackParams, rng: np.random.Generator, initial_soc_pct: float, temp_c: float):
        p = self.params = params
        fade = max(0.0, 100.0 - p.soh_pct) / 100.0
        self.capacity_ah = (
            p.cell_capacity_ah * (1.0 - fade) * (1.0 + p.capacity_spread * rng.standard_normal(N_CELLS))
        )
        r_scale = (1.0 + 2.0 * fade) * (1.0 + p.resistance_spread * rng.standard_normal(N_CELLS))
        self.r0_25 = p.r0_cell_ohm * r_scale
        self.r1_25 = p.r1_cell_ohm * r_scale
        self.soc_pct = np.clip(initial_soc_pct + p.soc_spread_pct * rng.standard_normal(N_CELLS), 0.0, 100.0)
        self.v1 = np.zeros(N_CELLS)
        self.leak_a = np.zeros(N_CELLS)  # internal self-discharge (a soft short grows it)
        self.module_temp_c = np.full(N_MODULES, temp_c) + 0.2 * rng.standard_normal(N_MODULES)
        self.cell_temp_offset_c = 0.3 * rng.standard_normal(N_CELLS)
        self.coolant_in_c = temp_c
        self.coolant_out_c = temp_c
        self.chiller_on = False
        self.heater_on = False
        self.cooling_loss = 0.0  # 0 healthy .. 1 no coolant flow (injected fault)
        self.balance_a = np.zeros(N_CELLS)  # passive balancing bleed, set by the BMS
        self.thermal_power_w = 0.0  # electrical draw of chiller/heater (from the HV bus)
        # position of each module along the coolant path: later modules see warmer coolant
        self._flow_position = (np.arange(N_MODULES) + 0.5) / N_MODULES
        self._since_r_update_s = 0.0
        self._update_resistance()
        self.ocv_v = ocv_cell_v(self.soc_pct)
        self.cell_v = self._terminal_v(0.0)

    # -- electrical ------------------------------------------------------------------------------------
    def _update_resistance(self) -> None:
        t_k = np.repeat(self.module_temp_c, CELLS_PER_MODULE) + self.cell_temp_offset_c + 273.15
        factor = np.exp(self.params.r_arrhenius_k * (1.0 / t_k - 1.0 / T_REF_K))
        self.r0 = self.r0_25 * factor
        self.r1 = self.r1_25 * factor
        self._r0_sum = float(self.r0.sum())
        self._since_r_update_s = 0.0

    def _terminal_v(self, current_a: float) -> np.ndarray:
        return self.ocv_v - current_a * self.r0 - self.v1

    def current_for_power(self, power_w: float) -> float:
        """Pack current that delivers `power_w` at the terminals (negative power = charging)."""
        e = float(self.ocv_v.sum() - self.v1.sum())
        r = self._r0_sum
        disc = e * e - 4.0 * r * power_w
        if disc <= 0.0:
            return e / (2.0 * r)  # beyond the maximum power point: the most the pack can give
        return (e - math.sqrt(disc)) / (2.0 * r)

    def cv_current_limit_a(self, cell_v_target: float) -> float:
        """Largest charge current (positive number) that keeps every cell at or below `cell_v_target`."""
        headroom = cell_v_target - self.ocv_v + self.v1  # v1 is negative while charging
        return float(max(0.0, np.min(headroom / self.r0)))

    def step(
        self, current_a: float, dt_s: float, ambient_c: float, pump_on: bool, solar_fraction: float = 0.0
    ) -> None:
        p = self.params
        decay = math.exp(-dt_s / p.tau1_s)
        self.v1 = self.v1 * decay + current_a * self.r1 * (1.0 - decay)
        self.soc_pct = self.soc_pct - (current_a + self.leak_a + self.balance_a) * dt_s / (
            36.0 * self.capacity_ah
        )
        heat_cell_w = current_a * current_a * self.r0 + self.v1 * self.v1 / self.r1
        heat_module_w = heat_cell_w.reshape(N_MODULES, CELLS_PER_MODULE).sum(axis=1)
        self._step_thermal(heat_module_w, dt_s, ambient_c + p.sol_air_rise_c * solar_fraction, pump_on)
        self._since_r_update_s += dt_s
        if self._since_r_update_s >= 1.0:  # temperatures move slowly: refresh R(T) once a second
            self._update_resistance()
        self.ocv_v = ocv_cell_v(self.soc_pct)
        self.cell_v = self._terminal_v(current_a)

    # -- thermal ---------------------------------------------------------------------------------------
    def _step_thermal(self, heat_module_w: np.ndarray, dt_s: float, ambient_c: float, pump_on: bool) -> None:
        p = self.params
        flowing = pump_on and self.cooling_loss < 0.5
        # a stagnant loop still conducts a little (5 %)
        ua = p.module_to_coolant_w_per_k * (max(0.05, 1.0 - self.cooling_loss) if flowing else 0.05)
        local_coolant_c = self.coolant_in_c + self._flow_position * (self.coolant_out_c - self.coolant_in_c)
        to_coolant_w = ua * (self.module_temp_c - local_coolant_c)
        to_ambient_w = p.module_to_ambient_w_per_k * (self.module_temp_c - ambient_c)
        self.module_temp_c = self.module_temp_c + dt_s * (heat_module_w - to_coolant_w - to_ambient_w) / (
            p.module_heat_capacity_j_per_k
        )
        picked_w = float(to_coolant_w.sum())
        hottest, coldest = float(self.module_temp_c.max()), float(self.module_temp_c.min())
        if flowing:
            self.chiller_on = hottest > p.chiller_on_c or (self.chiller_on and hottest > p.chiller_off_c)
            self.heater_on = coldest < p.heater_on_c or (self.heater_on and coldest < p.heater_off_c)
        else:
            self.chiller_on = self.heater_on = False
        chiller_w = heater_w = 0.0
        if self.chiller_on:
            # proportional control of the inlet temperature towards the setpoint, capped by the chiller size
            chiller_w = min(
                p.chiller_max_w, max(0.0, 800.0 * (self.coolant_in_c - p.coolant_setpoint_c) + picked_w)
            )
        if self.heater_on:
            heater_w = p.heater_max_w
        self.thermal_power_w = chiller_w / p.chiller_cop + heater_w
        loop_ambient_w = 5.0 * (ambient_c - self.coolant_in_c)
        self.coolant_in_c += (
            dt_s * (picked_w - chiller_w + heater_w + loop_ambient_w) / p.coolant_heat_capacity_j_per_k
        )
        if flowing:
            self.coolant_out_c = self.coolant_in_c + picked_w / p.coolant_flow_w_per_k
        else:
            self.coolant_out_c = self.coolant_in_c

    # -- views -----------------------------------------------------------------------------------------
    @property
    def soc_true_pct(self) -> float:
        return min(100.0, max(0.0, float(self.soc_pct.sum()) / N_CELLS))

    @property
    def pack_voltage_v(self) -> float:
        return float(self.cell_v.sum())


@dataclass(frozen=True, slots=True)
class BmsReport:
    soc_pct: float
    discharge_limit_kw: float
    charge_limit_kw: float
    flags: BmsFlags
    contactor: ContactorState
    insulation_kohm: float
    current_meas_a: float


def _ramp(x: float, x0: float, x1: float) -> float:
    """1 at x <= x0, 0 at x >= x1, linear between (x1 may be below x0 for a rising ramp)."""
    if x0 == x1:
        return 1.0 if x <= x0 else 0.0
    f = (x - x0) / (x1 - x0)
    return min(1.0, max(0.0, 1.0 - f))


class Bms:
    """Estimates SOC, computes power limits, sets flags and drives the contactors from measured physics."""

    T_DERATE_START_C = 45.0
    T_OVER_C = 50.0  # over_temperature flag (clears 3 K lower)
    T_TRIP_C = 60.0  # contactors open
    IMBALANCE_V = 0.10  # cell voltage spread at low current
    IMBALANCE_MAX_CURRENT_A = 0.2 * CELL_CAPACITY_AH

    def __init__(self, params: PackParams, rng: np.random.Generator, initial_soc_pct: float) -> None:
        self.params = params
        self.soc_est_pct = initial_soc_pct
        self.capacity_est_ah = params.cell_capacity_ah * params.soh_pct / 100.0
        self.current_gain_error = 1.0 + 0.004 * float(rng.standard_normal())  # Hall sensor, ±0.4 % (1 σ)
        self.current_offset_a = 0.4 * float(rng.standard_normal())
        self.insulation_kohm = INSULATION_HEALTHY_KOHM
        self._latched_trip = False
        self._over_temp = False
        self._imbalance_s = 0.0
        self._over_current_s = 0.0
        self._precharge_s = 0.0
        self.contactor = ContactorState.OPEN

    def update(
        self,
        pack: BatteryPack,
        current_a: float,
        dt_s: float,
        hv_requested: bool,
        insulation_true_kohm: float,
    ) -> BmsReport:
        p = self.params
        i_meas = current_a * self.current_gain_error + self.current_offset_a
        self.soc_est_pct -= i_meas * dt_s / (36.0 * self.capacity_est_ah)
        self.soc_est_pct = min(100.0, max(0.0, self.soc_est_pct))
        self.insulation_kohm = insulation_true_kohm

        v = pack.cell_v
        v_max, v_min = float(v.max()), float(v.min())
        t_max, t_min = float(pack.module_temp_c.max()), float(pack.module_temp_c.min())
        nominal_v = PACK_NOMINAL_V
        iso_ohm = insulation_true_kohm * 1000.0

        # flags
        if t_max >= self.T_OVER_C:
            self._over_temp = True
        elif t_max < self.T_OVER_C - 3.0:
            self._over_temp = False
        if abs(current_a) < self.IMBALANCE_MAX_CURRENT_A and v_max - v_min > self.IMBALANCE_V:
            self._imbalance_s += dt_s
        else:
            self._imbalance_s = max(0.0, self._imbalance_s - dt_s)
        pack_v = max(1.0, pack.pack_voltage_v)
        i_dis_lim = 1.1 * p.discharge_limit_kw * 1000.0 / pack_v
        i_chg_lim = 1.1 * p.charge_limit_kw * 1000.0 / pack_v
        over_i = current_a > i_dis_lim or -current_a > i_chg_lim
        self._over_current_s = self._over_current_s + dt_s if over_i else 0.0

        under_v = v_min < CELL_V_MIN
        over_v = v_max > CELL_V_MAX
        insulation_low = iso_ohm < INSULATION_WARN_OHM_PER_V * nominal_v
        if t_max >= self.T_TRIP_C or v_min < CELL_V_MIN - 0.2 or v_max > CELL_V_MAX + 0.1:
            self._latched_trip = True  # opens now and stays open until service (a new simulation)
        # Isolation below 100 Ω/V: a closed contactor stays closed (opening under load while driving is the
        # greater hazard) but power is cut to limp-home, and the contactors will not close again.
        insulation_critical = iso_ohm < INSULATION_TRIP_OHM_PER_V * nominal_v

        # power limits
        dis_f = min(
            _ramp(t_max, self.T_DERATE_START_C, self.T_TRIP_C - 2.0),
            0.5 + 0.5 * _ramp(-t_min, -5.0, 20.0),  # cold: down to half at -20 °C
            _ramp(-self.soc_est_pct, -15.0, 0.0),  # empty: to zero at 0 %
            _ramp(-v_min, -2.9, -CELL_V_MIN),
        )
        chg_temp_f = min(_ramp(t_max, self.T_DERATE_START_C, 55.0), _ramp(-t_min, -10.0, 0.0))
        chg_f = min(
            chg_temp_f,
            0.2 + 0.8 * _ramp(self.soc_est_pct, 90.0, 100.0),  # normal top-of-charge taper (not a derate)
            _ramp(v_max, CELL_V_CHARGE_CV, CELL_V_MAX - 0.03),
        )
        if insulation_critical:
            dis_f, chg_f = min(dis_f, 0.3), min(chg_f, 0.3)
        if self._latched_trip:
            dis_f = chg_f = 0.0
        derate = dis_f < 0.95 or chg_temp_f < 0.95

        # contactors: precharge for 2 s after the vehicle asks for HV, open on a latched trip
        if self._latched_trip or not hv_requested:
            self.contactor = ContactorState.OPEN
            self._precharge_s = 0.0
        elif self.contactor == ContactorState.OPEN and not insulation_critical:
            self.contactor = ContactorState.PRECHARGE
            self._precharge_s = 0.0
        elif self.contactor == ContactorState.PRECHARGE:
            self._precharge_s += dt_s
            if self._precharge_s >= 2.0:
                self.contactor = ContactorState.CLOSED

        flags = BmsFlags(
            over_temperature=self._over_temp,
            under_voltage=under_v,
            over_voltage=over_v,
            cell_imbalance=self._imbalance_s >= 10.0,
            insulation_low=insulation_low,
            over_current=self._over_current_s >= 1.0,
            derate=derate,
        )
        return BmsReport(
            soc_pct=self.soc_est_pct,
            discharge_limit_kw=p.discharge_limit_kw * dis_f,
            charge_limit_kw=p.charge_limit_kw * chg_f,
            flags=flags,
            contactor=self.contactor,
            insulation_kohm=insulation_true_kohm,
            current_meas_a=i_meas,
        )

    def anchor_full(self) -> None:
        """End of a CV charge: the BMS re-anchors its coulomb counter at 100 %."""
        self.soc_est_pct = 100.0


@dataclass(frozen=True, slots=True)
class ChargeStep:
    current_a: float  # into the pack (positive number)
    state: ChargingState


class DepotCharger:
    """CC-CV DC charging, limited by the charger's power and the BMS charge limit, to a target SOC."""

    def __init__(self, max_power_kw: float = 150.0, target_soc_pct: float = 100.0) -> None:
        self.max_power_kw = max_power_kw
        self.target_soc_pct = target_soc_pct
        self.complete = False

    def connect(self) -> None:
        self.complete = False

    def charge_current(
        self, pack: BatteryPack, bms_soc_pct: float, charge_limit_kw: float, aux_kw: float
    ) -> ChargeStep:
        if self.complete:
            return ChargeStep(0.0, ChargingState.COMPLETE)
        power_w = max(0.0, min(0.995 * self.max_power_kw - aux_kw, charge_limit_kw)) * 1000.0
        i_cc = -pack.current_for_power(-power_w)  # exact terminal power, IR rise included
        i_cv = pack.cv_current_limit_a(CELL_V_CHARGE_CV)
        if bms_soc_pct >= self.target_soc_pct and self.target_soc_pct < 100.0:
            self.complete = True
            return ChargeStep(0.0, ChargingState.COMPLETE)
        if i_cv < i_cc:
            if i_cv < 0.03 * CELL_CAPACITY_AH:  # taper below C/33 ends the CV phase
                self.complete = True
                return ChargeStep(0.0, ChargingState.COMPLETE)
            return ChargeStep(i_cv, ChargingState.CONSTANT_VOLTAGE)
        return ChargeStep(i_cc, ChargingState.CONSTANT_CURRENT)
