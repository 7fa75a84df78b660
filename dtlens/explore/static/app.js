// dtlens explore: one page, views chosen by the URL fragment (#view=...&run=...&epoch=...).
"use strict";

const VIEWS = {
  overview: "Table 1 & curves", attention: "Attention", attribution: "Attribution",
  lens: "Action lens", patching: "Patching", ablation: "Ablation", cka: "CKA",
  gradients: "Gradients", replay: "Rollout replay",
};
const RUN_VIEWS = new Set(Object.keys(VIEWS).filter((v) => v !== "overview"));
// Hover names every value and dragging zooms (double click: back); no tool bar over the plots.
const CONFIG = { displayModeBar: false };
// Attention weights: white at 0, dark blue at 1, most of the range spent on small weights.
const WEIGHTS = [[0, "#ffffff"], [0.05, "#deebf7"], [0.2, "#9ecae1"], [0.45, "#4292c6"],
                 [0.7, "#2171b5"], [1, "#08306b"]];
let RUNS = [];
let state = {};
const $ = (id) => document.getElementById(id);

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  return {
    view: p.get("view") || "overview", run: p.get("run"), epoch: p.get("epoch"),
    window: +(p.get("window") || 0), t: +(p.get("t") || 0), steps: +(p.get("steps") || 200),
  };
}

function writeHash(changes) {
  const next = Object.assign({}, state, changes);
  const p = new URLSearchParams();
  for (const k of ["view", "run", "epoch", "window", "t", "steps"]) {
    if (next[k] !== null && next[k] !== undefined) p.set(k, next[k]);
  }
  location.hash = p.toString();
}

function status(text, error) {
  $("status").textContent = text || "";
  $("status").className = error ? "error" : "";
}

// GET /api/..., polling while the server computes (202 with progress).
async function api(path, params) {
  const url = "/api/" + path + "?" + new URLSearchParams(params || {}).toString();
  for (;;) {
    const r = await fetch(url);
    const body = await r.json();
    if (r.status === 200) { status(""); return body; }
    if (r.status === 202) {
      status(`${body.progress} (${body.seconds} s)`);
      await new Promise((ok) => setTimeout(ok, 500));
      continue;
    }
    throw new Error(body.error || `HTTP ${r.status}`);
  }
}

function el(tag, attrs, parent, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

function plot(parent, traces, layout, size) {
  const div = el("div", { class: "plot" }, parent);
  const base = { margin: { l: 60, r: 20, t: 36, b: 50 }, width: size ? size[0] : 560,
                 height: size ? size[1] : 360, font: { size: 11 } };
  Plotly.newPlot(div, traces, Object.assign(base, layout), CONFIG);
  return div;
}

function fmt(x, d) { return x === null || x === undefined ? "n/a" : (+x).toFixed(d === undefined ? 2 : d); }

function table(parent, header, rows) {
  const t = el("table", {}, parent);
  const tr = el("tr", {}, t);
  header.forEach((h) => el("th", {}, tr, h));
  rows.forEach((r) => { const row = el("tr", {}, t); r.forEach((c) => el("td", {}, row, c)); });
  return t;
}

function currentRun() { return RUNS.find((r) => r.id === state.run) || RUNS[0]; }

// --- views ------------------------------------------------------------------------------------

async function overview(view) {
  const [t1, curves] = await Promise.all([api("table1"), api("curves")]);
  for (const t of t1.tables) {
    el("h3", {}, view, t.title);
    const rows = t.rows.map((r) => t.kind === "table1"
      ? [r[0], fmt(r[1], 1), fmt(r[2], 1), r[3].map((x) => fmt(x, 1)).join(", "), fmt(r[4], 1), fmt(r[5], 1)]
      : [r[0], r[1].join(", "), fmt(r[2], 1), fmt(r[3], 1), fmt(r[4], 4), fmt(r[5], 4)]);
    table(view, t.header, rows);
  }
  el("h3", {}, view, "Learning curves over seeds (one line per seed, a colour per condition)");
  const row = el("div", { class: "row" }, view);
  const metrics = [["score_mean", "normalized score", "epoch"], ["action_error", "action MSE", "epoch"],
                   ["loss", "training loss", "step"]];
  for (const [key, label, x] of metrics) {
    const traces = [];
    Object.entries(curves.groups).forEach(([group, seeds], gi) => {
      seeds.forEach((s, si) => {
        if (!s[key]) return;
        traces.push({ x: s[key].x, y: s[key].y, mode: "lines+markers", name: group,
                      legendgroup: group, showlegend: si === 0, line: { color: color(gi) },
                      hovertemplate: `${group} seed ${s.seed}<br>${x} %{x}: %{y:.3f}<extra></extra>` });
      });
    });
    plot(row, traces, { title: { text: label }, xaxis: { title: { text: x } },
                        showlegend: key === "score_mean", legend: { font: { size: 9 } } },
         key === "score_mean" ? [760, 380] : [420, 380]);
  }
}

function color(i) {
  const c = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
             "#7f7f7f", "#bcbd22", "#17becf"];
  return c[i % c.length];
}

async function attention(view) {
  const d = await api("attention", { run: state.run, epoch: state.epoch, window: state.window });
  const controls = el("div", { class: "controls" }, view);
  const lab = el("label", {}, controls, "probe window ");
  const sel = el("select", { id: "window" }, lab);
  for (let i = 0; i < d.windows; i++) el("option", { value: i }, sel, `${i}`);
  sel.value = d.window;
  sel.onchange = () => writeHash({ window: sel.value });
  el("p", { class: "note" }, view, "Every head's attention (row: query token, column: key " +
     "token) on one probe window; tokens R_t return-to-go, s_t state, a_t action at episode " +
     "timestep t. Titles give each head's attention distance in tokens on this window.");
  const n = d.labels.length;
  d.patterns.forEach((heads, l) => {
    el("h3", {}, view, `block ${l}`);
    const row = el("div", { class: "row" }, view);
    heads.forEach((p, h) => {
      const causal = p.map((r, q) => r.map((v, k) => (k > q ? null : v)));
      plot(row, [{ z: causal, x: d.labels.map((t, i) => `${i}:${t}`), y: d.labels.map((t, i) => `${i}:${t}`),
                   type: "heatmap", colorscale: WEIGHTS, zmin: 0, zmax: 1,
                   showscale: false, hovertemplate: "query %{y}<br>key %{x}<br>%{z:.3f}<extra></extra>" }],
           { title: { text: `L${l}H${h}: distance ${fmt(d.distance[l][h])}`, font: { size: 11 } },
             yaxis: { autorange: "reversed", showticklabels: n <= 30, tickfont: { size: 7 } },
             xaxis: { showticklabels: n <= 30, tickfont: { size: 7 } },
             margin: { l: n <= 30 ? 50 : 10, r: 6, t: 28, b: n <= 30 ? 50 : 10 } }, [260, 260]);
    });
  });
  el("h3", {}, view, "Attention distance per head (tokens)");
  const names = [], here = [], mean = [];
  d.distance.forEach((heads, l) => heads.forEach((v, h) => {
    names.push(`L${l}H${h}`); here.push(v); mean.push(d.distance_mean[l][h]);
  }));
  plot(view, [{ x: names, y: here, type: "bar", name: `window ${d.window}` },
              { x: names, y: mean, type: "bar", name: "mean over windows" }],
       { yaxis: { title: { text: "tokens" } } }, [720, 300]);
}

async function attribution(view) {
  const d = await api("attribution", { run: state.run, epoch: state.epoch });
  el("p", { class: "note" }, view, `Direct attribution of the pre-tanh action at the last ` +
     `timestep to each component, on ${d.samples} probe windows (sums exactly to the action).`);
  const row = el("div", { class: "row" }, view);
  plot(row, [{ x: d.component, y: d.mean_abs, type: "bar", marker: { color: d.component_type.map(
    (t) => ({ head: "#1f77b4", mlp: "#ff7f0e", embed: "#2ca02c", bias: "#7f7f7f" })[t]) } }],
       { title: { text: "mean |contribution| per component" } }, [620, 360]);
  plot(row, [{ z: d.mean, y: d.component, x: d.mean[0].map((_, i) => `action ${i}`), type: "heatmap",
               colorscale: "RdBu", zmid: 0 }],
       { title: { text: "mean contribution per action dimension" },
         yaxis: { autorange: "reversed", automargin: true } }, [480, 360]);
}

async function lens(view) {
  const d = await api("lens", { run: state.run, epoch: state.epoch });
  el("p", { class: "note" }, view, "The final norm and action head on the residual stream " +
     "after each block (0: the embeddings; the last: the model's action).");
  const row = el("div", { class: "row" }, view);
  plot(row, [{ x: d.layer, y: d.error, mode: "lines+markers" }],
       { title: { text: "action MSE per layer" }, yaxis: { type: "log" },
         xaxis: { title: { text: "blocks passed" }, dtick: 1 } }, [420, 340]);
  const w = Math.min(state.window, d.action.length - 1);
  const traces = [];
  d.action[w][0].forEach((_, dim) => {
    traces.push({ x: d.layer, y: d.action[w].map((a) => a[dim]), mode: "lines+markers",
                  name: `action ${dim}`, line: { color: color(dim) } });
    traces.push({ x: [d.layer[0], d.layer[d.layer.length - 1]], y: [d.target[w][dim], d.target[w][dim]],
                  mode: "lines", line: { dash: "dot", color: color(dim) }, showlegend: false });
  });
  plot(row, traces, { title: { text: `window ${w}: lens reading per layer (dotted: dataset action)` },
                      xaxis: { title: { text: "blocks passed" }, dtick: 1 } }, [560, 340]);
}

async function patching(view) {
  const d = await api("patching", { run: state.run, epoch: state.epoch });
  el("p", { class: "note" }, view, `Activation patching: corrupted = ${d.corrupted}` +
     `${d.donor ? ", donor " + d.donor : ""}; the fraction of the clean-corrupted action gap ` +
     "that each clean activation recovers.");
  plot(view, [{ x: d.site, y: d.recovered, type: "bar" }],
       { title: { text: "recovered fraction per site" }, xaxis: { tickangle: -60 },
         margin: { b: 110, l: 60, t: 36, r: 20 } }, [Math.max(600, 22 * d.site.length), 400]);
}

async function ablation(view) {
  const d = await api("ablation", { run: state.run });
  if (!d.available) { el("p", { class: "missing" }, view, d.message); return; }
  const attrs = Object.entries(d.attrs).map(([k, v]) => `${k} ${v}`).join(", ");
  el("p", { class: "note" }, view, `Change of the episode score when one component is ablated ` +
     `(${attrs}); bars: 95% interval.`);
  plot(view, [{ x: d.component, y: d.score_change, type: "bar", error_y: {
    type: "data", symmetric: false, array: d.high.map((h, i) => h - d.score_change[i]),
    arrayminus: d.score_change.map((c, i) => c - d.low[i]) } }],
       { title: { text: "score change per ablated component" } }, [Math.max(560, 40 * d.component.length), 380]);
}

async function cka(view) {
  const d = await api("cka", { run: state.run, epoch: state.epoch });
  el("p", { class: "note" }, view, `Layer x layer CKA between epoch ${d.epoch_a} (rows) and ` +
     `epoch ${d.epoch_b} (columns) on the probe windows; the diagonal is each layer before vs after.`);
  const names = (ls) => ls.map((l) => (l < 0 ? "embed" : `block ${l}`));
  ["last", "positions"].forEach((variant, vi) => {
    el("h3", {}, view, variant === "last" ? "last timestep's token (the paper's)" : "every position");
    const row = el("div", { class: "row" }, view);
    d.token_type.forEach((tt, ti) => {
      plot(row, [{ z: d.cka[vi][ti], x: names(d.layer_b), y: names(d.layer_a), type: "heatmap",
                   zmin: 0, zmax: 1, colorscale: "Viridis", showscale: ti === d.token_type.length - 1,
                   hovertemplate: "%{y} vs %{x}: %{z:.3f}<extra></extra>" }],
           { title: { text: tt, font: { size: 11 } }, yaxis: { autorange: "reversed" },
             margin: { l: 60, r: 10, t: 28, b: 40 } }, [260, 240]);
    });
  });
}

async function gradients(view) {
  const d = await api("gradients", { run: state.run, epoch: state.epoch });
  const row = el("div", { class: "row" }, view);
  const t = d.training;
  plot(row, [{ x: t.step, y: t.grad_norm, mode: "lines", name: "gradient norm" },
             { x: t.step, y: t.clip_coef, mode: "lines", name: "clip coefficient", yaxis: "y2" }],
       { title: { text: "training: gradient norm per step (before clipping)" },
         yaxis: { type: "log", title: { text: "norm" } },
         yaxis2: { overlaying: "y", side: "right", type: "linear", range: [0, 1.05],
                   title: { text: "clip coefficient" } },
         legend: { orientation: "h", y: -0.25 }, xaxis: { title: { text: "step" } },
         margin: { l: 60, r: 70, t: 36, b: 50 } }, [600, 380]);
  plot(row, [{ y: d.norm, type: "box", name: "before clipping" },
             { y: d.norm_clipped, type: "box", name: "after clipping" }],
       { title: { text: `epoch ${d.epoch}: per-sample gradient norm` }, yaxis: { type: "log" },
         showlegend: false }, [360, 340]);
  plot(row, [{ x: d.share_mean, y: d.tensor, type: "bar", orientation: "h" }],
       { title: { text: `top tensors' share of the squared norm (confusion ${fmt(d.confusion, 3)})` },
         yaxis: { autorange: "reversed", tickfont: { size: 8 }, automargin: true },
         margin: { l: 60, r: 10, t: 36, b: 40 } },
       [620, 340]);
}

async function replay(view) {
  const params = { run: state.run, epoch: state.epoch, steps: state.steps };
  const d = await api("replay", params);
  const t = Math.min(state.t, d.steps - 1);
  el("p", { class: "note" }, view, `${d.env_id}, ${d.steps} steps, return ${fmt(d.return, 1)} ` +
     `(MUJOCO_GL=${d.backend}). Right: each head's attention from the last state token ` +
     "(where the action is read) over its context window at this step.");
  const controls = el("div", { class: "controls" }, view);
  const play = el("button", {}, controls, "play");
  const slider = el("input", { type: "range", min: 0, max: d.steps - 1, value: t, id: "t" }, controls);
  const label = el("span", {}, controls, "");
  const row = el("div", { class: "row" }, view);
  const img = el("img", { id: "frame", width: 320, height: 240, alt: "frame" }, row);
  const heat = el("div", {}, row);
  let timer = null;
  function show(step) {
    img.src = "/api/frame?" + new URLSearchParams(Object.assign({ t: step }, params)).toString();
    label.textContent = ` step ${step}, reward ${fmt(d.rewards[step], 3)}`;
    const rows = [], z = [];
    d.attention[step].forEach((heads, l) => heads.forEach((a, h) => { rows.push(`L${l}H${h}`); z.push(a); }));
    const data = [{ z: z, x: d.labels[step].map((s, i) => `${i}:${s}`), y: rows, type: "heatmap",
                    colorscale: WEIGHTS, zmin: 0, zmax: 1,
                    hovertemplate: "%{y} -> %{x}: %{z:.3f}<extra></extra>" }];
    const layout = { width: 640, height: 300, margin: { l: 60, r: 10, t: 30, b: 60 },
                     title: { text: `attention at step ${step}`, font: { size: 11 } },
                     yaxis: { autorange: "reversed" }, xaxis: { tickfont: { size: 7 } } };
    Plotly.react(heat, data, layout, CONFIG);
  }
  slider.oninput = () => show(+slider.value);
  slider.onchange = () => history.replaceState(null, "", "#" + hashWith({ t: slider.value }));
  play.onclick = () => {
    if (timer) { clearInterval(timer); timer = null; play.textContent = "play"; return; }
    play.textContent = "pause";
    timer = setInterval(() => {
      const next = (+slider.value + 1) % d.steps;
      slider.value = next; show(next);
    }, 120);
  };
  show(t);
}

function hashWith(changes) {
  const p = new URLSearchParams(location.hash.slice(1));
  for (const k in changes) p.set(k, changes[k]);
  return p.toString();
}

const DRAW = { overview, attention, attribution, lens, patching, ablation, cka, gradients, replay };

// --- frame ------------------------------------------------------------------------------------

function pickers() {
  const run = currentRun();
  const runSel = $("run"), epochSel = $("epoch");
  if (!runSel.options.length) {
    RUNS.forEach((r) => el("option", { value: r.id }, runSel, r.id));
    runSel.onchange = () => writeHash({ run: runSel.value, epoch: null });
    epochSel.onchange = () => writeHash({ epoch: epochSel.value });
  }
  runSel.value = run.id;
  epochSel.innerHTML = "";
  run.epochs.forEach((e) => el("option", { value: e }, epochSel, e));
  epochSel.value = state.epoch !== null && run.epochs.includes(+state.epoch)
    ? state.epoch : run.epochs[run.epochs.length - 1];
  state.run = run.id;
  state.epoch = epochSel.value;
  $("pickers").style.visibility = RUN_VIEWS.has(state.view) ? "visible" : "hidden";
}

async function render() {
  state = readHash();
  if (!VIEWS[state.view]) state.view = "overview";
  const tabs = $("tabs");
  tabs.innerHTML = "";
  for (const [v, name] of Object.entries(VIEWS)) {
    const a = el("a", { href: "#" + hashWith({ view: v }), class: v === state.view ? "on" : "" }, tabs, name);
    a.onclick = (e) => { e.preventDefault(); writeHash({ view: v }); };
  }
  pickers();
  const view = $("view");
  view.innerHTML = "";
  document.body.dataset.ready = "";
  try {
    await DRAW[state.view](view);
    document.body.dataset.ready = state.view;
  } catch (e) {
    status(String(e.message || e), true);
    document.body.dataset.ready = "error";
  }
}

async function main() {
  const r = await fetch("/api/runs");
  const d = await r.json();
  RUNS = d.runs;
  $("root").textContent = d.root;
  window.addEventListener("hashchange", render);
  render();
}

main();
