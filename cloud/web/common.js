// voltgate fleet page, shared by its modules: the page's state, the API client (with the access
// token), DOM and number/time formatting helpers, and how predicted risk and active alerts combine.
// No other origin: the server's Content-Security-Policy forbids it.

export const SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current";
export const SPEED = "Vehicle.Speed";
export const POWER = "pack_power_kw";
export const LATITUDE = "Vehicle.CurrentLocation.Latitude";
export const LONGITUDE = "Vehicle.CurrentLocation.Longitude";
export const HOUR_MS = 3600e3;
export const DAY_MS = 24 * HOUR_MS;
export const LOW_SOC_PCT = 20;
const SVG_NS = "http://www.w3.org/2000/svg";

export const state = { buses: [], byId: new Map(), timeZone: "UTC", selected: null, hours: null, token: null, maxRangeDays: null };

// ---- access token --------------------------------------------------------------------------------
// A server with web.api_tokens wants `Authorization: Bearer <token>` on its API calls. The page is
// opened once as /#token=<token> (a fragment never reaches a server or a log): the token is kept for
// this tab in sessionStorage and taken out of the address bar, then sent with every call.

const TOKEN_KEY = "voltgate.apiToken";

export function hashParams() {
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
export function takeToken() {
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

export function loadToken() {
  if (takeToken()) return;
  try {
    state.token = window.sessionStorage.getItem(TOKEN_KEY);
  } catch {
    state.token = null;
  }
}

// ---- small helpers -----------------------------------------------------------------------------

export function el(tag, attrs, ...children) {
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

export function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  return node;
}

export async function api(path, params) {
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

export function showError(error) {
  const banner = document.getElementById("banner");
  banner.textContent = String(error.message || error);
  banner.hidden = false;
}

export function num(value, digits) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value.toLocaleString("en-GB", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export function isoUtc(ms) {
  return new Date(ms).toISOString().replace(".000Z", "Z");
}

export function formatter(options) {
  return new Intl.DateTimeFormat("en-GB", { timeZone: state.timeZone, hourCycle: "h23", ...options });
}

export function dateTime(iso) {
  if (!iso) return "–";
  return formatter({ day: "2-digit", month: "short", hour: "2-digit", minute: "2-digit" }).format(new Date(iso));
}

export function localDay(ms) {
  // YYYY-MM-DD of an instant in the fleet's time zone
  const parts = formatter({ year: "numeric", month: "2-digit", day: "2-digit" }).formatToParts(new Date(ms));
  const get = (type) => parts.find((p) => p.type === type).value;
  return `${get("year")}-${get("month")}-${get("day")}`;
}

export function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 90) return "just now";
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 2 * 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} days ago`;
}

export function position(location) {
  if (!location) return "–";
  const lat = `${Math.abs(location.lat).toFixed(4)}° ${location.lat < 0 ? "S" : "N"}`;
  const lon = `${Math.abs(location.lon).toFixed(4)}° ${location.lon < 0 ? "W" : "E"}`;
  return `${lat}, ${lon}`;
}

// ---- risk ----------------------------------------------------------------------------------------
// The risk shown for a bus is the higher of two levels, so that it never reads "low" beside an
// active critical alert:
//   predicted: the highest latest probability output of the bus's models (`risk` in the API):
//              high from 60 %, elevated from 30 %, else low; "none" without any model output;
//   alerts:    an active critical alert is high, an active warning elevated.
// The label says which decided it ("alert" or the probability), so neither is hidden.

const LEVELS = ["none", "low", "elevated", "high"];

export function predictedLevel(value) {
  if (value === null || value === undefined) return "none";
  if (value >= 0.6) return "high";
  if (value >= 0.3) return "elevated";
  return "low";
}

export function alertLevel(alerts) {
  if (alerts.some((a) => a.severity === "critical")) return "high";
  if (alerts.some((a) => a.severity === "warning")) return "elevated";
  return "none";
}

export function worstSeverity(alerts) {
  for (const severity of ["critical", "warning", "info"]) {
    if (alerts.some((a) => a.severity === severity)) return severity;
  }
  return null;
}

// {level, source, label, text}: level in none/low/elevated/high; source "alert", "model" or null;
// label for a narrow column, text with the model's figure too.
export function combinedRisk(bus) {
  const predicted = predictedLevel(bus.risk ? bus.risk.value : null);
  const alerted = alertLevel(bus.active_alerts);
  const percent = bus.risk ? `${num(bus.risk.value * 100, 0)} %` : null;
  if (LEVELS.indexOf(alerted) > LEVELS.indexOf(predicted)) {
    const text = `${alerted} · active alert${percent ? ` (model: ${predicted}, ${percent})` : ""}`;
    return { level: alerted, source: "alert", label: `${alerted} · alert`, text };
  }
  if (predicted === "none") return { level: "none", source: null, label: "no model", text: "no model output" };
  return { level: predicted, source: "model", label: `${predicted} · ${percent}`, text: `${predicted} · ${percent}` };
}

// 0 (none) to 3 (high): the combined level, for sorting and filtering.
export function riskRank(bus) {
  const predicted = LEVELS.indexOf(predictedLevel(bus.risk ? bus.risk.value : null));
  return Math.max(predicted, LEVELS.indexOf(alertLevel(bus.active_alerts)));
}
