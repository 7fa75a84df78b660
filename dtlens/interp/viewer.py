"""The attention viewer: one self-contained HTML page (no network, no external scripts) with every
head's attention pattern on a few probe windows, tokens labelled R_t / s_t / a_t.

The page shows all heads of all blocks as small heatmaps; clicking one draws it large with token
labels, and hovering a cell names the query, the key and the weight.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from dtlens.capture.activations import capture
from dtlens.data.windows import Batch
from dtlens.errors import DtlensError
from dtlens.interp.inputs import token_labels
from dtlens.io import write_atomic
from dtlens.model.dt import DecisionTransformer
from dtlens.train.run import Run

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 13px sans-serif; margin: 1em; }}
.grid {{ display: grid; grid-template-columns: repeat({heads}, auto); gap: 6px;
         justify-content: start; }}
.thumb {{ cursor: pointer; border: 2px solid transparent; }}
.thumb.on {{ border-color: #d33; }}
#tip {{ min-height: 1.4em; font-family: monospace; }}
svg text {{ font: 8px monospace; }}
</style></head><body>
<h2>{title}</h2>
<p>Attention patterns (row: query token, column: key token; darker = more weight, shade by its
square root). Click a head
to enlarge it; hover a cell for its weight. Tokens: R_t return-to-go, s_t state, a_t action at
episode timestep t.</p>
<label>window <select id="win"></select></label>
<div id="thumbs"></div>
<h3 id="head-title"></h3><div id="tip"></div><div id="big"></div>
<script id="data" type="application/json">{data}</script>
<script>
const D = JSON.parse(document.getElementById("data").textContent);
const NS = "http://www.w3.org/2000/svg";
let win = 0, layer = 0, head = 0;
function el(tag, attrs, parent) {{
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}}
function shade(v) {{
  const c = Math.round(255 * (1 - Math.sqrt(v)));
  return `rgb(${{c}},${{c}},255)`;
}}
function heatmap(p, cell, labels) {{
  const n = p.length, pad = labels ? 40 : 0;
  const svg = el("svg", {{width: pad + n * cell, height: pad + n * cell}});
  for (let q = 0; q < n; q++) for (let k = 0; k <= q; k++) {{
    const r = el("rect", {{x: pad + k * cell, y: pad + q * cell, width: cell, height: cell,
                          fill: shade(p[q][k])}}, svg);
    if (labels) r.addEventListener("mouseover", () => {{
      document.getElementById("tip").textContent =
        `query ${{labels[q]}} -> key ${{labels[k]}}: ${{p[q][k].toFixed(3)}}`;
    }});
  }}
  if (labels) labels.forEach((t, i) => {{
    el("text", {{x: pad - 2, y: pad + i * cell + cell - 1, "text-anchor": "end"}}, svg)
      .textContent = t;
    el("text", {{x: 0, y: 0, transform:
      `translate(${{pad + i * cell + cell - 1}},${{pad - 2}}) rotate(-90)`}}, svg)
      .textContent = t;
  }});
  return svg;
}}
function draw() {{
  const thumbs = document.getElementById("thumbs");
  thumbs.innerHTML = "";
  D.patterns[win].forEach((heads, l) => {{
    const h3 = document.createElement("h4");
    h3.textContent = `block ${{l}}`;
    thumbs.appendChild(h3);
    const grid = document.createElement("div");
    grid.className = "grid";
    heads.forEach((p, h) => {{
      const box = document.createElement("div");
      box.className = "thumb" + (l === layer && h === head ? " on" : "");
      box.title = `block ${{l}} head ${{h}}`;
      box.appendChild(heatmap(p, 2, null));
      box.addEventListener("click", () => {{ layer = l; head = h; draw(); }});
      grid.appendChild(box);
    }});
    thumbs.appendChild(grid);
  }});
  document.getElementById("head-title").textContent =
    `block ${{layer}}, head ${{head}} (window ${{D.windows[win]}})`;
  const big = document.getElementById("big");
  big.innerHTML = "";
  big.appendChild(heatmap(D.patterns[win][layer][head], 9, D.labels[win]));
}}
const sel = document.getElementById("win");
D.windows.forEach((w, i) => {{
  const o = document.createElement("option");
  o.value = i; o.textContent = `probe window ${{w}}`; sel.appendChild(o);
}});
sel.addEventListener("change", () => {{ win = +sel.value; draw(); }});
draw();
</script></body></html>
"""


def attention_view(
    model: DecisionTransformer, batch: Batch, path: str | Path, windows: int = 4, title: str = ""
) -> Path:
    """Write the viewer of `model`'s attention on the first `windows` windows of `batch`."""
    if windows < 1:
        raise DtlensError(f"windows must be at least 1, got {windows}")
    part = batch.index(slice(0, windows))
    pattern = capture(model, part, ["pattern"])["pattern"].values  # (win, layer, head, q, k)
    data = {
        "windows": list(range(len(part))),
        "labels": token_labels(part),
        "patterns": np.round(pattern.astype(np.float64), 3).tolist(),
    }
    page = PAGE.format(
        title=html.escape(title or "attention patterns"),
        heads=model.cfg.backbone.n_heads,
        data=json.dumps(data, separators=(",", ":")).replace("</", "<\\/"),
    )
    return write_atomic(path, lambda p: p.write_text(page))


VIEW_NAME = "attention-view.html"


def view_path(run: Run) -> Path:
    return run.path / "figures" / VIEW_NAME


def write_run_view(run: Run, epoch: int = -1, windows: int = 4) -> Path:
    """`RUN/figures/attention-view.html` for checkpoint `epoch` (-1: the last)."""
    (epoch,) = run.resolve_epochs([epoch])
    title = f"attention of {run.name}, epoch {epoch} ({run.train_config.init} init)"
    return attention_view(
        run.load_model(epoch), run.windows(windows), view_path(run), windows, title
    )
