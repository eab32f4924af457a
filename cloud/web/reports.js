// voltgate fleet page, below the map: "will it finish its block?" (the buses ranked by the risk of
// running out before their block ends, the on-device forecast beside each) and the pay-per-km report
// (a date range, per bus per day/week/month, the flags a bill needs, and its CSV).

import { api, dateTime, el, num, state } from "./common.js";

// A table shows at most this many rows (a large fleet's rest: the API, the CSV); the note says so.
const MAX_ROWS = 200;

function shownOf(rows, what) {
  return rows.length > MAX_ROWS ? ` · showing ${MAX_ROWS.toLocaleString("en-GB")} of ${rows.length.toLocaleString("en-GB")} ${what}` : "";
}

// ---- will it finish its block? -------------------------------------------------------------------

function verdict(risk) {
  if (risk.divert === true) return el("span", { class: "badge sev-critical", text: "divert to charge" });
  if (risk.divert === false) return el("span", { class: "badge verdict-ok", text: "can finish" });
  return el("span", { class: "muted", text: "no answer" });
}

const CAPACITY = { settings: "configured", status: "reported", "settings+soh": "configured × SoH", "status+soh": "reported × SoH" };

function capacityText(r) {
  if (r.usable_kwh === null) return "–";
  const soh = r.soh_pct === null ? "" : ` · SoH ${num(Math.min(r.soh_pct, 100), 0)} %`;
  return `${num(r.usable_kwh, 0)} (${CAPACITY[r.capacity_source] || r.capacity_source}${soh})`;
}

function forecastText(r) {
  if (r.forecast_drop_pp === null) return "–";
  const soc = `${num(r.forecast_soc_pct, 0)} % in 60 min`;
  const hours = r.forecast_hours_to_reserve === null ? "" : ` · reserve in ${num(r.forecast_hours_to_reserve, 1)} h`;
  const short = r.forecast_short === true ? " · short" : "";
  return soc + hours + short;
}

// `at`: the instant to assess (the fleet's latest data); `open(id)` opens a bus.
export async function loadBlockRisk(at, open) {
  const body = await api("/api/fleet/block-risk", { at });
  const table = document.getElementById("block-risk-table");
  table.dataset.at = body.at;
  const diverting = body.buses.filter((r) => r.divert === true).length;
  document.getElementById("block-risk-note").textContent =
    `${dateTime(body.at)} · reserve ${num(body.reserve_soc_pct, 0)} % SOC · ${diverting} to divert${shownOf(body.buses, "buses, highest risk first")}`;
  const tbody = table.querySelector("tbody");
  tbody.replaceChildren();
  if (body.buses.length === 0) tbody.append(el("tr", {}, el("td", { colspan: "11", class: "muted", text: "No buses" })));
  for (const r of body.buses.slice(0, MAX_ROWS)) {
    const link = el("a", { href: `#/bus/${encodeURIComponent(r.vehicle_id)}`, class: "bus-id", text: r.vehicle_id });
    link.addEventListener("click", (event) => {
      event.preventDefault();
      open(r.vehicle_id);
      window.scrollTo({ top: 0 });
    });
    const risk = r.risk === null && r.divert === true ? "∞" : num(r.risk, 2);
    const soc = r.soc_needed_pct === null ? num(r.soc_pct, 0) : `${num(r.soc_pct, 0)} → ${num(r.soc_needed_pct, 0)}`;
    tbody.append(
      el(
        "tr",
        { "data-bus": r.vehicle_id, title: r.reason, class: r.divert ? "divert" : "" },
        el("td", {}, link),
        el("td", {}, verdict(r)),
        el("td", { class: "num", text: risk }),
        el("td", { class: "num", text: soc }),
        el("td", { class: "num", text: num(r.range_km, 1) }),
        el("td", { class: "num", text: r.remaining_km === null ? "–" : `${num(r.remaining_km, 1)} (${(r.remaining_source || "").replace("_", " ")})` }),
        el("td", { class: `num ${r.margin_km !== null && r.margin_km < 0 ? "crit" : ""}`, text: num(r.margin_km, 1) }),
        el("td", { class: "num", text: num(r.kwh_per_km, 2) }),
        el("td", { class: "num", text: capacityText(r) }),
        el("td", { class: "num forecast", text: forecastText(r) }),
        el("td", { class: "reason", text: r.reason }),
      ),
    );
  }
}

// ---- pay-per-km report ---------------------------------------------------------------------------

function billingParams() {
  return {
    from: document.getElementById("billing-from").value,
    to: document.getElementById("billing-to").value,
    period: document.getElementById("billing-period").value,
    tz: state.timeZone,
  };
}

function csvUrl(params) {
  const url = new URL("/api/reports/billing", window.location.origin);
  for (const [key, value] of Object.entries({ ...params, format: "csv" })) url.searchParams.set(key, value);
  return url.pathname + url.search;
}

// With an API token the link cannot send it: fetch the file with it and hand the browser the bytes.
async function downloadWithToken(event) {
  if (!state.token) return; // the link itself downloads
  event.preventDefault();
  const link = event.currentTarget;
  const response = await fetch(link.getAttribute("href"), { headers: { Authorization: `Bearer ${state.token}` } });
  if (!response.ok) return;
  const file = URL.createObjectURL(await response.blob());
  const temporary = el("a", { href: file, download: link.getAttribute("download") });
  document.body.append(temporary);
  temporary.click();
  temporary.remove();
  URL.revokeObjectURL(file);
}

function flagChips(flags) {
  const cell = el("td", { class: "flags" });
  if (flags.length === 0) cell.append(el("span", { class: "muted", text: "–" }));
  for (const flag of flags) cell.append(el("span", { class: "badge sev-warning", "data-flag": flag, text: flag.replaceAll("_", " ") }));
  return cell;
}

export async function loadBilling() {
  const params = billingParams();
  const note = document.getElementById("billing-note");
  const link = document.getElementById("billing-csv");
  const tbody = document.querySelector("#billing-table tbody");
  let body;
  try {
    body = await api("/api/reports/billing", params);
  } catch (error) {
    note.textContent = String(error.message || error).replace(/^\/api\/reports\/billing: /, "");
    note.classList.add("error");
    link.hidden = true;
    tbody.replaceChildren();
    return;
  }
  note.classList.remove("error");
  const flagged = body.rows.filter((r) => r.flags.length > 0).length;
  const km = body.rows.reduce((n, r) => n + r.odometer_km, 0);
  note.textContent = `${body.from} – ${body.to} · ${body.tz} · ${num(km, 1)} km · ${flagged} row${flagged === 1 ? "" : "s"} flagged${shownOf(body.rows, "rows (the CSV has all)")}`;
  link.hidden = false;
  link.setAttribute("href", csvUrl(params));
  link.setAttribute("download", `billing_${body.from}_${body.to}_${body.period}.csv`);
  tbody.replaceChildren();
  if (body.rows.length === 0) tbody.append(el("tr", {}, el("td", { colspan: "11", class: "muted", text: "No data in this range" })));
  for (const r of body.rows.slice(0, MAX_ROWS)) {
    const period = r.period_start === r.period_end ? r.period_start : `${r.period_start} – ${r.period_end}`;
    tbody.append(
      el(
        "tr",
        { "data-bus": r.vehicle_id, "data-period": r.period_start },
        el("td", { class: "bus-id", text: r.vehicle_id }),
        el("td", { text: period }),
        el("td", { class: "num", text: num(r.odometer_km, 1) }),
        el("td", { class: "num", text: num(r.gps_km, 1) }),
        el("td", { class: "num", text: num(r.gps_odometer_diff_pct, 1) }),
        el("td", { class: "num", text: num(r.energy_used_kwh, 1) }),
        el("td", { class: "num", text: num(r.charging_hours, 1) }),
        el("td", { class: "num", text: `${r.days_with_data} / ${r.days}` }),
        el("td", { class: "num", text: r.data_gaps ? `${r.data_gaps} (${num(r.longest_gap_min, 0)} min)` : "–" }),
        el("td", { class: "num", text: num(r.km_over_gaps, 1) }),
        flagChips(r.flags),
      ),
    );
  }
}

// The report's controls: its range starts as the last `days` local days to `to` (YYYY-MM-DD).
export function wireBilling(from, to) {
  document.getElementById("billing-from").value = from;
  document.getElementById("billing-to").value = to;
  document.getElementById("billing-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadBilling();
  });
  document.getElementById("billing-csv").addEventListener("click", (event) => {
    downloadWithToken(event).catch(() => {});
  });
}
