"""`dtlens explore`: every view of the app on a tiny study (two seeds), what it refuses, two
explorers on one folder, and the page drawn by headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from dtlens.errors import DtlensError
from dtlens.explore import replay
from dtlens.explore.browser import find_chromium, screenshot
from dtlens.explore.server import make_server
from dtlens.io import save_netcdf
from dtlens.locks import folder_lock
from dtlens.train.loop import train
from tests.conftest import TINY, tiny_train_config

pytestmark = pytest.mark.slow
SEEDS = (0, 1)
ABLATED = ["L0H0", "L0H1", "L0MLP", "L1H0", "L1H1", "L1MLP"]


@pytest.fixture(scope="module")
def study(hopper_file, tmp_path_factory) -> Path:
    """study/runs/tiny-s{0,1}: two seeds of a tiny run (epochs 0..2, evaluated); the first has
    an ablation result as `dtlens ablation` writes it."""
    root = tmp_path_factory.mktemp("explore") / "study"
    for seed in SEEDS:
        cfg = tiny_train_config(hopper_file, seed=seed, eval_max_steps=5)
        train(cfg, root / "runs" / f"tiny-s{seed}", progress=False)
    rng = np.random.default_rng(0)
    score = rng.normal(size=(len(ABLATED), 3))
    change = score.mean(1) - 0.5
    ablation = xr.Dataset(
        {
            "score": (("component", "episode"), score),
            "baseline_score": ("episode", np.full(3, 0.5)),
            "score_change": ("component", change),
            "score_change_ci": (("component", "bound"), np.stack([change - 1, change + 1], 1)),
        },
        coords={"component": ABLATED, "episode": np.arange(3), "bound": ["low", "high"]},
        attrs={"how": "mean", "episodes": 3, "seed": 0, "epoch": 2},
    )
    save_netcdf(ablation, root / "runs" / "tiny-s0" / "diagnostics" / "ablation.nc")
    return root


def serve(root: Path):
    server = make_server(root, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def base(study):
    server, url = serve(study)
    yield url
    server.shutdown()
    server.explorer.jobs.shutdown()
    server.server_close()


def fetch(url: str, wait: float = 600.0) -> tuple[int, bytes, dict]:
    """GET `url`, polling while it answers 202 (computing)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url) as r:
                status, body, headers = r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)
        if status != 202 or time.monotonic() > deadline:
            return status, body, headers
        time.sleep(0.2)


def get_json(url: str) -> dict:
    status, body, _ = fetch(url)
    assert status == 200, body
    return json.loads(body)


def run_id(seed: int) -> str:
    return f"runs/tiny-s{seed}"


def test_runs_table1_and_curves(base):
    runs = get_json(f"{base}/api/runs")["runs"]
    assert [r["id"] for r in runs] == [run_id(s) for s in SEEDS]
    assert all(r["epochs"] == [0, 1, 2] and r["group"] == "runs/tiny" for r in runs)
    (every,) = get_json(f"{base}/api/table1")["tables"]  # not a reproduction: no paper Table 1
    (row,) = every["rows"]
    assert row[0] == "runs/tiny" and row[1] == list(SEEDS)
    assert row[2] is not None and row[4] is not None  # score and action error over seeds
    (seeds,) = get_json(f"{base}/api/curves")["groups"].values()
    assert [s["seed"] for s in seeds] == list(SEEDS)
    assert seeds[0]["score_mean"]["x"] == [1, 2] and len(seeds[0]["loss"]["y"]) == 6


def test_attention_of_a_probe_window(base):
    d = get_json(f"{base}/api/attention?run={run_id(0)}&epoch=1&window=2")
    k = 3 * 4  # K=4 steps of R, s, a
    assert d["window"] == 2 and d["windows"] == 6  # the tiny probe has 6 windows
    assert [t[0] for t in d["labels"][:3]] == ["R", "s", "a"] or "pad" in d["labels"]
    pattern = np.asarray(d["patterns"])
    assert pattern.shape == (TINY.n_layers, TINY.n_heads, k, k)
    assert np.allclose(np.triu(pattern, 1), 0)  # causal
    valid = [i for i, t in enumerate(d["labels"]) if t != "pad"]
    assert np.allclose(pattern[:, :, valid].sum(-1), 1, atol=2e-3)
    assert np.asarray(d["distance"]).shape == (TINY.n_layers, TINY.n_heads)
    status, body, _ = fetch(f"{base}/api/attention?run={run_id(0)}&epoch=1&window=6")
    assert status == 400 and b"out of range" in body


def test_run_views_compute_what_is_missing_into_the_run(base, study, epoch=1):
    run = study / run_id(1)
    outside = {
        p: p.stat().st_mtime_ns for p in study.rglob("*") if p != run and run not in p.parents
    }
    d = get_json(f"{base}/api/attribution?run={run_id(1)}&epoch={epoch}")
    assert d["component"][:2] == ["state_embed", "time_embed"] and "L1MLP" in d["component"]
    assert np.asarray(d["mean"]).shape == (len(d["component"]), 3)  # Hopper: 3 actions
    d = get_json(f"{base}/api/lens?run={run_id(1)}&epoch={epoch}")
    assert d["layer"] == [0, 1, 2] and len(d["error"]) == 3
    d = get_json(f"{base}/api/patching?run={run_id(1)}&epoch={epoch}")
    assert len(d["site"]) == len(d["recovered"]) > 0 and "L0H0 z" in d["site"]
    d = get_json(f"{base}/api/cka?run={run_id(1)}&epoch={epoch}")
    assert (d["epoch_a"], d["epoch_b"]) == (0, epoch)
    assert np.asarray(d["cka"]).shape == (2, 4, TINY.n_layers + 1, TINY.n_layers + 1)
    d = get_json(f"{base}/api/gradients?run={run_id(1)}&epoch={epoch}")
    assert len(d["norm"]) == 100 and len(d["training"]["grad_norm"]) == 6
    for name in ("attribution", "action_lens", "patching", "cka", "gradients"):
        assert (run / "diagnostics" / f"{name}-epoch-0001.nc").is_file(), name
    get_json(f"{base}/api/lens?run={run_id(1)}&epoch=2")  # the last epoch: as reproduce names it
    assert (run / "diagnostics" / "action_lens.nc").is_file()
    assert not list(run.rglob("*.lock"))  # locks released
    assert {
        p: p.stat().st_mtime_ns for p in study.rglob("*") if p != run and run not in p.parents
    } == outside


def test_ablation_read_when_present_else_how_to_compute_it(base):
    d = get_json(f"{base}/api/ablation?run={run_id(0)}")
    assert d["available"] and d["component"] == ABLATED
    assert d["attrs"] == {"how": "mean", "episodes": "3", "seed": "0", "epoch": "2"}
    assert np.allclose(np.asarray(d["high"]) - np.asarray(d["low"]), 2)
    d = get_json(f"{base}/api/ablation?run={run_id(1)}")
    assert not d["available"] and d["message"].startswith("not computed: run `dtlens ablation ")


def test_replay_frames_and_attention_per_step(base):
    q = f"run={run_id(0)}&epoch=2&steps=4"
    d = get_json(f"{base}/api/replay?{q}")
    assert 1 <= d["steps"] <= 4 and len(d["attention"]) == len(d["labels"]) == d["steps"]
    first = np.asarray(d["attention"][0])  # step 0: R_0, s_0 (the query) and a_0
    assert first.shape == (TINY.n_layers, TINY.n_heads, 3) and d["labels"][0] == [
        "R_0",
        "s_0",
        "a_0",
    ]
    assert np.allclose(first.sum(-1), 1, atol=2e-3)
    status, body, headers = fetch(f"{base}/api/frame?{q}&t={d['steps'] - 1}")
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert body.startswith(b"\x89PNG") and len(body) > 1000


@pytest.mark.parametrize(
    "path",
    [
        "/../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fetc%2fpasswd",
        "/api/lens?run=../study/runs/tiny-s0",
        "/api/lens?run=runs/tiny-s0/../../study/runs/tiny-s0",
        "/api/lens?run=%2e%2e%2fstudy%2fruns%2ftiny-s0",
        "/api/lens?run=/etc",
        "/api/lens?run=%2Fetc%2Fpasswd",
        "/api/ablation?run=runs/tiny-s0&x=/etc/passwd",
    ],
)
def test_paths_outside_the_served_folder_are_refused(base, path):
    status, body, _ = fetch(base + path)
    assert status == 403 and b"refused" in body


@pytest.mark.parametrize(
    "path, status",
    [
        ("/api/lens?run=runs", 404),
        ("/api/lens", 400),
        ("/nothing", 404),
        ("/api/lens?run=runs/tiny-s0&epoch=7", 400),
    ],
)
def test_unknown_things_are_not_found(base, path, status):
    assert fetch(base + path)[0] == status


def test_the_page_references_nothing_outside_the_server(base):
    status, page, headers = fetch(base + "/")
    assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
    refs = re.findall(rb'(?:src|href)="([^"]+)"', page)
    assert refs and all(r.startswith(b"/") and not r.startswith(b"//") for r in refs)
    for ref in refs:
        status, body, _ = fetch(base + ref.decode())
        assert status == 200 and body
        if ref != b"/plotly.min.js":  # plotly's own strings name its website; it loads nothing
            assert not re.search(rb"(https?:)?//[a-z0-9]", body.replace(b"http://www.w3.org", b""))


def test_two_explorers_on_one_folder(study):
    """A result being computed by another process's explorer is waited for, then read."""
    one, url_one = serve(study)
    two, url_two = serve(study)
    try:
        target = study / run_id(0) / "diagnostics" / "action_lens-epoch-0001.nc"
        with folder_lock(target):  # as another explorer computing it would hold it
            status, body, _ = fetch(f"{url_one}/api/lens?run={run_id(0)}&epoch=1", wait=0)
            time.sleep(1.0)
            status, body, _ = fetch(f"{url_one}/api/lens?run={run_id(0)}&epoch=1", wait=0)
            assert status == 202 and b"waiting" in body and not target.exists()
        answers = [get_json(f"{u}/api/lens?run={run_id(0)}&epoch=1") for u in (url_one, url_two)]
        assert answers[0] == answers[1] and target.is_file()
    finally:
        for server in (one, two):
            server.shutdown()
            server.explorer.jobs.shutdown()
            server.server_close()


def _drawn(path: Path) -> tuple[float, float]:
    """Below the page's header: the fraction of pixels that are not white (text, tables, plots)
    and of those in colour (plots; text and tables are grey)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)[100:]
    spread = rgb.max(-1) - rgb.min(-1)
    return float((rgb.min(-1) < 230).mean()), float((spread > 60).mean())


@pytest.mark.skipif(find_chromium() is None, reason="no chromium (make venv installs it)")
def test_headless_chromium_draws_the_main_views(base, tmp_path):
    run = f"run={run_id(0)}&epoch=2"
    views = {"overview": "", "attention": "&window=1", "attribution": "", "replay": "&steps=4"}
    for view in views:  # computed first: the browser's virtual time does not wait for work
        if view != "overview":
            get_json(f"{base}/api/{view}?{run}{views[view]}")
    for view, extra in views.items():
        out = screenshot(f"{base}/#view={view}&{run}{extra}", tmp_path / f"{view}.png", (1000, 700))
        assert Image.open(out).size == (1000, 700)
        inked, coloured = _drawn(out)
        assert inked > 0.02 and coloured > 0.002, f"{view}: blank ({inked:.3f}, {coloured:.4f})"


def test_replay_says_so_when_no_gl_backend_renders(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setattr(replay, "BACKENDS", ("no-such-gl",))
    with pytest.raises(DtlensError, match="neither MUJOCO_GL=egl nor osmesa renders here"):
        replay.render_frames("Hopper-v5", np.zeros((1, 6)), np.zeros((1, 6)))


def test_cli_serves_on_a_free_port_and_says_where(study):
    command = [sys.executable, "-c", "from cli.main import app; app()", "explore", str(study)]
    server = subprocess.Popen(
        [*command, "--no-browser", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        line = server.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+/)", line).group(1)
        assert [r["id"] for r in get_json(url + "api/runs")["runs"]] == [run_id(s) for s in SEEDS]
    finally:
        server.terminate()
        server.wait(10)
    missing = CliRunner().invoke(app, ["explore", str(study / "nothing")])
    assert missing.exit_code == 1 and "not a folder" in missing.output
