// voltgate fleet page: the fleet list beside the map. Search, filter and sort work on rows built
// once per refresh (a thousand buses): applying them only hides and reorders existing rows.

import { LOW_SOC_PCT, ago, combinedRisk, el, num, riskRank, worstSeverity } from "./common.js";

// Each takes an entry of the list: {bus, row, text, risk, attention, soc}, computed once per refresh.
export const FILTERS = {
  all: () => true,
  online: (e) => e.bus.online === true,
  alerting: (e) => e.bus.active_alerts.length > 0,
  "low-soc": (e) => e.soc < LOW_SOC_PCT,
  "at-risk": (e) => e.risk >= 2, // elevated or high, from the model or an alert
};

const SEVERITY_RANK = { critical: 3, warning: 2, info: 1 };

// Most urgent first: critical alerts, then risk, then low SOC, then the rest; ties by id.
function attention(bus, risk) {
  const severity = SEVERITY_RANK[worstSeverity(bus.active_alerts)] || 0;
  const lowSoc = bus.soc_pct !== null && bus.soc_pct.value < LOW_SOC_PCT ? 1 : 0;
  return severity * 100 + risk * 10 + lowSoc;
}

const byId = (a, b) => (a.bus.id < b.bus.id ? -1 : a.bus.id > b.bus.id ? 1 : 0);
const probability = (e) => (e.bus.risk ? e.bus.risk.value : -1);

export const SORTS = {
  attention: (a, b) => b.attention - a.attention || byId(a, b),
  id: byId,
  "soc-asc": (a, b) => a.soc - b.soc || byId(a, b), // no SOC (Infinity) last
  "last-seen": (a, b) => b.lastSeen - a.lastSeen || byId(a, b),
  risk: (a, b) => b.risk - a.risk || probability(b) - probability(a) || byId(a, b),
};

// What the search box matches: id, fleet, VIN and the active alerts' rules, in lower case.
function searchText(bus) {
  return [bus.id, bus.fleet, bus.vin || "", ...bus.active_alerts.map((a) => a.rule.replaceAll("_", " "))]
    .join(" ")
    .toLowerCase();
}

// The marker/row tone: the most urgent of critical, warning, low SOC; else the link status.
export function busTone(bus) {
  const severity = worstSeverity(bus.active_alerts);
  if (severity === "critical") return "crit";
  if (severity === "warning") return "warn";
  if (bus.soc_pct !== null && bus.soc_pct.value < LOW_SOC_PCT) return "low";
  if (bus.online === null) return "unknown";
  return bus.online ? "ok" : "off";
}

function statusLabel(bus) {
  return bus.online === null ? "unknown" : bus.online ? "online" : "offline";
}

function socBlock(reading) {
  if (!reading) return el("span", { class: "row-soc muted", text: "SOC –" });
  const fill = el("span", { class: "soc-fill" });
  fill.style.width = `${Math.max(0, Math.min(100, reading.value))}%`;
  fill.classList.add(reading.value < LOW_SOC_PCT ? "soc-low" : reading.value < 40 ? "soc-mid" : "soc-ok");
  return el("span", { class: "row-soc" }, el("span", { class: "soc-bar" }, fill), el("span", { class: "soc-value", text: `${num(reading.value, 0)} %` }));
}

// One chip for the most severe alert and "+N" for the rest: a row never grows sideways.
function alertChips(alerts) {
  const box = el("span", { class: "row-alerts" });
  if (alerts.length === 0) return box;
  const first = alerts[0]; // the API lists a bus's active alerts most severe first
  box.append(el("span", { class: `badge sev-${first.severity}`, title: first.message, text: first.rule.replaceAll("_", " ") }));
  if (alerts.length > 1) {
    const rest = alerts.slice(1).map((a) => `${a.severity}: ${a.rule.replaceAll("_", " ")}`).join("\n");
    box.append(el("span", { class: "badge more", title: rest, text: `+${alerts.length - 1}` }));
  }
  return box;
}

function busRow(bus) {
  const risk = combinedRisk(bus);
  const row = el(
    "li",
    { class: `bus-row tone-${busTone(bus)}`, "data-bus": bus.id, tabindex: "0", role: "option" },
    el("span", { class: `status status-${statusLabel(bus)}`, title: statusLabel(bus) }, el("i")),
    el("span", { class: "row-id" }, el("strong", { text: bus.id }), el("small", { text: `${bus.fleet} · ${ago(bus.data_until || bus.last_seen)}` })),
    socBlock(bus.soc_pct),
    el("span", { class: `risk risk-${risk.level}`, title: `risk: ${risk.text}`, text: risk.label }),
    alertChips(bus.active_alerts),
  );
  return row;
}

export class FleetList {
  constructor(list, count, onSelect) {
    this.list = list;
    this.count = count;
    this.buses = [];
    this.rows = new Map();
    this.query = "";
    this.filter = "all";
    this.sort = "attention";
    this.selected = null;
    this.onChange = () => {};
    list.addEventListener("click", (event) => {
      const row = event.target.closest("[data-bus]");
      if (row) onSelect(row.dataset.bus);
    });
    list.addEventListener("keydown", (event) => {
      const row = event.target.closest("[data-bus]");
      if (!row) return;
      if (event.key === "Enter") onSelect(row.dataset.bus);
      const next = event.key === "ArrowDown" ? row.nextElementSibling : event.key === "ArrowUp" ? row.previousElementSibling : null;
      if (next) {
        event.preventDefault();
        next.focus();
      }
    });
  }

  setBuses(buses) {
    this.buses = buses;
    this.rows = new Map();
    for (const bus of buses) {
      const risk = riskRank(bus);
      this.rows.set(bus.id, {
        bus,
        row: busRow(bus),
        text: searchText(bus),
        risk,
        attention: attention(bus, risk),
        soc: bus.soc_pct ? bus.soc_pct.value : Infinity,
        lastSeen: Date.parse(bus.last_seen),
      });
    }
    this.apply();
  }

  set(changes) {
    Object.assign(this, changes);
    this.apply();
  }

  // The buses that pass the search and the filter, in the chosen order; the list shows just those.
  visible() {
    const terms = this.query.toLowerCase().split(/\s+/).filter(Boolean);
    const keep = FILTERS[this.filter] || FILTERS.all;
    const shown = [];
    for (const entry of this.rows.values()) {
      if (keep(entry) && terms.every((term) => entry.text.includes(term))) shown.push(entry);
    }
    return shown.sort(SORTS[this.sort] || SORTS.attention).map((entry) => entry.bus);
  }

  apply() {
    const shown = this.visible();
    this.list.replaceChildren(...shown.map((bus) => this.rows.get(bus.id).row));
    if (shown.length === 0) this.list.append(el("li", { class: "empty muted", text: "No bus matches" }));
    this.count.textContent = `${shown.length.toLocaleString("en-GB")} of ${this.buses.length.toLocaleString("en-GB")}`;
    this.markSelected(this.selected);
    this.onChange(shown);
  }

  markSelected(id) {
    const before = this.selected ? this.rows.get(this.selected) : null;
    if (before) before.row.classList.remove("selected");
    this.selected = id;
    const entry = id ? this.rows.get(id) : null;
    if (entry) entry.row.classList.add("selected");
  }

  reveal(id) {
    const entry = this.rows.get(id);
    if (entry && entry.row.isConnected) entry.row.scrollIntoView({ block: "nearest" });
  }
}
