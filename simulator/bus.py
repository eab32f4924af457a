"""The simulated bus: route + driver/traffic/passengers + dynamics + battery/BMS + faults, step by step.

A day: parked and charging in the depot (at the Railways terminus of route 102) overnight; at the departure
time the bus powers up and runs a block of round trips (layovers at each terminus, optionally charging at
the depot end), then parks and charges CC-CV to the target SOC. `BusSimulator.step(dt_s)` advances the
physics and returns the `BusState`; `run()` yields a stream of them. Same config and seed -> same states.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from functools import lru_cache

import numpy as np

from simulator.battery import BatteryPack, Bms, BmsReport, DepotCharger, PackParams
from simulator.cycles import Driver, DriverStyle, PassengerProfile, Passengers, Traffic, congestion_level
from simulator.faults import NO_EFFECTS, FaultEffects, FaultSchedule
from simulator.route import Route, nairobi_route_102
from simulator.state import N_MODULES, BusState, ChargingState, ContactorState, DriveState
from simulator.vehicle import (
    Auxiliaries,
    AuxParams,
    Drivetrain,
    Hvac,
    HvacParams,
    TractionResult,
    VehicleParams,
    air_density_kg_m3,
)

NAN = float("nan")


@dataclass(frozen=True, slots=True)
class AmbientProfile:
    """Outdoor temperature over the day: mean ± amplitude, warmest in mid-afternoon."""

    mean_c: float = 19.0
    amplitude_c: float = 6.0
    warmest_hour_local: float = 15.0

    def at(self, local_hour: float) -> float:
        return self.mean_c + self.amplitude_c * math.cos(
            2.0 * math.pi * (local_hour - self.warmest_hour_local) / 24.0
        )


NAIROBI_MILD = AmbientProfile(19.0, 6.0)  # Nairobi: ~12-13 °C before dawn, ~25 °C afternoon
HOT_DAY = AmbientProfile(33.0, 5.0)
COLD_DAY = AmbientProfile(-3.0, 4.0)  # a central-European winter day


@lru_cache(maxsize=1)
def _default_route() -> Route:
    return nairobi_route_102()


@dataclass(frozen=True)
class BusConfig:
    vehicle_id: str = "KBZ-001E"
    seed: int = 0
    start_utc: datetime = datetime(2024, 3, 4, 2, 0, tzinfo=UTC)  # 05:00 in Nairobi (UTC+3)
    utc_offset_h: float = 3.0
    route: Route = field(default_factory=_default_route)
    passengers: PassengerProfile = field(default_factory=PassengerProfile)
    ambient: AmbientProfile = NAIROBI_MILD
    driver: DriverStyle = field(default_factory=DriverStyle)
    soh_pct: float = 100.0
    initial_soc_pct: float = 100.0
    faults: FaultSchedule = field(default_factory=FaultSchedule)
    charger_power_kw: float = 150.0
    charge_target_soc_pct: float = 100.0
    layover_charging: bool = False  # plug in at the depot-end terminus during layovers
    departure_local_h: float = 5.5
    round_trips: int = 4  # per daily block (a round trip on route 102 is ~42 km)
    layover_s: float = 600.0
    step_s: float = 1.0
    odometer_start_km: float = 84_000.0
    vehicle: VehicleParams = field(default_factory=VehicleParams)
    hvac: HvacParams = field(default_factory=HvacParams)
    aux: AuxParams = field(default_factory=AuxParams)


class Mode(Enum):
    PARKED = 0  # depot: off, or charging
    LAYOVER = 1  # terminus (or pre-trip in the depot): HV on, stationary
    DRIVING = 2  # between stops (includes waiting in traffic)
    DWELL = 3  # at a bus stop, doors open


@dataclass(frozen=True, slots=True)
class _StopPoint:
    progress_m: float
    wait_s: float  # traffic stop wait; -1 for a bus stop (dwell decided on arrival)
    stop_index: int  # index in the trip's stop list (bus stops), -1 for traffic


class BusSimulator:
    def __init__(self, config: BusConfig) -> None:
        self.config = c = config
        seeds = np.random.SeedSequence(c.seed).spawn(4)
        rng_pack, rng_drive, rng_traffic, rng_pax = (np.random.default_rng(s) for s in seeds)
        self.route = c.route
        self.t_s = 0.0
        self._t0 = c.start_utc.timestamp()
        amb0 = c.ambient.at(self._local_hour(0.0))
        pack_params = PackParams(soh_pct=c.soh_pct)
        self.pack = BatteryPack(pack_params, rng_pack, c.initial_soc_pct, amb0)
        self.bms = Bms(pack_params, rng_pack, c.initial_soc_pct)
        self.charger = DepotCharger(c.charger_power_kw, c.charge_target_soc_pct)
        self.drivetrain = Drivetrain(c.vehicle, amb0)
        self.hvac = Hvac(c.hvac, amb0)
        self.aux = Auxiliaries(c.aux)
        self.driver = Driver(c.driver, rng_drive)
        self.traffic = Traffic(rng_traffic)
        self.passengers = Passengers(c.passengers, c.vehicle.max_passengers, rng_pax)
        self._pax_rng = rng_pax
        # motion
        self.mode = Mode.PARKED
        self.speed_mps = 0.0
        self.accel_mps2 = 0.0
        self.direction = 1
        self.progress_m = 0.0
        self.trips_done = 0
        self._trip_stop_progress: list[float] = []
        self._trip_stop_ids: list[str] = []
        self._plan: list[_StopPoint] = []
        self._plan_idx = 0
        self._slow_zones: list[tuple[float, float, float]] = []
        self._wait_s = 0.0
        self._last_block_day = -1
        self._charging_connected = False
        self._charging_state = ChargingState.NOT_CONNECTED
        self._charger_kw = 0.0
        # accounting
        self.odometer_km = c.odometer_start_km
        self.trip_km = 0.0
        self.energy_out_kwh = 0.0
        self.energy_in_kwh = 0.0
        self.traction_kwh = 0.0
        self.regen_kwh = 0.0
        self.brake_kwh = 0.0
        self._aux_kw = 0.0
        self._report: BmsReport = self.bms.update(
            self.pack, 0.0, 0.0, False, self._insulation_kohm(NO_EFFECTS)
        )
        self._stuck_values: dict[str, object] = {}
        self._on_depot_arrival()

    # -- time ------------------------------------------------------------------------------------------
    def _local_hour(self, t_s: float) -> float:
        return ((self._t0 + t_s) / 3600.0 + self.config.utc_offset_h) % 24.0

    def _local_day(self, t_s: float) -> int:
        return int(((self._t0 + t_s) / 3600.0 + self.config.utc_offset_h) // 24.0)

    # -- schedule --------------------------------------------------------------------------------------
    def _on_depot_arrival(self) -> None:
        self.mode = Mode.PARKED
        self.speed_mps = 0.0
        self._charging_connected = True
        self.charger.connect()

    def _start_block(self, day: int) -> None:
        self._last_block_day = day
        self._charging_connected = False
        self.trips_done = 0
        self.trip_km = 0.0
        self.direction = 1
        self.mode = Mode.LAYOVER
        self._wait_s = 60.0  # power up, pre-trip checks
        self._plan_trip()

    def _plan_trip(self) -> None:
        route = self.route
        length = route.length_m
        if self.direction > 0:
            prog = [s.distance_m for s in route.stops]
            ids = [s.stop_id for s in route.stops]
        else:
            prog = [length - s.distance_m for s in reversed(route.stops)]
            ids = [s.stop_id for s in reversed(route.stops)]
        self._trip_stop_progress = prog
        self._trip_stop_ids = ids
        self.progress_m = 0.0
        hour = self._local_hour(self.t_s)
        plan: list[_StopPoint] = []
        zones: list[tuple[float, float, float]] = []
        for k in range(1, len(prog)):
            seg_start, seg_len = prog[k - 1], prog[k] - prog[k - 1]
            hour_est = (hour + prog[k] / 5.0 / 3600.0) % 24.0  # ~18 km/h average
            seg = self.traffic.plan_segment(seg_len, hour_est)
            for p_m, w in zip(seg.stop_points_m, seg.stop_waits_s, strict=True):
                plan.append(_StopPoint(seg_start + p_m, w, -1))
            if seg.slow_zone_m[1] > seg.slow_zone_m[0]:
                zones.append(
                    (seg_start + seg.slow_zone_m[0], seg_start + seg.slow_zone_m[1], seg.slow_factor)
                )
            # a stop is served when someone is likely to get on or off (terminus always)
            c = congestion_level(hour_est)
            pax = self.config.passengers
            expect = (
                pax.peak_boardings_per_stop * (pax.offpeak_fraction + (1 - pax.offpeak_fraction) * c) + 1.0
            )
            if k == len(prog) - 1 or self._pax_rng.random() < 1.0 - math.exp(-expect):
                plan.append(_StopPoint(prog[k], -1.0, k))
        self._plan = plan
        self._plan_idx = 0
        self._slow_zones = zones
        self.driver.reset()

    def _update_schedule(self, dt_s: float) -> None:
        if self.mode is Mode.PARKED:
            day = self._local_day(self.t_s)
            hour = self._local_hour(self.t_s)
            dep = self.config.departure_local_h
            if day != self._last_block_day and dep <= hour < dep + 1.0:
                self._start_block(day)
            return
        if self.mode is Mode.LAYOVER or self.mode is Mode.DWELL:
            self._wait_s -= dt_s
            if self._wait_s <= 0.0 and self._report.contactor == ContactorState.CLOSED:
                if self.mode is Mode.LAYOVER:
                    self.passengers.board_at_origin(self._local_hour(self.t_s))
                    self._charging_connected = False
                self.mode = Mode.DRIVING

    def _arrive_terminus(self) -> None:
        self.trips_done += 1
        self.passengers.serve_stop(0, self._local_hour(self.t_s), terminus=True)
        if self.trips_done >= 2 * self.config.round_trips:
            self._on_depot_arrival()
            return
        at_depot_end = self.direction < 0
        self.direction = -self.direction
        self._plan_trip()
        self.mode = Mode.LAYOVER
        self._wait_s = self.config.layover_s
        if at_depot_end and self.config.layover_charging:
            self._charging_connected = True
            self.charger.connect()

    # -- one step --------------------------------------------------------------------------------------
    def _insulation_kohm(self, fx: FaultEffects) -> float:
        # healthy: ~5 MΩ, a little lower in the humid early morning
        hour = self._local_hour(self.t_s)
        humid = 1.0 - 0.15 * math.exp(-0.5 * ((hour - 5.0) / 2.0) ** 2)
        return 5000.0 * humid * fx.insulation_factor

    def _drive(self, dt_s: float, grade: float, air_density: float, mass_kg: float) -> TractionResult:
        rep = self._report
        hv = rep.contactor == ContactorState.CLOSED
        max_drive = max(0.0, rep.discharge_limit_kw - self._aux_kw) if hv else 0.0
        max_regen = max(0.0, rep.charge_limit_kw + self._aux_kw) if hv else 0.0
        v = self.speed_mps
        if self._wait_s > 0.0 or self.mode is not Mode.DRIVING:
            self._wait_s = max(0.0, self._wait_s - dt_s) if self.mode is Mode.DRIVING else self._wait_s
            return self.drivetrain.solve(0.0, 0.0, dt_s, grade, mass_kg, air_density, max_drive, max_regen)
        point = self._plan[self._plan_idx]
        dist = point.progress_m - self.progress_m
        route_d = self._route_distance()
        target = self.route.speed_limit_kmh(route_d) / 3.6 * self.config.driver.speed_factor
        target *= 1.0 - 0.35 * congestion_level(self._local_hour(self.t_s))
        for a, b, f in self._slow_zones:
            if a <= self.progress_m < b:
                target *= f
                break
        a_cmd = self.driver.command(v, dist, target, dt_s)
        res = self.drivetrain.solve(v, a_cmd, dt_s, grade, mass_kg, air_density, max_drive, max_regen)
        v_new = v + res.accel_mps2 * dt_s
        if v_new < 0.0:
            v_new = 0.0
        ds = 0.5 * (v + v_new) * dt_s
        if ds >= dist - 0.05 or (dist < 1.0 and v_new < 0.3):
            ds = max(0.0, dist)
            v_new = 0.0
            self._arrive_point(point)
        self.progress_m += ds
        self.accel_mps2 = (v_new - v) / dt_s
        self.speed_mps = v_new
        km = ds / 1000.0
        self.odometer_km += km
        self.trip_km += km
        return res

    def _arrive_point(self, point: _StopPoint) -> None:
        self._plan_idx += 1
        self.driver.reset()
        if point.stop_index < 0:
            self._wait_s = point.wait_s
            return
        last = point.stop_index == len(self._trip_stop_progress) - 1
        if last:
            self.progress_m = point.progress_m
            self._arrive_terminus()
            return
        remaining = len(self._trip_stop_progress) - 1 - point.stop_index
        _, _, dwell = self.passengers.serve_stop(remaining, self._local_hour(self.t_s), terminus=False)
        self.mode = Mode.DWELL
        self._wait_s = max(dwell, self.config.passengers.door_time_s)
        self.aux.on_stop_served()

    def _route_distance(self) -> float:
        d = self.progress_m if self.direction > 0 else self.route.length_m - self.progress_m
        return min(max(d, 0.0), self.route.length_m)

    def step(self, dt_s: float | None = None) -> BusState:
        dt = self.config.step_s if dt_s is None else dt_s
        c = self.config
        fx = self.config.faults.effects(self.t_s)
        self._update_schedule(dt)
        hour = self._local_hour(self.t_s)
        ambient = c.ambient.at(hour)
        route_d = self._route_distance()
        alt = self.route.elevation_m(route_d)
        grade = self.route.grade(route_d) * self.direction
        mass = c.vehicle.mass_kg(self.passengers.onboard)
        res = self._drive(dt, grade, air_density_kg_m3(alt, ambient), mass)

        # auxiliaries
        hv_on = self._report.contactor == ContactorState.CLOSED
        active = self.mode is not Mode.PARKED
        solar = max(0.0, math.sin(math.pi * (hour - 6.5) / 12.3)) if 6.5 < hour < 18.8 else 0.0
        hvac_kw = self.hvac.step(
            ambient, self.passengers.onboard, self.mode is Mode.DWELL, solar, active and hv_on, dt
        )
        if hv_on:
            dcdc_kw, comp_kw = self.aux.step(not 6.5 < hour < 18.8, res.friction_brake_kw, dt)
        else:
            dcdc_kw, comp_kw = 0.0, 0.0
        thermal_kw = self.pack.thermal_power_w / 1000.0 if hv_on else 0.0
        aux_kw = hvac_kw + dcdc_kw + comp_kw + thermal_kw
        self._aux_kw = aux_kw

        # pack current: traction + aux, or the charger
        charging = self.mode is not Mode.DRIVING and self._charging_connected and self.speed_mps == 0.0
        if charging:
            step = self.charger.charge_current(
                self.pack, self._report.soc_pct, self._report.charge_limit_kw, aux_kw
            )
            self._charging_state = step.state
            current = -step.current_a if hv_on else 0.0
            if step.state == ChargingState.COMPLETE and self.charger.target_soc_pct >= 100.0:
                self.bms.anchor_full()
        else:
            self._charging_state = (
                ChargingState.CONNECTED if self._charging_connected else ChargingState.NOT_CONNECTED
            )
            current = self.pack.current_for_power((res.motor_power_kw + aux_kw) * 1000.0) if hv_on else 0.0
        hv_request = self.mode is not Mode.PARKED or (
            charging and self._charging_state != ChargingState.COMPLETE
        )

        # battery physics and BMS
        self.pack.cooling_loss = fx.cooling_loss
        if fx.leak_cell >= 0:
            self.pack.leak_a[fx.leak_cell] = fx.leak_a
        self._balance(charging)
        self.pack.step(current, dt, ambient, pump_on=hv_on, solar_fraction=solar)
        self._report = self.bms.update(self.pack, current, dt, hv_request, self._insulation_kohm(fx))
        self.drivetrain.step_thermal(res, ambient + 6.0, dt)

        pack_v = self.pack.pack_voltage_v
        pack_kw = pack_v * current / 1000.0
        self._charger_kw = aux_kw - pack_kw if charging and hv_on else 0.0
        h = dt / 3600.0
        if pack_kw > 0:
            self.energy_out_kwh += pack_kw * h
        else:
            self.energy_in_kwh -= pack_kw * h
        self.traction_kwh += res.traction_kw * h
        self.regen_kwh += res.regen_kw * h
        self.brake_kwh += res.brake_wheel_kw * h
        self.t_s = round(self.t_s + dt, 6)  # no float drift: 36,000 steps of 0.1 s make exactly 3,600 s
        return self._state(
            res, fx, ambient, alt, grade, hvac_kw, dcdc_kw, comp_kw, thermal_kw, current, pack_kw
        )

    def _balance(self, charging: bool) -> None:
        """Passive top balancing while charging: bleed cells >15 mV above the lowest, above 3.40 V."""
        if not charging:
            if self.pack.balance_a.any():
                self.pack.balance_a[:] = 0.0
            return
        v = self.pack.cell_v
        self.pack.balance_a = np.where((v > 3.40) & (v > v.min() + 0.015), 1.5, 0.0)

    def run(self, duration_s: float, dt_s: float | None = None) -> Iterator[BusState]:
        dt = self.config.step_s if dt_s is None else dt_s
        for _ in range(round(duration_s / dt)):
            yield self.step(dt)

    # -- state -----------------------------------------------------------------------------------------
    def _state(
        self,
        res: TractionResult,
        fx: FaultEffects,
        ambient: float,
        alt: float,
        grade: float,
        hvac_kw: float,
        dcdc_kw: float,
        comp_kw: float,
        thermal_kw: float,
        current: float,
        pack_kw: float,
    ) -> BusState:
        pack = self.pack
        rep = self._report
        v = pack.cell_v
        vm = v.reshape(N_MODULES, -1)
        imax, imin = int(v.argmax()), int(v.argmin())
        mt = pack.module_temp_c
        tmax, tmin = int(mt.argmax()), int(mt.argmin())
        route_d = self._route_distance()
        lat, lon, heading = self.route.position(route_d)
        if self.direction < 0:
            heading = (heading + 180.0) % 360.0
        k = bisect_right(self._trip_stop_progress, self.progress_m) if self._trip_stop_progress else 0
        next_id = self._trip_stop_ids[k] if 0 < k < len(self._trip_stop_ids) else ""
        in_depot = self.mode is Mode.PARKED
        if self.mode is Mode.DRIVING:
            drive = DriveState.DRIVE
        elif self.mode is Mode.PARKED:
            drive = DriveState.OFF
        else:
            drive = DriveState.READY if rep.contactor == ContactorState.CLOSED else DriveState.OFF
        sats = 0 if fx.gps_lost else 8 + (int(self.t_s / 97.0) % 5)
        state = BusState(
            t_s=self.t_s,
            ts=self._t0 + self.t_s,
            lat_deg=lat,
            lon_deg=lon,
            alt_m=alt,
            heading_deg=heading,
            gps_valid=not fx.gps_lost,
            gps_satellites=sats,
            gps_hdop=99.9 if fx.gps_lost else 0.8 + 0.4 / max(1, sats - 7),
            speed_kmh=self.speed_mps * 3.6,
            accel_mps2=self.accel_mps2 if self.mode is Mode.DRIVING else 0.0,
            odometer_km=self.odometer_km,
            trip_km=self.trip_km,
            grade_pct=grade * 100.0,
            passengers=self.passengers.onboard,
            mass_kg=self.config.vehicle.mass_kg(self.passengers.onboard),
            ambient_c=ambient,
            cabin_c=self.hvac.cabin_c,
            at_stop=self.mode is Mode.DWELL,
            in_depot=in_depot,
            motor_speed_rpm=res.motor_speed_rpm,
            motor_torque_nm=res.motor_torque_nm,
            motor_power_kw=res.motor_power_kw,
            motor_temp_c=self.drivetrain.motor_temp_c,
            inverter_temp_c=self.drivetrain.inverter_temp_c,
            drive_state=drive,
            hvac_power_kw=hvac_kw,
            dcdc_power_kw=dcdc_kw,
            air_compressor_power_kw=comp_kw,
            pack_voltage_v=float(v.sum()),
            pack_current_a=rep.current_meas_a,
            pack_power_kw=pack_kw,
            soc_pct=rep.soc_pct,
            soh_pct=self.config.soh_pct,
            cell_v_max=float(v[imax]),
            cell_v_min=float(v[imin]),
            cell_v_max_id=imax,
            cell_v_min_id=imin,
            cell_t_max_c=float(mt[tmax]),
            cell_t_min_c=float(mt[tmin]),
            cell_t_max_module=tmax,
            cell_t_min_module=tmin,
            coolant_in_c=pack.coolant_in_c,
            coolant_out_c=pack.coolant_out_c,
            module_voltage_v=tuple(vm.sum(axis=1).tolist()),
            module_cell_v_max=tuple(vm.max(axis=1).tolist()),
            module_cell_v_min=tuple(vm.min(axis=1).tolist()),
            module_temp_c=tuple(mt.tolist()),
            insulation_kohm=rep.insulation_kohm,
            contactor=rep.contactor,
            charging=self._charging_state,
            charger_power_kw=self._charger_kw,
            discharge_power_limit_kw=rep.discharge_limit_kw,
            charge_power_limit_kw=rep.charge_limit_kw,
            flags=rep.flags,
            soc_true_pct=pack.soc_true_pct,
            energy_out_kwh=self.energy_out_kwh,
            energy_in_kwh=self.energy_in_kwh,
            active_faults=fx.labels,
            route_distance_m=route_d,
            next_stop_id=next_id,
            traction_energy_kwh=self.traction_kwh,
            regen_energy_kwh=self.regen_kwh,
            brake_energy_kwh=self.brake_kwh,
            battery_thermal_power_kw=thermal_kw,
            can_frame_drop_prob=fx.can_drop_prob,
            can_frame_corrupt_prob=fx.can_corrupt_prob,
        )
        if fx.stuck or fx.dropout or self._stuck_values:
            state = self._apply_sensor_faults(state, fx)
        return state

    def _apply_sensor_faults(self, state: BusState, fx: FaultEffects) -> BusState:
        overrides: dict[str, object] = {}
        for name in list(self._stuck_values):
            if name not in fx.stuck:
                del self._stuck_values[name]  # the fault ended: the sensor reads again
        for name in fx.stuck:
            if name not in self._stuck_values:
                self._stuck_values[name] = getattr(state, name)
            overrides[name] = self._stuck_values[name]
        for name in fx.dropout:
            value = getattr(state, name)
            overrides[name] = tuple(NAN for _ in value) if isinstance(value, tuple) else NAN
        return dataclasses.replace(state, **overrides)  # type: ignore[arg-type]
