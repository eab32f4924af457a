// voltgate fleet page: a map and a searchable fleet list; a bus opens beside the list at #/bus/ID
// (reload-safe, the back button works) with its charts, alerts and trips; daily KPIs below.
// Every file comes from the receiver (the Content-Security-Policy forbids any other origin).

import { drawChart, seriesPoints } from "./charts.js";
import {
  DAY_MS, HOUR_MS, LATITUDE, LONGITUDE, POWER, SOC, SPEED, ago, api, combinedRisk, dateTime, el, hashParams,
  isoUtc, loadToken, localDay, num, position, predictedLevel, showError, state, takeToken,
} from "./common.js";
import { FleetList } from "./fleet.js";
import { FleetMap } from "./map.js";
import { loadBatteryHealth, loadBilling, loadBlockRisk, wireBilling } from "./reports.js";

// A bus online whose data is at most this old is live: its charts open on the last LIVE_HOURS.
const LIVE_WITHIN_MS = 2 * HOUR_MS;
const LIVE_HOURS = 2;
const PARKED_HOURS = 24;
// A route point joins a latitude and a longitude read at most this far apart (as the API's position).
const ROUTE_PAIRING_MS = 30e3;

let fleetList = null;
let fleetMap = null;

// ---- routing: #/bus/ID is the selected bus; "#/" (or nothing) the fleet alone ---------------------

function routedBus() {
  const match = /^#\/bus\/(.+)$/.exec(window.location.hash);
  if (match) {
    try {
      return decodeURIComponent(match[1]);
    } catch {
      return null;
    }
  }
  return hashParams().get("bus") || null; // links of the earlier page: #bus=ID
}

function navigate(id) {
  const hash = id ? `#/bus/${encodeURIComponent(id)}` : "#/";
  if (window.location.hash !== hash) window.history.pushState(null, "", hash); // no popstate event
  followRoute();
}

function followRoute() {
  const id = routedBus();
  if (id === state.selected) return;
  state.selected = id;
  state.hours = null; // each bus opens on its own default range
  fleetList.markSelected(id);
  if (id) fleetList.reveal(id);
  fleetMap.select(id);
  loadBus().catch(showError);
}

// ---- fleet ---------------------------------------------------------------------------------------

function renderSummary(asOf) {
  const buses = state.buses;
  const online = buses.filter((b) => b.online).length;
  const socs = buses.filter((b) => b.soc_pct).map((b) => b.soc_pct.value);
  const alerts = buses.reduce((n, b) => n + b.active_alerts.length, 0);
  const critical = buses.reduce((n, b) => n + b.active_alerts.filter((a) => a.severity === "critical").length, 0);
  const highRisk = buses.filter((b) => combinedRisk(b).level === "high").length;
  const items = [
    ["Buses", buses.length.toLocaleString("en-GB"), ""],
    ["Online", online.toLocaleString("en-GB"), ""],
    ["Mean SOC", socs.length ? `${num(socs.reduce((a, b) => a + b, 0) / socs.length, 0)} %` : "–", ""],
    ["Active alerts", String(alerts), critical ? "alert" : ""],
    ["High risk", String(highRisk), highRisk ? "warn" : ""],
  ];
  const summary = document.getElementById("fleet-summary");
  summary.replaceChildren();
  for (const [label, value, tone] of items) {
    summary.append(el("div", { class: `metric ${tone}` }, el("dt", { text: label }), el("dd", { text: value })));
  }
  document.getElementById("as-of").textContent = `Updated ${dateTime(asOf)} · ${state.timeZone}`;
  document.getElementById("footer-tz").textContent = `· times in ${state.timeZone}`;
}

async function loadFleet() {
  const body = await api("/api/buses");
  state.buses = body.buses;
  state.byId = new Map(body.buses.map((bus) => [bus.id, bus]));
  state.timeZone = body.time_zone;
  renderSummary(body.as_of);
  fleetMap.setBuses(state.buses);
  fleetList.setBuses(state.buses); // shows the rows and the markers that pass the search and filter
  const selected = state.byId.get(state.selected);
  if (selected) renderBusFacts(selected); // the open bus's last state, alerts and risk, refreshed too
}

// ---- bus detail ----------------------------------------------------------------------------------

function isLive(bus) {
  const until = Date.parse(bus.data_until || bus.last_seen);
  return bus.online === true && Date.now() - until <= LIVE_WITHIN_MS;
}

function renderBusFacts(bus) {
  const risk = combinedRisk(bus);
  const predicted = bus.risk ? `${predictedLevel(bus.risk.value)} · ${num(bus.risk.value * 100, 0)} % (${bus.risk.output}, ${dateTime(bus.risk.ts)})` : "no model output";
  const facts = [
    ["Status", bus.online === null ? "unknown" : bus.online ? "online" : "offline"],
    ["Last seen", `${dateTime(bus.last_seen)} · ${ago(bus.last_seen)}`],
    ["Latest data", bus.data_until ? `${dateTime(bus.data_until)} · ${ago(bus.data_until)}` : "–"],
    ["SOC", bus.soc_pct ? `${num(bus.soc_pct.value, 1)} %` : "–"],
    ["Speed", bus.speed_kmh ? `${num(bus.speed_kmh.value, 0)} km/h` : "–"],
    ["Pack power", bus.pack_power_kw ? `${num(bus.pack_power_kw.value, 0)} kW` : "–"],
    ["Position", bus.location ? `${position(bus.location)} · ${ago(bus.location.ts)}` : "–"],
    ["Risk", risk.text],
    ["Predicted", predicted],
  ];
  const box = document.getElementById("bus-facts");
  box.replaceChildren();
  for (const [label, value] of facts) box.append(el("div", {}, el("dt", { text: label }), el("dd", { text: value })));
  box.querySelector("div:nth-child(7) dd").className = `risk risk-${risk.level}`;
  const alerts = document.getElementById("bus-alerts");
  alerts.replaceChildren();
  for (const alert of bus.active_alerts) {
    alerts.append(
      el("li", {}, el("span", { class: `badge sev-${alert.severity}`, text: alert.rule.replaceAll("_", " ") }), el("span", { text: `${alert.message} · since ${dateTime(alert.since)}` })),
    );
  }
  alerts.hidden = bus.active_alerts.length === 0;
}

// One line on what the bus runs against what the fleet wants (voltgate-cloud fleet; /api/buses/{bus}/control).
function controlPart(what, desired, applied) {
  if (!applied) return desired ? `${what} r${desired} sent, nothing reported` : null;
  const got = `${what} r${applied.revision} ${applied.state.replaceAll("_", " ")}`;
  return desired && desired !== applied.revision ? `${got} (wants r${desired})` : got;
}

async function loadControl(bus) {
  const body = await api(`/api/buses/${encodeURIComponent(bus.id)}/control`);
  if (bus.id !== state.selected) return;
  const parts = [controlPart("config", body.config.desired_revision, body.config.applied)];
  for (const m of body.models) parts.push(controlPart(m.name, m.desired_revision, m.applied));
  const text = parts.filter(Boolean).join(" · ") || "installed settings and models";
  const box = document.getElementById("bus-facts");
  box.append(el("div", { id: "bus-control" }, el("dt", { text: "Remote" }), el("dd", { text })));
}

// Latitude and longitude arrive as two series: a point joins each latitude with the nearest
// longitude read within ROUTE_PAIRING_MS.
function routePoints(lat, lon) {
  const lons = seriesPoints(lon).filter((p) => p.v !== null);
  const points = [];
  let j = 0;
  for (const p of seriesPoints(lat)) {
    if (p.v === null) continue;
    while (j + 1 < lons.length && Math.abs(lons[j + 1].t - p.t) <= Math.abs(lons[j].t - p.t)) j += 1;
    if (lons[j] && Math.abs(lons[j].t - p.t) <= ROUTE_PAIRING_MS) points.push([p.v, lons[j].v]);
  }
  return points;
}

async function loadBus() {
  const bus = state.byId.get(state.selected);
  const panel = document.getElementById("bus-panel");
  document.body.classList.toggle("has-bus", Boolean(bus));
  panel.hidden = !bus;
  fleetMap.resize();
  if (!bus) {
    if (state.selected) showError(new Error(`No bus ${state.selected} in this fleet`));
    return;
  }
  if (state.hours === null) state.hours = isLive(bus) ? LIVE_HOURS : PARKED_HOURS;
  document.getElementById("bus-title").textContent = bus.id;
  const meta = [bus.fleet, bus.vin ? `VIN ${bus.vin}` : null, bus.battery_capacity_kwh ? `${num(bus.battery_capacity_kwh, 0)} kWh pack` : null];
  document.getElementById("bus-meta").textContent = meta.filter(Boolean).join(" · ");
  for (const button of document.querySelectorAll("#range-buttons button")) {
    button.classList.toggle("active", Number(button.dataset.hours) === state.hours);
  }
  renderBusFacts(bus);
  loadBatteryHealth(bus, () => bus.id === state.selected).catch(showError);
  const end = Date.parse(bus.data_until || bus.last_seen) + 1000;
  const start = end - state.hours * HOUR_MS;
  const range = { from: isoUtc(start), to: isoUtc(end) };
  const path = `/api/buses/${encodeURIComponent(bus.id)}`;
  const [soc, speed, power, predictions, lat, lon] = await Promise.all([
    api(`${path}/series`, { signal: SOC, ...range }),
    api(`${path}/series`, { signal: SPEED, ...range }),
    api(`${path}/series`, { signal: POWER, ...range }),
    api(`${path}/predictions`, { from: isoUtc(start - HOUR_MS), to: isoUtc(end) }),
    api(`${path}/series`, { signal: LATITUDE, ...range }),
    api(`${path}/series`, { signal: LONGITUDE, ...range }),
  ]);
  if (bus.id !== state.selected) return; // another bus was chosen meanwhile
  fleetMap.showRoute(routePoints(lat, lon));
  const window_ = { t0: start, t1: end };
  drawChart(document.getElementById("chart-soc"), { ...window_, unit: "%", yMin: 0, yMax: 100, series: [{ points: seriesPoints(soc), color: "#0f9d8a", band: true }] });
  drawChart(document.getElementById("chart-speed"), { ...window_, unit: "km/h", yMin: 0, series: [{ points: seriesPoints(speed), color: "#2f6fdb", band: true }] });
  drawChart(document.getElementById("chart-power"), { ...window_, unit: "kW", series: [{ points: seriesPoints(power), color: "#d9822b", area: true }] });
  const target = (p) => Date.parse(p.target_ts);
  drawChart(document.getElementById("chart-pred"), {
    ...window_,
    unit: "%",
    series: [
      { name: "actual SOC", color: "#0f9d8a", points: seriesPoints(soc) },
      { name: "predicted SOC", color: "#7b4fd6", dashed: true, markers: true, points: predictions.points.map((p) => ({ t: target(p), v: p.predicted_soc_pct })) },
    ],
  });
  const summary = predictions.evaluated
    ? `MAE ${num(predictions.mae_pct, 2)} pp · bias ${num(predictions.bias_pct, 2)} pp · ${predictions.evaluated} evaluated`
    : "no outcome yet";
  document.getElementById("pred-summary").textContent = summary;
  await Promise.all([loadTrips(bus, start, end), loadControl(bus)]);
}

// The bus's trips that overlap the charts' window, newest first (the API takes local days).
async function loadTrips(bus, start, end) {
  const params = { from: localDay(start), to: localDay(end - 1), tz: state.timeZone };
  const body = await api(`/api/buses/${encodeURIComponent(bus.id)}/trips`, params);
  if (bus.id !== state.selected) return; // another bus was chosen meanwhile
  const trips = body.trips
    .filter((t) => Date.parse(t.ended_at) > start && Date.parse(t.started_at) < end)
    .reverse();
  const minutes = trips.reduce((n, t) => n + t.duration_s / 60, 0);
  const km = trips.reduce((n, t) => n + (t.distance_km || 0), 0);
  document.getElementById("trip-note").textContent = trips.length
    ? `${trips.length} trip${trips.length === 1 ? "" : "s"} · ${num(km, 1)} km · ${num(minutes / 60, 1)} h · a stop of ${num(body.trip_gap_s / 60, 0)} min or more ends a trip`
    : "";
  const tbody = document.querySelector("#trip-table tbody");
  tbody.replaceChildren();
  if (trips.length === 0) tbody.append(el("tr", {}, el("td", { colspan: "11", class: "muted", text: "No trips in this range" })));
  const place = (lat, lon) => (lat === null || lon === null ? "–" : position({ lat, lon }));
  for (const t of trips) {
    const soc = t.soc_start_pct === null ? "–" : `${num(t.soc_start_pct, 0)} → ${num(t.soc_end_pct, 0)}`;
    tbody.append(
      el(
        "tr",
        {},
        el("td", { text: dateTime(t.started_at) }),
        el("td", { text: dateTime(t.ended_at) }),
        el("td", { class: "num", text: num(t.duration_s / 60, 0) }),
        el("td", { class: "num", text: num(t.moving_s / 60, 0) }),
        el("td", { class: "num", text: num(t.distance_km, 1) }),
        el("td", { class: "num", text: num(t.gps_distance_km, 1) }),
        el("td", { class: "num", text: num(t.energy_used_kwh, 1) }),
        el("td", { class: "num", text: num(t.kwh_per_km, 2) }),
        el("td", { class: "num", text: soc }),
        el("td", { class: "mono", text: place(t.start_lat, t.start_lon) }),
        el("td", { class: "mono", text: place(t.end_lat, t.end_lon) }),
      ),
    );
  }
}

// ---- daily KPIs ----------------------------------------------------------------------------------

async function loadKpis() {
  const latest = Math.max(...state.buses.map((b) => Date.parse(b.data_until || b.last_seen)));
  if (!Number.isFinite(latest)) return;
  const to = localDay(latest);
  const from = localDay(latest - 6 * DAY_MS);
  const params = { from, to, tz: state.timeZone };
  const [daily, fleet] = await Promise.all([api("/api/kpis/daily", params), api("/api/kpis/fleet", params)]);
  document.getElementById("kpi-range").textContent = `${from} – ${to} · ${state.timeZone}`;
  const lastDay = fleet.days[fleet.days.length - 1];
  const cards = [
    ["Energy used", `${num(fleet.total_used_kwh, 0)} kWh`, `${from} – ${to}`],
    ["Daily average", `${num(fleet.daily_avg_used_kwh, 0)} kWh`, "over calendar days"],
    ["7-day rolling", `${num(lastDay ? lastDay.used_rolling_7d_kwh : null, 0)} kWh/day`, `to ${to}`],
    ["Peak day", fleet.peak_day ? `${num(fleet.peak_day_used_kwh, 0)} kWh` : "–", fleet.peak_day || ""],
    ["Peak hour", fleet.peak_hour ? `${num(fleet.peak_hour_used_kwh, 0)} kWh` : "–", fleet.peak_hour ? dateTime(fleet.peak_hour) : ""],
    ["Energy charged", `${num(fleet.total_charged_kwh, 0)} kWh`, fleet.peak_charging_hour ? `peak ${num(fleet.peak_charging_hour_kwh, 0)} kWh at ${dateTime(fleet.peak_charging_hour)}` : ""],
  ];
  const box = document.getElementById("energy-cards");
  box.replaceChildren();
  for (const [label, value, note] of cards) {
    box.append(el("div", { class: "energy-card" }, el("dt", { text: label }), el("dd", { text: value }), el("small", { text: note })));
  }
  const body = document.querySelector("#kpi-table tbody");
  body.replaceChildren();
  const rows = daily.rows.slice().sort((a, b) => (a.day === b.day ? a.vehicle_id.localeCompare(b.vehicle_id) : a.day < b.day ? 1 : -1));
  if (rows.length === 0) body.append(el("tr", {}, el("td", { colspan: "13", class: "muted", text: "No data in this range" })));
  for (const r of rows) {
    const soc = r.soc_start_pct === null ? "–" : `${num(r.soc_start_pct, 0)} → ${num(r.soc_end_pct, 0)} (${num(r.soc_min_pct, 0)})`;
    body.append(
      el(
        "tr",
        {},
        el("td", { text: r.day }),
        el("td", { class: "bus-id", text: r.vehicle_id }),
        el("td", { class: "num", text: num(r.distance_km, 1) }),
        el("td", { class: "num", text: num(r.gps_distance_km, 1) }),
        el("td", { class: "num", text: num(r.moving_hours, 1) }),
        el("td", { class: "num", text: num(r.utilization_pct, 1) }),
        el("td", { class: "num", text: String(r.trip_count) }),
        el("td", { class: "num", text: soc }),
        el("td", { class: "num", text: num(r.energy_used_kwh, 1) }),
        el("td", { class: "num", text: num(r.kwh_per_km, 2) }),
        el("td", { class: "num", text: num(r.energy_charged_kwh, 1) }),
        el("td", { class: "num", text: String(r.charging_events) }),
        el("td", { class: `num ${r.critical_alerts ? "crit" : ""}`, text: `${r.alerts_raised} (${r.critical_alerts})` }),
      ),
    );
  }
}

// ---- block risk and the pay-per-km report, as of the fleet's latest data -------------------------
// (block risk at another instant: open the page as /?at=2024-05-14T06:00:00Z)

let billingWired = false;

// The tables sit below the fold: they are asked for when one of them first comes into view, so that a
// large fleet's page does not wait on (or share the database with) them while it opens.
function loadReportsWhenSeen() {
  const observer = new IntersectionObserver((entries) => {
    if (!entries.some((e) => e.isIntersecting)) return;
    observer.disconnect();
    loadReports().catch(showError);
  });
  for (const id of ["block-risk-panel", "billing-panel"]) observer.observe(document.getElementById(id));
}

async function loadReports() {
  const latest = Math.max(...state.buses.map((b) => Date.parse(b.data_until || b.last_seen)));
  if (!Number.isFinite(latest)) return;
  if (!billingWired) {
    wireBilling(localDay(latest - 6 * DAY_MS), localDay(latest));
    billingWired = true;
  }
  const at = new URLSearchParams(window.location.search).get("at") || new Date(latest).toISOString();
  await Promise.all([loadBlockRisk(at, navigate), loadBilling()]);
}

// ---- wiring --------------------------------------------------------------------------------------

function wireControls() {
  const search = document.getElementById("fleet-search");
  search.addEventListener("input", () => fleetList.set({ query: search.value }));
  for (const button of document.querySelectorAll("#fleet-filters button")) {
    button.addEventListener("click", () => {
      for (const other of document.querySelectorAll("#fleet-filters button")) other.classList.toggle("active", other === button);
      fleetList.set({ filter: button.dataset.filter });
    });
  }
  const sort = document.getElementById("fleet-sort");
  sort.addEventListener("change", () => fleetList.set({ sort: sort.value }));
  for (const button of document.querySelectorAll("#range-buttons button")) {
    button.addEventListener("click", () => {
      state.hours = Number(button.dataset.hours);
      loadBus().catch(showError);
    });
  }
  document.getElementById("bus-close").addEventListener("click", () => navigate(null));
  for (const event of ["hashchange", "popstate"]) {
    window.addEventListener(event, () => {
      if (takeToken()) {
        // a token pasted into the address bar: load everything again with it
        document.getElementById("banner").hidden = true;
        loadAll().then(loadReportsWhenSeen).catch(showError);
        return;
      }
      followRoute();
    });
  }
}

async function loadAll() {
  await loadFleet();
  state.selected = null; // followRoute opens the bus of the address, if any: none is chosen for the user
  followRoute();
  await loadKpis();
}

async function main() {
  loadToken();
  try {
    const config = await api("/page-config.json");
    state.maxRangeDays = config.max_range_days;
    fleetMap = new FleetMap(document.getElementById("map"), config, navigate);
    fleetList = new FleetList(document.getElementById("bus-list"), document.getElementById("fleet-count"), navigate);
    fleetList.onChange = (shown) => fleetMap.show(shown);
    wireControls();
    await loadAll();
    loadReportsWhenSeen();
    document.body.dataset.state = "ready";
  } catch (error) {
    showError(error);
    document.body.dataset.state = "error";
  }
  window.setInterval(() => loadFleet().catch(showError), 30e3);
}

main();
