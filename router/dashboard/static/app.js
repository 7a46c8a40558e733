// The router dashboard: fetches /dashboard/api/... every few seconds and draws tables and SVG charts.
// Plain browser JavaScript, no library and no build step. Every value from the ledger goes into the page as
// text (textContent, SVG attributes), never as HTML.
"use strict";

(() => {
  const meta = (name, fallback) => {
    const m = document.querySelector(`meta[name="${name}"]`);
    return m && !m.content.startsWith("{{") ? m.content : fallback;
  };
  const REFRESH_MS = Math.max(1, parseFloat(meta("router-refresh-s", "5")) || 5) * 1000;
  const RECENT = parseInt(meta("router-recent", "50"), 10) || 50;
  const SIMULATION_MS = 60000;
  // location.origin and pathname carry no user:password, which fetch() refuses in a URL
  const BASE = location.origin + location.pathname.replace(/\/+$/, "");
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#0f766e", "#2563eb", "#d97706", "#7c3aed", "#db2777", "#059669", "#dc2626", "#4b5563",
    "#0891b2", "#65a30d", "#9333ea", "#ea580c"];
  const colors = new Map();
  const $ = (id) => document.getElementById(id);

  // -- formatting ------------------------------------------------------------------------------------------
  const sig = (x) => Number(x.toPrecision(3)).toLocaleString("en-US", { maximumFractionDigits: 3 });
  function fmtJ(j) {
    const a = Math.abs(j);
    if (!a) return "0 J";
    if (a < 1) return `${sig(j * 1000)} mJ`;
    if (a < 1e3) return `${sig(j)} J`;
    if (a < 1e6) return `${sig(j / 1e3)} kJ`;
    if (a < 1e9) return `${sig(j / 1e6)} MJ`;
    return `${sig(j / 1e9)} GJ`;
  }
  function fmtG(g) {
    const a = Math.abs(g);
    if (!a) return "0 g";
    if (a < 1) return `${sig(g * 1000)} mg`;
    if (a < 1e3) return `${sig(g)} g`;
    return `${sig(g / 1e3)} kg`;
  }
  const fmtInt = (n) => Math.round(n).toLocaleString("en-US");
  const fmtPct = (x) => (x > 0 && x < 0.001 ? "< 0.1 %" : `${(100 * x).toFixed(x > 0 && x < 0.1 ? 1 : 0)} %`);
  const fmtMs = (ms) => (ms < 1000 ? `${ms.toFixed(ms < 10 ? 1 : 0)} ms` : `${(ms / 1000).toFixed(2)} s`);
  function fmtDuration(s) {
    if (s < 60) return `${Math.max(0, Math.round(s))} s`;
    if (s < 3600) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} d`;
  }
  const pad = (n) => String(n).padStart(2, "0");
  // UTC, as the buckets are and as `router ledger` prints: a local clock would put a day's bar at 17:00 the day
  // before in Los Angeles, and hourly labels at :30 in India
  function fmtTime(ts, withDate, withSeconds) {
    const d = new Date(ts * 1000);
    const hm = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}` + (withSeconds ? `:${pad(d.getUTCSeconds())}` : "");
    return withDate ? `${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${hm}` : hm;
  }
  function colorOf(group) {
    if (!colors.has(group)) colors.set(group, PALETTE[colors.size % PALETTE.length]);
    return colors.get(group);
  }

  // -- DOM helpers -----------------------------------------------------------------------------------------
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }
  function setValue(id, value, text) {
    const e = $(id);
    e.dataset.value = String(value);
    e.textContent = text;
  }
  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  // -- fetching --------------------------------------------------------------------------------------------
  async function get(name, params) {
    const url = new URL(`${BASE}/api/${name}`);
    for (const [k, v] of Object.entries(params || {})) url.searchParams.set(k, v);
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (!r.ok) {
      let message = r.statusText;
      try { message = (await r.json()).error.message; } catch (_) { /* not our JSON error */ }
      throw new Error(`${name}: HTTP ${r.status}: ${message}`);
    }
    return r.json();
  }

  const state = { window: "24h", by: "model" };
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.get("window")) state.window = h.get("window");
    if (h.get("by")) state.by = h.get("by");
    $("window").value = state.window;
    $("by").value = state.by;
    // a grouping the API does not know would fail every refresh with the same 400: draw the default instead
    if ($("by").value !== state.by) {
      const groupings = [...$("by").options].map((o) => o.value);
      $("notice").textContent = `#by=${state.by} is not a grouping of this page (${groupings.join(", ")}): ` +
        `showing by ${groupings[0]}.`;
      $("notice").hidden = false;
      state.by = $("by").value = groupings[0];
      writeHash();
    }
    if ($("window").value !== state.window) {  // a window typed into the address bar, not in the list
      const o = document.createElement("option");
      o.value = o.textContent = state.window;
      $("window").append(o);
      $("window").value = state.window;
    }
  }

  // -- totals ----------------------------------------------------------------------------------------------
  function drawTotals(t) {
    setValue("total-requests", t.requests, fmtInt(t.requests));
    $("total-requests-sub").textContent = `${fmtInt(t.answered)} answered · ${fmtInt(t.errors)} errors` +
      (t.rejected ? ` · ${fmtInt(t.rejected)} refused (budget)` : "");
    setValue("total-energy", t.energy_j, fmtJ(t.energy_j));
    const kind = $("energy-kind");
    kind.className = `badge ${t.energy}`;
    kind.textContent = t.energy === "mixed" ? `${fmtPct(t.measured_share)} measured` : t.energy;
    kind.title = t.by_source.map((s) => `${s.source}: ${fmtJ(s.energy_j)}`).join("\n");
    $("total-energy-sub").textContent = t.requests ? `${fmtJ(t.energy_j / t.requests)} per request` : "";
    setValue("total-co2e", t.co2e_g, fmtG(t.co2e_g));
    // the grams leave out records without a CO2e figure; with none recorded they are an estimate: say which
    $("total-co2e-sub").textContent = `at ${sig(t.g_per_kwh)} g/kWh` +
      (t.co2e_note ? ` · ${t.co2e_note}` : t.co2e_estimated && t.energy_j ? ` (estimate: ${t.co2e_from})` : "");
    setValue("total-saved", t.saved_j, fmtJ(t.saved_j));
    $("total-saved").classList.toggle("negative", t.saved_j < 0);
    const large = `always ${t.counterfactual_model} (${fmtJ(t.counterfactual_j)})`;
    $("total-saved-sub").textContent = !t.counterfactual_model ? "no model cards: no counterfactual"
      : t.saved_j < 0 ? `${fmtPct(-t.saved_share)} more than ${large}` : `${fmtPct(t.saved_share)} of ${large}`;
    const groups = state.by === "tier" ? t.by_tier : t.by_model;
    $("groups-title").textContent = `by ${state.by}`;
    replaceRows($("groups").tBodies[0], groups.map((g) => {
      const tr = document.createElement("tr");
      tr.dataset.group = g.group;
      tr.dataset.requests = String(g.requests);
      tr.dataset.energyJ = String(g.energy_j);
      const name = cell("", "text");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colorOf(g.group);
      name.append(sw, document.createTextNode(g.group));
      const badge = document.createElement("span");
      badge.className = `badge ${g.energy}`;
      badge.textContent = g.energy === "mixed" ? `${fmtPct(g.measured_share)} measured` : g.energy;
      const kindCell = cell("");
      kindCell.append(badge);
      tr.append(name, cell(state.by === "tier" ? "" : g.tier, "text"), cell(fmtInt(g.requests)), cell(fmtPct(g.request_share)),
        cell(fmtJ(g.energy_j)), cell(fmtPct(g.energy_share)), cell(fmtJ(g.saved_j)), cell(fmtMs(g.mean_latency_ms)),
        kindCell);
      return tr;
    }));
    $("notes").replaceChildren(...t.notes.map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      return li;
    }));
  }

  // -- charts ----------------------------------------------------------------------------------------------
  function niceCeil(x) {
    if (x <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(x));
    for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }

  function stacked(el, series, key, percent) {
    const [W, H] = el.viewBox.baseVal.width ? [el.viewBox.baseVal.width, el.viewBox.baseVal.height] : [760, 220];
    const L = 62, R = 8, T = 8, B = 24;
    const pts = series.points;
    const n = Math.max(1, pts.length);
    const bw = (W - L - R) / n;
    const sums = pts.map((p) => series.groups.reduce((a, g) => a + (p[key][g] || 0), 0));
    const top = percent ? 1 : niceCeil(Math.max(0, ...sums));
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const kids = [];
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      kids.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: i ? "grid" : "axis" }));
      kids.push(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, percent ? `${25 * i} %` : fmtJ(v)));
    }
    const withDate = series.step_s >= 86400 || (pts.length && pts[pts.length - 1].t - pts[0].t > 86400);
    const every = Math.max(1, Math.ceil(n / 8));
    pts.forEach((p, i) => {
      let acc = 0;
      const x = L + i * bw + Math.min(1, bw * 0.1);
      const w = Math.max(0.5, bw - Math.min(2, bw * 0.2));
      for (const g of series.groups) {
        let v = p[key][g] || 0;
        if (!v) continue;
        if (percent) v /= sums[i];
        const r = svg("rect", { x, y: y(acc + v), width: w, height: Math.max(0.5, y(acc) - y(acc + v)), fill: colorOf(g) });
        const what = key === "energy_j" ? fmtJ(p[key][g]) : `${fmtInt(p[key][g])} requests`;
        r.append(svg("title", {}, `${fmtTime(p.t, true)} ${g}: ${what}${percent ? ` (${fmtPct(v)})` : ""}`));
        kids.push(r);
        acc += v;
      }
      if (i % every === 0) {
        kids.push(svg("text", { x: L + i * bw + bw / 2, y: H - 6, "text-anchor": "middle" }, fmtTime(p.t, withDate)));
      }
    });
    if (!sums.some((s) => s > 0)) {
      kids.push(svg("text", { x: (L + W) / 2, y: H / 2, "text-anchor": "middle" }, "no requests in this window"));
    }
    el.replaceChildren(...kids);
  }

  function drawSeries(s) {
    stacked($("chart-energy"), s, "energy_j", false);
    stacked($("chart-share"), s, "requests", true);
    const step = s.step_s < 3600 ? `${s.step_s / 60} minutes` : s.step_s < 86400 ? `${s.step_s / 3600} h` : `${s.step_s / 86400} d`;
    $("step-hint").textContent = `per ${step}, local time`;
    $("legend").replaceChildren(...s.groups.map((g) => {
      const item = document.createElement("span");
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colorOf(g);
      item.append(sw, document.createTextNode(g));
      return item;
    }));
  }

  // -- budgets ---------------------------------------------------------------------------------------------
  function drawBudgets(b) {
    $("budgets-empty").hidden = b.budgets.length > 0;
    replaceRows($("budgets").tBodies[0], b.budgets.map((x) => {
      const tr = document.createElement("tr");
      tr.dataset.budget = x.budget;
      const used = cell("");
      const fmt = x.unit === "gCO2e" ? (g) => `${fmtG(g)} CO2e` : fmtJ;
      if (x.limit) {
        const bar = document.createElement("span");
        bar.className = `bar${x.used_share >= 1 ? " full" : x.used_share >= 0.8 ? " high" : ""}`;
        const fill = document.createElement("span");
        fill.style.width = `${Math.min(100, 100 * x.used_share)}%`;
        bar.append(fill);
        used.append(bar, document.createTextNode(`${fmt(x.used)} of ${fmt(x.limit)} (${fmtPct(x.used_share)})`));
      } else {
        used.textContent = fmt(x.used);
      }
      tr.append(cell(x.budget, "text"), cell(x.policy || "–", "text"), used, cell(fmtDuration(x.window_s)),
        cell(fmtDuration(x.rolls_in_s)));
      return tr;
    }));
  }

  // -- recent decisions ------------------------------------------------------------------------------------
  function drawRecent(r) {
    $("prompts-note").textContent = r.prompts_stored
      ? "Prompts are stored in the ledger (prompts: {store: true}, for feedback); this page never shows them."
      : "Prompts are not stored in the ledger, so none are shown.";
    replaceRows($("recent").tBodies[0], r.records.map((d) => {
      const tr = document.createElement("tr");
      tr.dataset.requestId = d.request_id;
      tr.dataset.model = d.model;
      const reason = d.error ? `${d.reason ? `${d.reason} · ` : ""}${d.error}` : d.reason;
      tr.append(cell(fmtTime(d.ts, false, true)),
        cell(d.request_id, "id text"), cell(d.model, "text"), cell(d.tier, "text"),
        cell(d.outcome, `text outcome-${d.outcome}`), cell(reason || "", "reason"), cell(fmtJ(d.energy_j)),
        cell(fmtMs(d.latency_ms || 0)));
      tr.title = `${d.energy_source}; policy ${d.policy || "–"}; task ${d.task || "–"}; key ${d.key || "–"}`;
      return tr;
    }));
  }

  // -- the simulated frontier ------------------------------------------------------------------------------
  function drawSimulation(s) {
    const el = $("chart-simulation");
    const note = $("simulation-note");
    // an <svg> has no `hidden` property (only HTML elements do): set the attribute itself
    if (!s.configured || s.error || !s.points.length) {
      el.setAttribute("hidden", "");
      note.textContent = !s.configured
        ? "No simulation configured: set dashboard.simulation in the config to a `router simulate --json` result."
        : s.error || "The simulation has no points.";
      return;
    }
    el.removeAttribute("hidden");
    const W = 520, H = 300, L = 46, R = 14, T = 12, B = 34;
    const pts = s.points;
    const es = pts.map((p) => p.energy_j_per_request).filter((e) => e > 0);
    const log = Math.max(...es) / Math.min(...es) > 30;
    const xTicks = [];
    let lo, hi;
    if (log) {
      lo = 10 ** Math.floor(Math.log10(Math.min(...es)));
      hi = 10 ** Math.ceil(Math.log10(Math.max(...es)));
      for (let t = lo; t <= hi * 1.0001; t *= 10) xTicks.push(t);
    } else {
      lo = 0;
      hi = niceCeil(Math.max(...es));
      for (let i = 0; i <= 4; i++) xTicks.push((hi * i) / 4);
    }
    const fx = log
      ? (e) => L + (W - L - R) * (Math.log10(Math.max(e, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))
      : (e) => L + (W - L - R) * (e - lo) / (hi - lo || 1);
    const accs = pts.map((p) => p.accuracy);
    const ylo = Math.max(0, Math.floor(Math.min(...accs) * 10 - 1e-9) / 10);
    const yhi = Math.min(1, Math.ceil(Math.max(...accs) * 10 + 1e-9) / 10);
    const fy = (a) => T + (H - T - B) * (1 - (a - ylo) / (yhi - ylo || 1));
    const kids = [];
    const yStep = yhi - ylo > 0.5 ? 0.2 : 0.1;
    for (let a = ylo; a <= yhi + 1e-9; a += yStep) {
      kids.push(svg("line", { x1: L, x2: W - R, y1: fy(a), y2: fy(a), class: a > ylo ? "grid" : "axis" }));
      kids.push(svg("text", { x: L - 6, y: fy(a) + 4, "text-anchor": "end" }, `${Math.round(100 * a)} %`));
    }
    for (const t of xTicks) {
      kids.push(svg("line", { x1: fx(t), x2: fx(t), y1: T, y2: H - B, class: "grid" }));
      kids.push(svg("text", { x: fx(t), y: H - B + 14, "text-anchor": "middle" }, fmtJ(t)));
    }
    kids.push(svg("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" },
      `joules per request${log ? " (log scale)" : ""}; accuracy up`));
    const line = (list, attrs) => {
      if (list.length < 2) return;
      kids.push(svg("polyline", { points: list.map((p) => `${fx(p.energy_j_per_request)},${fy(p.accuracy)}`).join(" "), fill: "none", ...attrs }));
    };
    const byE = (a, b) => a.energy_j_per_request - b.energy_j_per_request;
    line(s.frontier.map((i) => pts[i]), { stroke: "#111827", "stroke-opacity": "0.18", "stroke-width": "7", "stroke-linecap": "round", "stroke-linejoin": "round" });
    line(pts.filter((p) => p.kind === "threshold").sort(byE), { stroke: "#9ca3af", "stroke-width": "1.5" });
    line(pts.filter((p) => p.kind === "sweep").sort(byE), { stroke: "#2563eb", "stroke-width": "1.5" });
    const labels = [];  // placed label boxes: a label that would overlap one moves down a line
    const order = [...pts].sort((a, b) => (a.kind === "policy" ? -1 : b.kind === "policy" ? 1 : 0));
    let policyDot = null;  // labelled first (its label wins a place), drawn last (on top)
    for (const p of order) {
      if (p.kind === "threshold") continue;
      const x = fx(p.energy_j_per_request), y = fy(p.accuracy);
      const big = p.kind === "policy" || p.kind === "baseline";
      const c = svg("circle", { cx: x, cy: y, r: p.kind === "policy" ? 7 : big ? 5 : 3,
        fill: p.kind === "policy" ? "#2563eb" : p.kind === "baseline" ? "#b91c1c" : "#93c5fd", stroke: "#fff" });
      c.append(svg("title", {}, `${p.name}: ${(100 * p.accuracy).toFixed(1)} % at ${fmtJ(p.energy_j_per_request)} per request`));
      if (p.kind === "policy") policyDot = c; else kids.push(c);
      if (!big) continue;
      const width = 6.2 * p.name.length;
      const right = x + 10 + width > W - R;
      let ly = y - 8;
      const box = () => [right ? x - 10 - width : x + 10, ly - 10, width, 12];
      const hit = (b) => labels.some((o) => b[0] < o[0] + o[2] && o[0] < b[0] + b[2] && b[1] < o[1] + o[3] && o[1] < b[1] + b[3]);
      while (hit(box()) && ly < H) ly += 12;
      labels.push(box());
      kids.push(svg("text", { x: right ? x - 10 : x + 10, y: ly, "text-anchor": right ? "end" : "start", class: "label" }, p.name));
    }
    if (policyDot) kids.push(policyDot);
    el.replaceChildren(...kids);
    note.textContent = `${s.file}: policy ${s.policy} on ${s.outcomes} (${fmtInt(s.requests || 0)} requests), ` +
      `simulated ${new Date(s.modified * 1000).toLocaleString()}. Blue: the policy (large dot) and its ` +
      "accuracy-target sweep; red: baselines; grey line: a plain threshold router; grey band: the Pareto frontier." +
      (s.skipped && s.skipped.length ? ` Passed over, newer but not a result (yet): ${s.skipped.join("; ")}` : "");
  }

  // -- the loop --------------------------------------------------------------------------------------------
  let timer = null;
  let lastSimulation = 0;
  async function refresh() {
    clearTimeout(timer);
    const status = $("status");
    try {
      const [totals, series, budgets, recent] = await Promise.all([
        get("totals", { window: state.window }), get("series", { window: state.window, by: state.by }),
        get("budgets"), get("recent", { limit: RECENT })]);
      drawTotals(totals);
      drawSeries(series);
      drawBudgets(budgets);
      drawRecent(recent);
      if (Date.now() - lastSimulation > SIMULATION_MS) {
        drawSimulation(await get("simulation"));
        lastSimulation = Date.now();
      }
      $("error").hidden = true;
      status.className = "status live";
      status.textContent = `live · updated ${new Date().toLocaleTimeString()}`;
      document.body.dataset.updated = String(Date.now());
    } catch (err) {
      $("error").hidden = false;
      $("error").textContent = String(err.message || err);
      status.className = "status stale";
      status.textContent = "not updating";
    }
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function writeHash() {
    history.replaceState(null, "", `#window=${encodeURIComponent(state.window)}&by=${state.by}`);
  }

  function changed() {
    state.window = $("window").value;
    state.by = $("by").value;
    $("notice").hidden = true;
    writeHash();
    refresh();
  }

  document.addEventListener("DOMContentLoaded", () => {
    readHash();
    $("window").addEventListener("change", changed);
    $("by").addEventListener("change", changed);
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
    refresh();
  });
})();
