// voltgate fleet page: the bus's charts, hand-drawn SVG (a time axis on the fleet's clock, a band
// of min–max per bucket, gaps where data is missing, a hover readout).

import { DAY_MS, HOUR_MS, formatter, num, svg } from "./common.js";

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

export function drawChart(container, options) {
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

export function seriesPoints(body) {
  return body.points.map((p) => ({ t: Date.parse(p.ts), v: p.avg, lo: p.min, hi: p.max }));
}
