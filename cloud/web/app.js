// voltgate fleet page: fetches the JSON API of the same server and draws tables and SVG charts.
// No libraries, no other origin (the server's Content-Security-Policy forbids it).
"use strict";

const SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current";
const SPEED = "Vehicle.Speed";
const POWER = "pack_power_kw";
const SVG_NS = "http://www.w3.org/2000/svg";
const HOUR_MS = 3600e3;
const DAY_MS = 24 * HOUR_MS;

const state = { buses: [], timeZone: "UTC", selected: null, hours: 24, loaded: false, token: null };

// ---- access token --------------------------------------------------------------------------------
// A server with web.api_tokens wants `Authorization: Bearer <token>` on its API calls. The page is
// opened once as /#token=<token> (a fragment never reaches a server or a log): the token is kept for
// this tab in sessionStorage and taken out of the address bar, then sent with every call.

const TOKEN_KEY = "voltgate.apiToken";

function hashParams() {
  const params = new Map();
  for (const part of window.location.hash.replace(/^#/, "").split("&")) {
    const eq = part.indexOf("=");
    if (eq <= 0) continue;
    try {
      params.set(part.slice(0, eq), decodeURIComponent(part.slice(eq + 1)));
    } catch {
      // a malformed escape: ignore that part
    }
  }
  return params;
}

// Takes a token from the address bar's fragment; true when there was one.
function takeToken() {
  const params = hashParams();
  const token = params.get("token");
  if (!token) return false;
  state.token = token;
  try {
    window.sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage disabled: the token lasts until the page is reloaded
  }
  params.delete("token");
  const rest = [...params].map(([key, value]) => `${key}=${encodeURIComponent(value)}`).join("&");
  const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : "");
  window.history.replaceState(null, "", url);
  return true;
}

function loadToken() {
  if (takeToken()) return;
  try {
    state.token = window.sessionStorage.getItem(TOKEN_KEY);
  } catch {
    state.token = null;
  }
}

// ---- small helpers -----------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

async function api(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) url.searchParams.set(key, value);
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(url, { headers });
  const body = await response.json();
  if (response.status === 401) {
    throw new Error(`${path}: ${body.error}. Open the page as ${window.location.origin}/#token=<your API token>.`);
  }
  if (!response.ok) throw new Error(`${path}: ${body.error || response.statusText}`);
  return body;
}

function showError(error) {
  const banner = document.getElementById("banner");
  banner.textContent = String(error.message || error);
  banner.hidden = false;
}

function num(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value.toLocaleString("en-GB", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function isoUtc(ms) {
  return new Date(ms).toISOString().replace(".000Z", "Z");
}

function formatter(options) {
  return new Intl.DateTimeFormat("en-GB", { timeZone: state.timeZone, hourCycle: "h23", ...options });
}

function dateTime(iso) {
  if (!iso) return "–";
  return formatter({ day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" }).format(new Date(iso));
}

function localDay(ms) {
  // YYYY-MM-DD of an instant in the fleet's time zone
  const parts = formatter({ year: "numeric", month: "2-digit", day: "2-digit" }).formatToParts(new Date(ms));
  const get = (type) => parts.find((p) => p.type === type).value;
  return `${get("year")}-${get("month")}-${get("day")}`;
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return "just now";
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 2 * 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}

function position(location) {
  if (!location) return "–";
  const lat = `${Math.abs(location.lat).toFixed(4)}° ${location.lat < 0 ? "S" : "N"}`;
  const lon = `${Math.abs(location.lon).toFixed(4)}° ${location.lon < 0 ? "W" : "E"}`;
  return `${lat}, ${lon}`;
}

function riskLevel(value) {
  if (value === null || value === undefined) return "none";
  if (value >= 0.6) return "high";
  if (value >= 0.3) return "elevated";
  return "low";
}

// ---- fleet table -------------------------------------------------------------------------------

function socCell(reading) {
  if (!reading) return el("td", { class: "soc-col muted", text: "–" });
  const value = reading.value;
  const bar = el("span", { class: "soc-bar" }, el("span", { class: "soc-fill" }));
  const fill = bar.firstChild;
  fill.style.width = `${Math.max(0, Math.min(100, value))}%`;
  fill.classList.add(value < 20 ? "soc-low" : value < 40 ? "soc-mid" : "soc-ok");
  return el("td", { class: "soc-col" }, bar, el("span", { class: "soc-value", text: `${num(value, 1)} %` }));
}

function alertBadges(alerts) {
  const cell = el("td", { class: "alerts" });
  if (alerts.length === 0) cell.append(el("span", { class: "muted", text: "none" }));
  for (const alert of alerts) {
    cell.append(el("span", { class: `badge sev-${alert.severity}`, title: alert.message, text: alert.rule.replaceAll("_", " ") }));
  }
  return cell;
}

function riskCell(risk) {
  if (!risk) return el("td", {}, el("span", { class: "muted", text: "no model output" }));
  const level = riskLevel(risk.value);
  return el(
    "td",
    { title: `${risk.model} · ${risk.output} at ${dateTime(risk.ts)}` },
    el("span", { class: `risk risk-${level}`, text: `${level} · ${num(risk.value * 100, 0)} %` }),
  );
}

function statusCell(bus) {
  const known = bus.online !== null;
  const label = !known ? "unknown" : bus.online ? "online" : "offline";
  return el("td", {}, el("span", { class: `status status-${label}` }, el("i"), label));
}

function renderFleet() {
  const body = document.querySelector("#fleet-table tbody");
  body.replaceChildren();
  for (const bus of state.buses) {
    const power = bus.pack_power_kw ? bus.pack_power_kw.value : null;
    const row = el(
      "tr",
      { "data-bus": bus.id, tabindex: "0", class: bus.id === state.selected ? "selected" : "" },
      el("td", { class: "bus-id" }, el("strong", { text: bus.id }), el("small", { text: bus.fleet })),
      statusCell(bus),
      socCell(bus.soc_pct),
      el("td", { class: "num", text: bus.speed_kmh ? `${num(bus.speed_kmh.value, 0)} km/h` : "–" }),
      el("td", { class: `num ${power !== null && power < 0 ? "charging" : ""}`, text: power === null ? "–" : `${num(power, 0)} kW` }),
      el("td", { class: "mono", text: position(bus.location) }),
      el("td", {}, el("span", { text: dateTime(bus.last_seen) }), el("small", { class: "muted", text: ago(bus.last_seen) })),
      alertBadges(bus.active_alerts),
      riskCell(bus.risk),
    );
    row.addEventListener("click", () => selectBus(bus.id));
    row.addEventListener("keydown", (event) => {
      if (event.key === "Enter") selectBus(bus.id);
    });
    body.append(row);
  }
}

function renderSummary(asOf) {
  const buses = state.buses;
  const online = buses.filter((b) => b.online).length;
  const socs = buses.filter((b) => b.soc_pct).map((b) => b.soc_pct.value);
  const alerts = buses.reduce((n, b) => n + b.active_alerts.length, 0);
  const critical = buses.reduce((n, b) => n + b.active_alerts.filter((a) => a.severity === "critical").length, 0);
  const highRisk = buses.filter((b) => b.risk && riskLevel(b.risk.value) === "high").length;
  const items = [
    ["Buses", String(buses.length), ""],
    ["Online", `${online}`, ""],
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
  state.timeZone = body.time_zone;
  renderSummary(body.as_of);
  renderFleet();
}

// ---- charts ------------------------------------------------------------------------------------

function niceStep(span, target) {
  const raw = span / Math.max(1, target);
  const power = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * power >= raw) return m * power;
  return 10 * power;
}

const TIME_STEPS = [5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880].map((m) => m * 60e3);

function timeTicks(t0, t1, target) {
  const step = TIME_STEPS.find((s) => (t1 - t0) / s <= target) || 7 * DAY_MS;
  // align on the fleet's local clock: offset of the time zone at t0
  const probe = new Date(t0);
  const local = Date.UTC(...(() => {
    const p = formatter({ year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric" }).formatToParts(probe);
    const g = (type) => Number(p.find((x) => x.type === type).value);
    return [g("year"), g("month") - 1, g("day"), g("hour"), g("minute")];
  })());
  const offset = local - Math.floor(t0 / 60e3) * 60e3;
  const ticks = [];
  for (let t = Math.ceil((t0 + offset) / step) * step - offset; t <= t1; t += step) ticks.push(t);
  return { ticks, step };
}

function tickLabel(t, step) {
  if (step >= DAY_MS) return formatter({ day: "2-digit", month: "short" }).format(new Date(t));
  const hm = formatter({ hour: "2-digit", minute: "2-digit" }).format(new Date(t));
  return hm === "00:00" ? formatter({ day: "2-digit", month: "short" }).format(new Date(t)) : hm;
}

// Splits points into runs wherever the gap is much longer than the usual spacing (missing data).
function runs(points) {
  if (points.length < 2) return [points];
  const gaps = [];
  for (let i = 1; i < points.length; i++) gaps.push(points[i].t - points[i - 1].t);
  const typical = gaps.slice().sort((a, b) => a - b)[Math.floor(gaps.length / 2)];
  const out = [[points[0]]];
  for (let i = 1; i < points.length; i++) {
    if (points[i].t - points[i - 1].t > 5 * typical) out.push([]);
    out[out.length - 1].push(points[i]);
  }
  return out;
}

// Merges points into at most `bins` time bins (mean of means, min of minima, max of maxima), so a
// long range draws one value per couple of pixels instead of a solid block of zigzags.
function binPoints(points, t0, t1, bins) {
  if (points.length <= bins) return points;
  const width = (t1 - t0) / bins;
  const out = [];
  let current = null;
  for (const p of points) {
    const bin = Math.floor((p.t - t0) / width);
    if (!current || current.bin !== bin) {
      current = { bin, t: 0, sum: 0, n: 0, lo: null, hi: null };
      out.push(current);
    }
    if (p.v !== null) {
      current.sum += p.v;
      current.t += p.t;
      current.n += 1;
    }
    if (p.lo !== null && p.lo !== undefined) current.lo = current.lo === null ? p.lo : Math.min(current.lo, p.lo);
    if (p.hi !== null && p.hi !== undefined) current.hi = current.hi === null ? p.hi : Math.max(current.hi, p.hi);
  }
  return out
    .filter((b) => b.n > 0)
    .map((b) => ({ t: b.t / b.n, v: b.sum / b.n, lo: b.lo, hi: b.hi }));
}

function drawChart(container, options) {
  const width = Math.max(320, container.clientWidth || 560);
  const height = 210;
  const m = { left: 46, right: 14, top: 12, bottom: 26 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const { t0, t1 } = options;
  const values = [];
  for (const s of options.series) {
    for (const p of s.points) {
      if (p.v !== null) values.push(p.v);
      if (s.band && p.lo !== null) values.push(p.lo, p.hi);
    }
  }
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "chart-svg", role: "img" });
  container.replaceChildren(root);
  if (values.length === 0) {
    const empty = svg("text", { x: width / 2, y: height / 2, class: "empty", "text-anchor": "middle" });
    empty.textContent = "No data in this range";
    root.append(empty);
    return;
  }
  let lo = options.yMin !== undefined ? Math.min(options.yMin, ...values) : Math.min(...values);
  let hi = options.yMax !== undefined ? Math.max(options.yMax, ...values) : Math.max(...values);
  if (hi - lo < 1e-9) { lo -= 1; hi += 1; }
  const yStep = niceStep(hi - lo, 5);
  lo = Math.floor(lo / yStep) * yStep;
  hi = Math.ceil(hi / yStep) * yStep;
  const x = (t) => m.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => m.top + (1 - (v - lo) / (hi - lo)) * plotH;

  const grid = svg("g", { class: "grid-lines" });
  for (let v = lo; v <= hi + yStep / 2; v += yStep) {
    grid.append(svg("line", { x1: m.left, x2: width - m.right, y1: y(v), y2: y(v), class: Math.abs(v) < 1e-9 ? "zero" : "" }));
    const label = svg("text", { x: m.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" });
    label.textContent = num(v, yStep < 1 ? 1 : 0);
    grid.append(label);
  }
  const { ticks, step } = timeTicks(t0, t1, Math.max(3, Math.floor(plotW / 90)));
  for (const t of ticks) {
    grid.append(svg("line", { x1: x(t), x2: x(t), y1: m.top, y2: m.top + plotH, class: "vertical" }));
    const label = svg("text", { x: x(t), y: height - 8, "text-anchor": "middle", class: "axis" });
    label.textContent = tickLabel(t, step);
    grid.append(label);
  }
  root.append(grid);

  for (const s of options.series) {
    const inRange = binPoints(s.points.filter((p) => p.t >= t0 && p.t <= t1), t0, t1, Math.floor(plotW / 3));
    for (const run of runs(inRange)) {
      if (s.band) {
        const banded = run.filter((p) => p.lo !== null && p.hi !== null);
        if (banded.length > 1) {
          const upper = banded.map((p) => `${x(p.t).toFixed(1)},${y(p.hi).toFixed(1)}`);
          const lower = banded.slice().reverse().map((p) => `${x(p.t).toFixed(1)},${y(p.lo).toFixed(1)}`);
          root.append(svg("polygon", { points: upper.concat(lower).join(" "), fill: s.color, "fill-opacity": 0.14, stroke: "none" }));
        }
      }
      const drawn = run.filter((p) => p.v !== null);
      if (drawn.length === 0) continue;
      if (s.area && drawn.length > 1) {
        const base = y(Math.min(hi, Math.max(lo, 0))).toFixed(1);
        const top = drawn.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
        const edges = [`${x(drawn[drawn.length - 1].t).toFixed(1)},${base}`, `${x(drawn[0].t).toFixed(1)},${base}`];
        root.append(svg("polygon", { points: top.concat(edges).join(" "), fill: s.color, "fill-opacity": 0.12, stroke: "none" }));
      }
      if (s.markers || drawn.length === 1) {
        for (const p of drawn) root.append(svg("circle", { cx: x(p.t), cy: y(p.v), r: 2, fill: s.color }));
      }
      if (drawn.length > 1) {
        const d = drawn.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
        const attrs = { d, fill: "none", stroke: s.color, "stroke-width": 1.8, "stroke-linejoin": "round" };
        if (s.dashed) attrs["stroke-dasharray"] = "5 4";
        root.append(svg("path", attrs));
      }
    }
  }

  // legend
  let lx = m.left + 6;
  for (const s of options.series) {
    if (!s.name) continue;
    root.append(svg("rect", { x: lx, y: m.top + 4, width: 12, height: 3, fill: s.color }));
    const label = svg("text", { x: lx + 16, y: m.top + 9, class: "legend" });
    label.textContent = s.name;
    root.append(label);
    lx += 24 + s.name.length * 6.2;
  }

  // hover: a crosshair and the nearest values
  const cursor = svg("g", { class: "cursor", visibility: "hidden" });
  const line = svg("line", { y1: m.top, y2: m.top + plotH });
  const readout = svg("text", { y: m.top + plotH - 6, class: "readout" });
  cursor.append(line, readout);
  root.append(cursor);
  const overlay = svg("rect", { x: m.left, y: m.top, width: plotW, height: plotH, fill: "transparent" });
  overlay.addEventListener("mousemove", (event) => {
    const box = root.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * width;
    const t = t0 + ((px - m.left) / plotW) * (t1 - t0);
    const parts = [tickLabel(t, HOUR_MS) === "00:00" ? "" : formatter({ hour: "2-digit", minute: "2-digit" }).format(new Date(t))];
    for (const s of options.series) {
      let best = null;
      for (const p of s.points) if (p.v !== null && (best === null || Math.abs(p.t - t) < Math.abs(best.t - t))) best = p;
      if (best) parts.push(`${s.name || options.unit}: ${num(best.v, 1)}`);
    }
    line.setAttribute("x1", px);
    line.setAttribute("x2", px);
    readout.textContent = parts.filter(Boolean).join("  ·  ");
    const right = px > m.left + plotW / 2;
    readout.setAttribute("x", right ? px - 6 : px + 6);
    readout.setAttribute("text-anchor", right ? "end" : "start");
    cursor.setAttribute("visibility", "visible");
  });
  overlay.addEventListener("mouseleave", () => cursor.setAttribute("visibility", "hidden"));
  root.append(overlay);
}

function seriesPoints(body) {
  return body.points.map((p) => ({ t: Date.parse(p.ts), v: p.avg, lo: p.min, hi: p.max }));
}

// ---- bus detail ----------------------------------------------------------------------------------

async function selectBus(id) {
  const hash = `#bus=${encodeURIComponent(id)}`;
  if (window.location.hash !== hash) window.history.pushState(null, "", hash); // no hashchange event
  state.selected = id;
  for (const row of document.querySelectorAll("#fleet-table tbody tr")) {
    row.classList.toggle("selected", row.dataset.bus === id);
  }
  await loadBus();
}

async function loadBus() {
  const bus = state.buses.find((b) => b.id === state.selected);
  const panel = document.getElementById("bus-panel");
  if (!bus) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  document.getElementById("bus-title").textContent = bus.id;
  const meta = [bus.fleet, bus.vin ? `VIN ${bus.vin}` : null, bus.battery_capacity_kwh ? `${num(bus.battery_capacity_kwh, 0)} kWh pack` : null];
  document.getElementById("bus-meta").textContent = meta.filter(Boolean).join(" · ");
  for (const button of document.querySelectorAll("#range-buttons button")) {
    button.classList.toggle("active", Number(button.dataset.hours) === state.hours);
  }
  const end = Date.parse(bus.data_until || bus.last_seen) + 1000;
  const start = end - state.hours * HOUR_MS;
  const range = { from: isoUtc(start), to: isoUtc(end) };
  const path = `/api/buses/${encodeURIComponent(bus.id)}`;
  const [soc, speed, power, predictions] = await Promise.all([
    api(`${path}/series`, { signal: SOC, ...range }),
    api(`${path}/series`, { signal: SPEED, ...range }),
    api(`${path}/series`, { signal: POWER, ...range }),
    api(`${path}/predictions`, { from: isoUtc(start - HOUR_MS), to: isoUtc(end) }),
  ]);
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
  await loadTrips(bus, start, end);
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

// ---- wiring --------------------------------------------------------------------------------------

function busFromHash() {
  return hashParams().get("bus") || null;
}

async function loadAll() {
  await loadFleet();
  const first = busFromHash() || state.selected || (state.buses[0] && state.buses[0].id);
  await Promise.all([first ? selectBus(first) : Promise.resolve(), loadKpis()]);
}

async function main() {
  loadToken();
  for (const button of document.querySelectorAll("#range-buttons button")) {
    button.addEventListener("click", () => {
      state.hours = Number(button.dataset.hours);
      loadBus().catch(showError);
    });
  }
  for (const event of ["hashchange", "popstate"]) {
    window.addEventListener(event, () => {
      if (takeToken()) {
        // a token pasted into the address bar: load everything again with it
        document.getElementById("banner").hidden = true;
        loadAll().catch(showError);
        return;
      }
      const id = busFromHash();
      if (id && id !== state.selected) selectBus(id).catch(showError);
    });
  }
  try {
    await loadAll();
    document.body.dataset.state = "ready";
  } catch (error) {
    showError(error);
    document.body.dataset.state = "error";
  }
  window.setInterval(() => loadFleet().catch(showError), 30e3);
}

document.addEventListener("DOMContentLoaded", main);
