// cimcal dashboard: one script for every page. It reads location.pathname, fetches the JSON under
// /v1/dashboard with the viewer key from localStorage (sent as X-API-Key) and draws with plotly.
// Lot, wafer and die pages are of one model: ?model=name@version in the page URL is passed on to the
// JSON, the links and the export downloads; without it the server picks the default (docs/dashboard.md).
// When a view has finished drawing, <body data-ready="<view>"> is set (the browser tests wait on it).
"use strict";

(() => {
  const KEY = "cimcal.apiKey";
  const app = document.getElementById("app");
  const PLOT_CONFIG = { displaylogo: false, responsive: true };
  const ACCURACY_SCALE = [[0, "#d73027"], [0.5, "#fee08b"], [1, "#1a9850"]];

  // ------------------------------------------------------------------ small helpers
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c) el.append(c);
    return el;
  }

  const dash = "–";
  function num(v, digits = 1) {
    return v === null || v === undefined || Number.isNaN(v) ? dash : Number(v).toFixed(digits);
  }
  function pct(v, digits = 1) {
    return v === null || v === undefined ? dash : `${Number(v).toFixed(digits)} %`;
  }
  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : dash;
  }
  function binLabel(b) {
    return b === null || b === undefined ? "untested" : `bin ${b}`;
  }
  // Bin 0 is a tester alarm: "retest", neither pass nor fail (docs/dashboard.md).
  function verdictLabel(b) {
    return b.soft_bin === null ? "untested" : b.soft_bin === 0 ? "alarm, retest" : b.passed ? "pass" : "fail";
  }
  function seconds(v, digits = 3) {
    return v === null || v === undefined ? dash : `${num(v, digits)} s`;
  }
  function link(href, text) {
    return h("a", { href }, text);
  }
  const enc = encodeURIComponent;

  // ------------------------------------------------------------------ the model a page is of
  function pageModel() {
    return new URLSearchParams(location.search).get("model");
  }
  // path with ?model= (or &model=) when there is a model.
  function withModel(path, model) {
    return model ? `${path}${path.includes("?") ? "&" : "?"}model=${enc(model)}` : path;
  }
  // The model's part of a download's file name: kws-bnn@1 -> _kws-bnn_1 (as the server names files).
  function fileModel(model) {
    return model ? `_${model.replace("@", "_")}` : "";
  }
  // A drop-down of the models (name@version) the page can show; choosing one reloads the page with it.
  function modelPicker(current, refs) {
    const all = current && !refs.includes(current) ? [...refs, current] : refs;
    if (!all.length) return null;
    const select = h("select", { id: "model-select", "aria-label": "model" }, all.map((m) => h("option", { value: m, selected: m === current }, m)));
    select.addEventListener("change", () => {
      const url = new URL(location.href);
      url.searchParams.set("model", select.value);
      location.assign(url.toString());
    });
    return h("label", { class: "model-picker" }, "Model ", select);
  }
  // Why this model is shown, when the page URL did not name one and the lot has several.
  function modelNote(r) {
    if (pageModel() || r.models.length < 2) return null;
    return h("p", { class: "muted", id: "model-note" }, `${r.models.length} models were tested on this lot; showing the most-tested one, ${r.model}.`);
  }

  class HttpError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function fetchWithKey(path) {
    const key = localStorage.getItem(KEY);
    const r = await fetch(path, { headers: key ? { "X-API-Key": key } : {} });
    if (!r.ok) {
      let body = null;
      try {
        body = await r.json();
      } catch (_) {
        body = null;
      }
      const err = body && body.error ? body.error : {};
      throw new HttpError(r.status, err.code, err.message || r.statusText);
    }
    return r;
  }

  async function api(path) {
    return (await fetchWithKey("/v1" + path)).json();
  }

  // Exports need the key header, so they are fetched and handed to the browser as a blob.
  async function download(path, filename, button) {
    button.disabled = true;
    try {
      const blob = await (await fetchWithKey("/v1" + path)).blob();
      const url = URL.createObjectURL(blob);
      const a = h("a", { href: url, download: filename });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch (e) {
      alert(`Download failed: ${e.message}`);
    } finally {
      button.disabled = false;
    }
  }
  function downloadButton(label, path, filename) {
    const b = h("button", { type: "button", class: "download", dataset: { path } }, label);
    b.addEventListener("click", () => download(path, filename, b));
    return b;
  }

  function plot(el, data, layout, config) {
    const base = {
      margin: { l: 56, r: 16, t: 36, b: 44 },
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "#fff",
      font: { family: "system-ui, sans-serif", size: 12 },
    };
    return Plotly.newPlot(el, data, Object.assign(base, layout), Object.assign({}, PLOT_CONFIG, config || {}));
  }

  function card(label, value, extra) {
    return h("div", { class: "card" }, h("div", { class: "card-label" }, label), h("div", { class: "card-value" }, value), extra ? h("div", { class: "card-extra" }, extra) : null);
  }
  function table(headers, rows, attrs) {
    return h(
      "table",
      attrs || {},
      h("thead", {}, h("tr", {}, headers.map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((r) => (r instanceof Node ? r : h("tr", {}, r.map((c) => h("td", {}, c)))))),
    );
  }
  function chip(color, text) {
    return h("span", { class: "chip" }, h("span", { class: "swatch", style: `background:${color}` }), text);
  }
  function section(title, ...children) {
    return h("section", {}, h("h2", {}, title), ...children);
  }
  // replaceChildren would print null as "null": drop the empty parts first.
  function render(...nodes) {
    app.replaceChildren(...nodes.flat().filter((n) => n !== null && n !== undefined && n !== false));
  }
  function ready(view) {
    document.body.dataset.ready = view;
  }

  // ------------------------------------------------------------------ login
  function showLogin(message) {
    document.getElementById("logout").hidden = true;
    document.getElementById("who").textContent = "";
    const input = h("input", { id: "api-key", type: "password", autocomplete: "off", placeholder: "cim_…", required: true, size: 60 });
    const form = h(
      "form",
      { id: "login", class: "login" },
      h("h1", {}, "Sign in"),
      h("p", {}, "Paste an API key with the viewer role (or higher). It is kept in this browser's local storage and sent as X-API-Key."),
      message ? h("p", { class: "error", id: "login-error" }, message) : null,
      h("label", { for: "api-key" }, "API key "),
      input,
      " ",
      h("button", { type: "submit", id: "login-submit" }, "Sign in"),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      localStorage.setItem(KEY, input.value.trim());
      route();
    });
    app.replaceChildren(form);
    ready("login");
  }

  // ------------------------------------------------------------------ home: lots and jobs
  function jobBadge(j) {
    return j ? h("a", { href: `/dashboard/jobs/${j.job_id}`, class: `badge state-${j.state}` }, `#${j.job_id} ${j.kind}: ${j.state}`) : dash;
  }
  function yieldCell(y) {
    if (y === null || y === undefined) return dash;
    return h("span", { class: "yield" }, h("span", { class: "bar", style: `width:${Math.max(0, Math.min(100, y))}%` }), pct(y));
  }

  async function renderHome() {
    const [lots, jobs] = await Promise.all([api("/dashboard/lots?limit=200"), api("/dashboard/jobs?limit=10")]);
    const rows = lots.items.map((l) =>
      h(
        "tr",
        { dataset: { lot: l.lot_id } },
        h("td", {}, link(`/dashboard/lots/${enc(l.lot_id)}`, l.lot_id)),
        h("td", {}, l.product),
        h("td", {}, when(l.created_at)),
        h("td", { class: "num" }, l.n_wafers),
        h("td", { class: "num" }, l.n_dies),
        h("td", { class: "num" }, l.n_characterized),
        h("td", { class: "num" }, l.n_tested),
        h("td", { class: "num" }, l.n_passed),
        h("td", {}, yieldCell(l.yield_pct)),
        h("td", {}, yieldCell(l.first_pass_yield_pct)),
        h("td", {}, jobBadge(l.latest_job)),
        h("td", { class: "models" }, l.models.length ? l.models.flatMap((m, i) => [i ? ", " : null, link(withModel(`/dashboard/lots/${enc(l.lot_id)}`, m.model), `${m.model} (${m.n_tested})`)]) : dash),
      ),
    );
    const jobRows = jobs.map((j) => [link(`/dashboard/jobs/${j.id}`, `#${j.id}`), j.kind, h("span", { class: `badge state-${j.state}` }, j.state), j.created_by, when(j.created_at), when(j.finished_at)]);
    render(
      h("h1", {}, "Lots"),
      h("p", { class: "muted" }, "Tested, pass and yields are of each lot's most-tested model. Tested: dies with a verdict (a tester alarm is a retest, not a verdict). Final yield: last verdict; first pass: the first test passed."),
      lots.items.length
        ? table(["Lot", "Product", "Registered", "Wafers", "Dies", "Characterized", "Tested", "Pass", "Final yield", "First-pass yield", "Latest job", "Models (dies tested)"], rows, { id: "lots" })
        : h("p", { class: "muted" }, "No lots registered yet."),
      lots.total > lots.items.length ? h("p", { class: "muted" }, `Showing ${lots.items.length} of ${lots.total} lots.`) : null,
      section("Recent jobs", jobs.length ? table(["Job", "Kind", "State", "By", "Created", "Finished"], jobRows, { id: "jobs" }) : h("p", { class: "muted" }, "No jobs yet.")),
    );
    ready("home");
  }

  // ------------------------------------------------------------------ lot
  function spcTraces(chart, color) {
    const xs = chart.points.map((p) => `W${p.wafer}`);
    const traces = [
      {
        x: xs,
        y: chart.points.map((p) => p.value),
        mode: "lines+markers",
        name: chart.metric,
        line: { color },
        marker: { size: 9, color: chart.points.map((p) => (p.out_of_control ? "#d73027" : color)) },
        hovertemplate: `%{x}: %{y:.1f} ${chart.units}<extra></extra>`,
      },
    ];
    for (const [name, v, dashStyle] of [["CL", chart.center, "solid"], ["UCL +3σ", chart.ucl, "dash"], ["LCL −3σ", chart.lcl, "dash"]]) {
      if (v === null) continue;
      traces.push({ x: xs, y: xs.map(() => v), mode: "lines", name: `${name} ${v.toFixed(1)}`, line: { color: "#888", dash: dashStyle, width: 1 }, hoverinfo: "skip" });
    }
    return traces;
  }

  function statsTable(r) {
    const row = (label, st) => [label, st.n, num(st.mean), num(st.std, 2), num(st.min), num(st.max), st.cpk === null ? dash : num(st.cpk, 2)];
    return table(["", "n", "mean %", "σ %", "min %", "max %", `Cpk (LSL ${r.accuracy_lsl_pct} %)`], [row("before", r.accuracy_before_stats), row("after", r.accuracy_after_stats)], { class: "compact" });
  }

  async function renderLot(lotId) {
    const r = await api(withModel(`/dashboard/lots/${enc(lotId)}`, pageModel()));
    const m = r.model;
    const waferRows = r.wafers.map((w) => [
      link(withModel(`/dashboard/lots/${enc(r.lot_id)}/wafers/${w.number}`, m), `W${String(w.number).padStart(2, "0")}`),
      w.n_sites,
      w.n_characterized,
      w.n_tested,
      w.n_passed,
      yieldCell(w.yield_pct),
      yieldCell(w.first_pass_yield_pct),
      w.n_retest_pending,
      pct(w.mean_accuracy_before_pct),
      pct(w.mean_accuracy_after_pct),
      downloadButton("E142", withModel(`/lots/${enc(r.lot_id)}/wafers/${w.number}/e142`, m), `${r.lot_id}-W${String(w.number).padStart(2, "0")}${fileModel(m)}.e142.xml`),
    ]);
    const modelRows = r.models.map((t) =>
      h(
        "tr",
        { dataset: { model: t.model }, class: t.model === m ? "current" : null },
        h("td", {}, t.model === m ? h("strong", {}, t.model) : link(withModel(`/dashboard/lots/${enc(r.lot_id)}`, t.model), t.model)),
        h("td", { class: "num" }, t.n_tested),
        h("td", { class: "num" }, t.n_passed),
        h("td", {}, yieldCell(t.yield_pct)),
        h("td", {}, when(t.last_tested_at)),
      ),
    );
    const pareto = h("div", { class: "plot", id: "pareto" });
    const accuracy = h("div", { class: "plot", id: "accuracy" });
    const trendYield = h("div", { class: "plot", id: "trend-yield" });
    const trendAccuracy = h("div", { class: "plot", id: "trend-accuracy" });
    render(
      h("p", { class: "crumbs" }, link("/dashboard", "Lots"), " / ", r.lot_id),
      h("h1", {}, `Lot ${r.lot_id}`, h("span", { class: "sub" }, r.product), m ? h("span", { class: "sub", id: "model" }, m) : null),
      h("div", { class: "model-bar" }, modelPicker(m, r.models.map((t) => t.model)), modelNote(r)),
      h(
        "div",
        { class: "cards" },
        card("Dies", r.n_dies),
        card("Characterized", r.n_characterized),
        card("Tested", r.n_tested, "dies with a verdict"),
        card("Pass (bin 1-9)", r.n_passed),
        card("Final yield", pct(r.yield_pct), "last verdict: pass / tested"),
        card("First-pass yield", pct(r.yields ? r.yields.first_pass_yield_pct : null), "first test passed / dies tested at least once"),
        card("Retests", r.yields ? `${r.yields.n_retested} dies` : dash, r.yields ? `${r.yields.n_alarms} tester alarms on ${r.yields.n_alarmed} dies, ${r.yields.n_retest_pending} awaiting retest` : ""),
        card("Mean accuracy", `${num(r.accuracy_before_stats.mean)} → ${num(r.accuracy_after_stats.mean)} %`, "before → after calibration"),
      ),
      h(
        "div",
        { class: "exports" },
        "Export: ",
        downloadButton("STDF V4", withModel(`/lots/${enc(r.lot_id)}/stdf`, m), `${r.lot_id}${fileModel(m)}.stdf`),
        downloadButton("CSV", withModel(`/lots/${enc(r.lot_id)}/dies.csv`, m), `${r.lot_id}-dies${fileModel(m)}.csv`),
        downloadButton("Parquet", withModel(`/lots/${enc(r.lot_id)}/dies.parquet`, m), `${r.lot_id}-dies${fileModel(m)}.parquet`),
      ),
      section(
        "Models tested on this lot",
        r.models.length ? table(["Model", "Dies tested", "Pass", "Yield", "Last tested"], modelRows, { id: "models", class: "compact" }) : h("p", { class: "muted" }, "No die of this lot has been functionally tested yet."),
      ),
      h("div", { class: "grid2" }, section("Yield by soft bin (pareto)", pareto), section("Accuracy before vs after calibration", accuracy, statsTable(r))),
      h("div", { class: "grid2" }, section("Yield per wafer (SPC: mean ± 3σ across wafers)", trendYield), section("Mean accuracy after calibration per wafer (SPC)", trendAccuracy)),
      section("Wafers", table(["Wafer", "Sites", "Characterized", "Tested", "Pass", "Final yield", "First-pass yield", "Awaiting retest", "Accuracy before", "Accuracy after", "Map"], waferRows, { id: "wafers" })),
      section(
        "Jobs",
        r.jobs.length ? table(["Job", "Kind", "State", "Created"], r.jobs.map((j) => [link(`/dashboard/jobs/${j.job_id}`, `#${j.job_id}`), j.kind, h("span", { class: `badge state-${j.state}` }, j.state), when(j.created_at)])) : h("p", { class: "muted" }, "No jobs for this lot."),
      ),
    );
    const total = r.pareto.reduce((a, b) => a + b.count, 0);
    let cum = 0;
    const cumulative = r.pareto.map((b) => (100 * (cum += b.count)) / total);
    const labels = r.pareto.map((b) => `bin ${b.soft_bin}`);
    await plot(
      pareto,
      [
        { type: "bar", x: labels, y: r.pareto.map((b) => b.count), marker: { color: r.pareto.map((b) => b.color), line: { color: "#333", width: 0.5 } }, text: r.pareto.map((b) => b.name), textposition: "none", hovertemplate: "%{x} (%{text}): %{y} dies<extra></extra>", name: "dies" },
        { type: "scatter", mode: "lines+markers", x: labels, y: cumulative, yaxis: "y2", name: "cumulative %", line: { color: "#444" }, hovertemplate: "%{y:.1f} %<extra></extra>" },
      ],
      { showlegend: false, margin: { l: 56, r: 64, t: 36, b: 44 }, yaxis: { title: { text: "dies" } }, yaxis2: { overlaying: "y", side: "right", range: [0, 105], tickvals: [0, 25, 50, 75, 100], title: { text: "cumulative %" } } },
    );
    await plot(
      accuracy,
      [
        { type: "histogram", x: r.accuracy_before_pct, name: "before", opacity: 0.6, marker: { color: "#f46d43" }, xbins: { start: 0, end: 100, size: 2.5 } },
        { type: "histogram", x: r.accuracy_after_pct, name: "after", opacity: 0.6, marker: { color: "#1a9850" }, xbins: { start: 0, end: 100, size: 2.5 } },
      ],
      {
        barmode: "overlay",
        xaxis: { title: { text: "accuracy (%)" }, range: [0, 100] },
        yaxis: { title: { text: "dies" } },
        shapes: [{ type: "line", x0: r.accuracy_lsl_pct, x1: r.accuracy_lsl_pct, yref: "paper", y0: 0, y1: 1, line: { color: "#d73027", dash: "dot" } }],
        annotations: [{ x: r.accuracy_lsl_pct, yref: "paper", y: 1, text: "LSL", showarrow: false, yanchor: "bottom" }],
        legend: { orientation: "h", y: 1.12 },
      },
    );
    await plot(trendYield, spcTraces(r.yield_trend, "#4575b4"), { yaxis: { title: { text: "yield (%)" } }, legend: { orientation: "h", y: -0.2 } });
    await plot(trendAccuracy, spcTraces(r.accuracy_trend, "#1a9850"), { yaxis: { title: { text: "accuracy (%)" } }, legend: { orientation: "h", y: -0.2 } });
    ready("lot");
  }

  // ------------------------------------------------------------------ wafer
  function dieDetails(panel, d, units, model) {
    const rows = [
      ["ECID", link(withModel(`/dashboard/dies/${enc(d.ecid)}`, model), d.ecid)],
      ["x, y", `${d.x}, ${d.y}`],
      ["Soft / hard bin", chip(d.color, d.soft_bin === null ? "untested" : `${d.soft_bin} / ${d.hard_bin}`)],
      ["Model", d.model || dash],
      ["Accuracy before", pct(d.accuracy_before_pct)],
      ["Accuracy after", pct(d.accuracy_after_pct)],
      ["Column offset spread", `${num(d.offset_spread_mac, 3)} ${units.offset_spread_mac}`],
      ["Dead columns", d.n_dead_cols ?? dash],
      ["Stuck cells", d.n_stuck_cells ?? dash],
      ["Characterization", d.tester_s === null ? dash : `${num(d.tester_s, 3)} s`],
      ["Functional test", d.test_time_s === null ? dash : `${num(d.test_time_s, 3)} s`],
      ["Tests (alarms)", d.n_tests ? `${d.n_tests} (${d.n_alarms})` : dash],
    ];
    if (d.reason) rows.push(["Why not measured", d.reason]);
    panel.replaceChildren(h("h3", {}, "Die"), table(["", ""], rows, { class: "compact kv", id: "die-detail" }));
    panel.dataset.ecid = d.ecid;
  }

  function binMap(r, onDie) {
    const f = r.frame;
    const cols = f.x_max - f.x_min + 1;
    const rows = f.y_max - f.y_min + 1;
    const cell = Math.max(6, Math.floor(520 / Math.max(cols, rows)));
    const m = Math.ceil(cell / 2) + 30; // room for the ticks outside the wafer outline
    const tick = m - cell / 2 - 4;
    const width = cols * cell + 2 * m;
    const height = rows * cell + 2 * m;
    const px = (x) => m + (x - f.x_min) * cell;
    const py = (y) => m + (y - f.y_min) * cell; // y grows downward
    const svg = s("svg", { id: "wafer-map", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `Soft-bin map of wafer ${r.number}` });
    if (r.shape && r.shape.kind === "circular") {
      svg.append(s("circle", { cx: px(0) + cell / 2, cy: py(0) + cell / 2, r: (r.shape.diameter / 2) * cell, class: "outline" }));
    }
    const step = cell >= 22 ? 1 : Math.ceil(22 / cell);
    for (let x = f.x_min; x <= f.x_max; x++) {
      if ((x - f.x_min) % step === 0) svg.append(s("text", { x: px(x) + cell / 2, y: tick, class: "tick", "text-anchor": "middle", text: String(x) }));
    }
    for (let y = f.y_min; y <= f.y_max; y++) {
      if ((y - f.y_min) % step === 0) svg.append(s("text", { x: tick, y: py(y) + cell / 2 + 4, class: "tick", "text-anchor": "end", text: String(y) }));
    }
    svg.append(s("text", { x: width - 4, y: 14, class: "axis", "text-anchor": "end", text: "x →" }));
    svg.append(s("text", { x: 4, y: height - m + 14, class: "axis", text: "y ↓" }));
    // The notch, at the bottom.
    const nx = px(0) + cell / 2;
    svg.append(s("path", { d: `M${nx - 7},${height - 4} L${nx},${height - 14} L${nx + 7},${height - 4} Z`, class: "notch" }));
    let selected = null;
    for (const d of r.dies) {
      const rect = s(
        "rect",
        {
          class: "die",
          x: px(d.x),
          y: py(d.y),
          width: cell - 1,
          height: cell - 1,
          fill: d.color,
          "data-ecid": d.ecid,
          "data-x": d.x,
          "data-y": d.y,
          "data-soft-bin": d.soft_bin === null ? "" : d.soft_bin,
          tabindex: 0,
          onmouseenter: () => onDie(d),
          onfocus: () => onDie(d),
          onclick: () => {
            if (selected) selected.classList.remove("selected");
            rect.classList.add("selected");
            selected = rect;
            onDie(d);
          },
        },
        s("title", { text: `${d.ecid}\n${binLabel(d.soft_bin)}\naccuracy ${pct(d.accuracy_before_pct)} → ${pct(d.accuracy_after_pct)}` }),
      );
      svg.append(rect);
    }
    return svg;
  }

  function parametricMap(el, r, p, onDie) {
    const f = r.frame;
    const xs = [];
    const ys = [];
    for (let x = f.x_min; x <= f.x_max; x++) xs.push(x);
    for (let y = f.y_min; y <= f.y_max; y++) ys.push(y);
    const z = ys.map(() => xs.map(() => null));
    const text = ys.map(() => xs.map(() => ""));
    for (const d of r.dies) {
      z[d.y - f.y_min][d.x - f.x_min] = d[p.key];
      text[d.y - f.y_min][d.x - f.x_min] = d.ecid;
    }
    const accuracy = p.key.startsWith("accuracy");
    return plot(
      el,
      [
        {
          type: "heatmap",
          x: xs,
          y: ys,
          z,
          text,
          colorscale: accuracy ? ACCURACY_SCALE : "Viridis",
          xgap: 1,
          ygap: 1,
          hoverongaps: false,
          colorbar: { title: { text: p.units }, thickness: 12 },
          hovertemplate: `%{text}<br>x %{x}, y %{y}<br>%{z:.3g} ${p.units}<extra></extra>`,
        },
      ],
      {
        title: { text: p.label, font: { size: 13 } },
        margin: { l: 40, r: 10, t: 40, b: 30 },
        xaxis: { dtick: Math.max(1, Math.ceil(xs.length / 12)), showgrid: false, zeroline: false },
        yaxis: { autorange: "reversed", scaleanchor: "x", dtick: Math.max(1, Math.ceil(ys.length / 12)), showgrid: false, zeroline: false },
        height: 320,
      },
      { displayModeBar: false },
    ).then(() => {
      el.on("plotly_click", (ev) => {
        const pt = ev.points[0];
        const d = r.dies.find((q) => q.x === pt.x && q.y === pt.y);
        if (d) onDie(d);
      });
    });
  }

  async function renderWafer(lotId, number) {
    const r = await api(withModel(`/dashboard/lots/${enc(lotId)}/wafers/${number}`, pageModel()));
    const m = r.model;
    const units = Object.fromEntries(r.parametrics.map((p) => [p.key, p.units]));
    const panel = h("aside", { class: "details", id: "die-panel" }, h("p", { class: "muted" }, "Hover or click a die for its details."));
    const onDie = (d) => dieDetails(panel, d, units, m);
    const legend = h(
      "ul",
      { class: "legend", id: "legend" },
      r.legend.map((b) => h("li", { dataset: { softBin: b.soft_bin === null ? "" : b.soft_bin } }, chip(b.color, `${b.soft_bin === null ? "untested" : `bin ${b.soft_bin} (${verdictLabel(b)})`}: ${b.count}`))),
    );
    const maps = r.parametrics.map((p) => h("div", { class: "param-map", id: `param-${p.key}`, dataset: { key: p.key } }));
    const wid = `W${String(r.number).padStart(2, "0")}`;
    render(
      h("p", { class: "crumbs" }, link("/dashboard", "Lots"), " / ", link(withModel(`/dashboard/lots/${enc(r.lot_id)}`, m), r.lot_id), " / ", wid),
      h("h1", {}, `Wafer ${r.lot_id} ${wid}`, h("span", { class: "sub" }, r.product), m ? h("span", { class: "sub", id: "model" }, m) : null),
      h("div", { class: "model-bar" }, modelPicker(m, r.models.map((t) => t.model)), modelNote(r)),
      h("div", { class: "cards" }, card("Sites", r.n_sites), card("Characterized", r.n_characterized), card("Tested", r.n_tested, "dies with a verdict"), card("Pass", r.n_passed), card("Final yield", pct(r.yield_pct)), card("First-pass yield", pct(r.yields ? r.yields.first_pass_yield_pct : null))),
      h("div", { class: "exports" }, "Export: ", downloadButton("E142 map", withModel(`/lots/${enc(r.lot_id)}/wafers/${r.number}/e142`, m), `${r.lot_id}-${wid}${fileModel(m)}.e142.xml`)),
      section(
        "Soft-bin map",
        h("p", { class: "muted" }, `One square per die; x grows to the right, y grows downward, notch at the bottom.`),
        h("div", { class: "map-row" }, h("div", {}, binMap(r, onDie), legend), panel),
      ),
      section("Parametric maps", h("div", { class: "param-grid" }, maps)),
    );
    await Promise.all(r.parametrics.map((p, i) => parametricMap(maps[i], r, p, onDie)));
    ready("wafer");
  }

  // ------------------------------------------------------------------ die
  function matrixHeatmap(el, title, z, units, colorscale, detail, extra) {
    return plot(
      el,
      [{ type: "heatmap", z, colorscale, colorbar: { title: { text: units }, thickness: 12 }, hovertemplate: `macro %{y}, column %{x}<br>%{z} ${units}<extra></extra>`, ...(extra || {}) }],
      {
        title: { text: title, font: { size: 13 } },
        height: Math.max(220, 40 + 18 * detail.n_macros),
        xaxis: { title: { text: `physical column (spares ≥ ${detail.data_cols})` } },
        yaxis: { title: { text: "macro" }, autorange: "reversed" },
        shapes: detail.spare_cols ? [{ type: "line", x0: detail.data_cols - 0.5, x1: detail.data_cols - 0.5, yref: "paper", y0: 0, y1: 1, line: { color: "#000", dash: "dot", width: 1 } }] : [],
      },
    );
  }

  // Which tester measured: "vendor model #serial, site N" (the site is the station's test-site index).
  function testerLabel(p) {
    return p ? `${p.vendor} ${p.model} #${p.serial}, site ${p.site}` : "not recorded";
  }

  function provenanceTable(p, retries) {
    if (!p) return h("p", { class: "muted", id: "provenance" }, "Provenance not recorded (measured before it was).");
    const rows = [
      ["Driver", `${p.driver} ${p.driver_version}`],
      ["Tester", `${p.vendor} ${p.model}`],
      ["Serial", p.serial],
      ["Test site", p.site],
      ["Resource", p.resource || "—"],
      ["Options SHA-256", h("code", { title: p.options_sha256 }, p.options_sha256.slice(0, 16) + "…")],
      ["Station host", p.host],
      ["Retried driver calls", retries],
    ];
    return table(["", ""], rows, { class: "compact kv", id: "provenance" });
  }

  async function renderDie(ecid) {
    const r = await api(withModel(`/dashboard/dies/${enc(ecid)}`, pageModel()));
    const m = r.model;
    const f = r.final;
    const wid = `W${String(r.wafer).padStart(2, "0")}`;
    const sig = r.signature;
    const detail = r.signature_detail;
    const plots = [];
    let sigBody;
    if (!sig) {
      sigBody = h("p", { class: "muted" }, "Not characterized yet.");
    } else {
      const figures = h(
        "div",
        {},
        table(
          ["Version", "Reads", "Retries", "Tester time", "Column offset spread", "Dead columns", "Stuck cells", "SHA-256", "Measured"],
          [[sig.version, sig.reads, sig.retries, `${num(sig.tester_s, 3)} s`, `${num(sig.offset_spread_mac, 3)} MAC`, sig.n_dead_cols, sig.n_stuck_cells, h("code", {}, sig.sha256.slice(0, 16) + "…"), when(sig.created_at)]],
          { class: "compact", id: "signature-figures" },
        ),
        h("h3", {}, "Measured by"),
        provenanceTable(sig.provenance, sig.retries),
      );
      if (detail && !detail.error) {
        const gain = h("div", { id: "sig-gain" });
        const offset = h("div", { id: "sig-offset" });
        const defects = h("div", { id: "sig-defects" });
        const defectZ = detail.dead_cols.map((row, m) => row.map((dead, c) => (dead ? -1 : detail.stuck_cells[m][c])));
        // Hard colour stops: -1 black (dead column), 0 white, stuck-cell counts in reds.
        const zmax = Math.max(1, ...defectZ.flat());
        const p0 = 1 / (zmax + 1);
        const defectScale = [[0, "#000000"], [p0 / 2, "#000000"], [p0 / 2, "#ffffff"], [p0, "#ffffff"], [Math.min(1, p0 + 1e-6), "#fcbba1"], [1, "#a50f15"]];
        plots.push(() => matrixHeatmap(gain, "Per-column gain", detail.gain, "ratio", "RdBu", detail));
        plots.push(() => matrixHeatmap(offset, "Per-column offset", detail.offset_mac, "MAC", "RdBu", detail, { zmid: 0 }));
        plots.push(() =>
          matrixHeatmap(defects, "Defect map (−1 = dead column, else stuck cells in the column)", defectZ, "cells", defectScale, detail, { zmin: -1, zmax }),
        );
        sigBody = h("div", {}, figures, h("div", { class: "grid2" }, gain, offset), defects);
      } else {
        sigBody = h("div", {}, figures, h("p", { class: "muted", id: "signature-note" }, detail ? detail.error : "No signature detail."));
      }
    }
    const testsPlot = h("div", { id: "die-tests" });
    render(
      h("p", { class: "crumbs" }, link("/dashboard", "Lots"), " / ", link(withModel(`/dashboard/lots/${enc(r.lot_id)}`, m), r.lot_id), " / ", link(withModel(`/dashboard/lots/${enc(r.lot_id)}/wafers/${r.wafer}`, m), wid), " / ", `(${r.x}, ${r.y})`),
      h("h1", {}, `Die ${r.ecid}`, m ? h("span", { class: "sub", id: "model" }, m) : null),
      r.models.length > 1 || (pageModel() && !r.models.includes(m)) ? h("div", { class: "model-bar" }, modelPicker(m, r.models)) : null,
      h(
        "div",
        { class: "cards" },
        card("Final bin", f.soft_bin === null ? "untested" : chip(r.final_color, f.soft_bin === 0 ? "alarm: retest, no verdict" : `soft ${f.soft_bin} / hard ${f.hard_bin}`), m ? `with ${m}` : ""),
        card("Accuracy before", pct(f.accuracy_before === null ? null : 100 * f.accuracy_before)),
        card("Accuracy after", pct(f.accuracy_after === null ? null : 100 * f.accuracy_after)),
        card("Tester time", f.tester_s === null && f.test_time_s === null ? dash : `${num((f.tester_s || 0) + (f.test_time_s || 0), 2)} s`, "characterization + functional test"),
      ),
      section("Signature", sigBody),
      section(
        "Functional tests",
        r.tests.length
          ? h(
              "div",
              {},
              table(
                ["Model", "Image", "Accuracy", "Soft bin", "Hard bin", "Test time", "Tester", "Retries", "When"],
                r.tests.map((t) => [`${t.model} ${t.model_version}`, t.calibrated ? "calibrated" : t.accuracy_pct === null ? h("span", { title: t.reason || "" }, t.soft_bin === 0 ? "alarm (retest)" : "die fault") : "uncompensated", pct(t.accuracy_pct), chip(t.color, t.soft_bin), t.hard_bin, seconds(t.test_time_s), testerLabel(t.provenance), t.retries, when(t.created_at)]),
                { class: "compact", id: "tests" },
              ),
              testsPlot,
            )
          : h("p", { class: "muted" }, "No functional tests yet."),
      ),
      section(
        "Weight images",
        r.images.length
          ? table(["Model", "Signature", "Content SHA-256", "Size", "Built"], r.images.map((i) => [`${i.model} ${i.model_version}`, `v${i.signature_version}`, h("code", {}, i.content_sha256.slice(0, 16) + "…"), `${(i.size_bytes / 1024).toFixed(1)} KiB`, when(i.created_at)]), { class: "compact", id: "images" })
          : h("p", { class: "muted" }, "No images yet."),
      ),
      section(
        "Signature history",
        r.signature_history.length
          ? table(["Version", "Current", "Reads", "Retries", "Tester time", "Offset spread", "Dead", "Stuck", "Tester", "Measured"], r.signature_history.map((v) => [v.version, v.is_current ? "yes" : "", v.reads, v.retries, `${num(v.tester_s, 3)} s`, `${num(v.offset_spread_mac, 3)} MAC`, v.n_dead_cols, v.n_stuck_cells, testerLabel(v.provenance), when(v.created_at)]), { class: "compact", id: "signature-history" })
          : h("p", { class: "muted" }, "None."),
      ),
    );
    for (const p of plots) await p();
    if (r.tests.length) {
      const models = [...new Set(r.tests.map((t) => `${t.model} ${t.model_version}`))];
      const latest = (cal) => models.map((m) => {
        const ts = r.tests.filter((t) => `${t.model} ${t.model_version}` === m && t.calibrated === cal && t.accuracy_pct !== null);
        return ts.length ? ts[ts.length - 1].accuracy_pct : null;
      });
      await plot(
        testsPlot,
        [
          { type: "bar", name: "before (uncompensated)", x: models, y: latest(false), marker: { color: "#f46d43" } },
          { type: "bar", name: "after (calibrated)", x: models, y: latest(true), marker: { color: "#1a9850" } },
        ],
        { barmode: "group", bargap: 0.4, height: 260, yaxis: { title: { text: "accuracy (%)" }, range: [0, 100] }, legend: { orientation: "h", y: 1.15 } },
      );
    }
    ready("die");
  }

  // ------------------------------------------------------------------ job (polls until terminal)
  async function renderJob(jobId) {
    let timer = null;
    const tick = async () => {
      const j = await api(`/dashboard/jobs/${jobId}`);
      const progress = j.progress === null ? 0 : j.progress;
      const bar = h("div", { class: "progress", id: "job-progress", dataset: { progress: progress.toFixed(4) } }, h("div", { class: "fill", style: `width:${(100 * progress).toFixed(1)}%` }), h("span", {}, `${j.n_done} / ${j.n_items} items (${(100 * progress).toFixed(1)} %)`));
      render(
        h("p", { class: "crumbs" }, link("/dashboard", "Lots & jobs"), " / ", `job #${j.id}`),
        h("h1", {}, `Job #${j.id} `, h("span", { class: `badge state-${j.state}`, id: "job-state" }, j.state), h("span", { class: "sub" }, j.kind)),
        bar,
        h("p", { class: "muted" }, j.terminal ? "Finished." : `Live: refreshed every 2 s (last ${new Date().toLocaleTimeString()}).`),
        h(
          "div",
          { class: "grid2" },
          section("Items by step and state", j.items.length ? table(["Step", "State", "Items"], j.items.map((i) => [i.step, h("span", { class: `badge state-${i.state}` }, i.state), i.count]), { class: "compact", id: "job-items" }) : h("p", { class: "muted" }, "No items yet.")),
          section(
            "Job",
            table(["", ""], [["Created by", j.created_by], ["Created", when(j.created_at)], ["Started", when(j.started_at)], ["Finished", when(j.finished_at)], ["Parameters", h("code", {}, JSON.stringify(j.params))], ["Counters", h("code", {}, JSON.stringify(j.counters))]], { class: "compact kv" }),
          ),
        ),
        j.errors.length ? section("Errors", table(["Die", "Step", "Attempts", "Error"], j.errors.map((e) => [link(`/dashboard/dies/${enc(e.ecid)}`, e.ecid), e.step, e.attempts, e.error]), { class: "compact" })) : null,
      );
      ready("job");
      if (!j.terminal) timer = setTimeout(() => tick().catch(fail), 2000);
    };
    window.addEventListener("pagehide", () => timer && clearTimeout(timer));
    await tick();
  }

  // ------------------------------------------------------------------ routing
  function fail(e) {
    if (e instanceof HttpError && e.status === 401) {
      localStorage.removeItem(KEY);
      showLogin(`Signed out: ${e.message}`);
      return;
    }
    app.replaceChildren(h("h1", {}, e instanceof HttpError && e.status === 404 ? "Not found" : "Error"), h("p", { class: "error", id: "error" }, e.message));
    ready("error");
  }

  const ROUTES = [
    [/^\/dashboard\/?$/, () => renderHome()],
    [/^\/dashboard\/lots\/([^/]+)\/wafers\/(\d+)\/?$/, (m) => renderWafer(decodeURIComponent(m[1]), Number(m[2]))],
    [/^\/dashboard\/lots\/([^/]+)\/?$/, (m) => renderLot(decodeURIComponent(m[1]))],
    [/^\/dashboard\/dies\/([^/]+)\/?$/, (m) => renderDie(decodeURIComponent(m[1]))],
    [/^\/dashboard\/jobs\/(\d+)\/?$/, (m) => renderJob(Number(m[1]))],
  ];

  async function route() {
    delete document.body.dataset.ready;
    if (!localStorage.getItem(KEY)) {
      showLogin();
      return;
    }
    const logout = document.getElementById("logout");
    logout.hidden = false;
    document.getElementById("who").textContent = `key ${localStorage.getItem(KEY).slice(0, 12)}…`;
    for (const [re, view] of ROUTES) {
      const m = location.pathname.match(re);
      if (m) {
        try {
          await view(m);
        } catch (e) {
          fail(e);
        }
        return;
      }
    }
    fail(new HttpError(404, "not_found", `no page ${location.pathname}`));
  }

  document.getElementById("logout").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    showLogin("Signed out.");
  });
  route();
})();
