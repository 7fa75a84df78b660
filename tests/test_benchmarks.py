"""The benchmark scripts run: each script's main() at its smallest size, and run_all end to end on
stand-in scripts (a crash in one must not stop the rest; RESULTS.md is written whole)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from benchmarks import run_all

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(autouse=True)
def _restore_threads():
    """The benchmarks pin torch and BLAS to one thread; give the rest of the session its counts
    back (leaving a threadpool_limits context restores the limits found on entering it)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    with threadpool_limits(limits=None):
        yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_train_step_quick():
    from benchmarks import bench_train_step

    rows = bench_train_step.main(["--quick"])
    variants = {r["variant"] for r in rows}
    assert {"dtlens", "dtlens + capture hooks", "HF (eager) + capture outputs"} <= variants
    assert all(r["seconds"] > 0 for r in rows)
    assert max(r["prediction_gap"] for r in rows) < 1e-4


@pytest.mark.slow
def test_rollout_quick():
    from benchmarks import bench_rollout

    rows = bench_rollout.main(["--quick"])
    assert len(rows) == 2
    assert rows[0]["env_steps"] == rows[1]["env_steps"] > 0
    assert rows[0]["max_rel_return_diff"] < 1e-4


@pytest.mark.slow
def test_cka_and_mi_quick():
    from benchmarks import bench_cka, bench_mi

    cka = bench_cka.main(["--quick", "--repeats", "1"])
    assert cka[0]["max_abs_diff"] < 1e-8
    mi = bench_mi.main(["--quick"])
    assert {r["estimator"] for r in mi} == {"gcmi", "gaussian", "ksg", "mine paper"}
    assert {(r["shape"], r["n"]) for r in mi} == {("11 x 128", 100), ("11 x 128", 1000)}
    assert not any(r["estimator"] == "ksg" and r["n"] == 100 for r in mi)  # n <= dx + dy: n/a
    assert all(r["null"] is not None for r in mi if r["case"] == "independent"
               and r["estimator"] in ("gcmi", "mine paper"))  # fmt: skip


@pytest.mark.slow
def test_capture_smoke():
    from benchmarks import bench_capture

    rows = bench_capture.main(["--quick", "--counts", "32", "--repeats", "1"])
    assert {r["case"] for r in rows} == {"dtlens stream", "dtlens memory", "HF peer"}
    assert all(r["file_mib"] > 0 and r["peak_mib"] > 0 for r in rows)


@pytest.mark.slow
def test_confusion_smoke():
    from benchmarks import bench_confusion

    rows = bench_confusion.main(["--quick", "--models", "2 x 64"])
    gram, mat = rows
    assert gram["confusion"] == pytest.approx(mat["confusion"], abs=1e-5)


@pytest.mark.slow
def test_gradient_stats_smoke():
    from benchmarks import bench_gradient_stats

    rows = bench_gradient_stats.main(["--quick"])
    assert [r["route"] for r in rows][-1] == "dtlens gradient_stats" and len(rows) == 3
    assert all(r["norm_rel_diff"] < 1e-5 and r["confusion_diff"] < 1e-6 for r in rows)
    assert rows[-1]["speedup"] == 1.0 and all(r["seconds"] > 0 for r in rows)
    result = run_all.Result("bench_gradient_stats.py", "", "", 0, 0, "", "", rows)
    summary = run_all.summary(result)
    assert len(summary) == 3 and "x dtlens's time" in summary[1]


@pytest.mark.slow
def test_diagnostics_memory_smoke(tmp_path):
    from benchmarks import bench_diagnostics_memory

    argv = ["--quick", "--only", "cka", "gradients", "--work", str(tmp_path)]
    rows = bench_diagnostics_memory.main(argv)
    assert [(r["diagnostic"], r["dtlens"]) for r in rows] == [("cka", "now"), ("gradients", "now")]
    assert all(r["peak_gib"] >= r["base_gib"] > 0 and r["seconds"] > 0 for r in rows)
    assert run_all.summary(
        run_all.Result("bench_diagnostics_memory.py", "", "", 0, 0, "", "", rows)
    )


def test_suite_covers_every_script():
    assert set(run_all.SUITE) == {p.name for p in BENCH.glob("bench_*.py")}


OK_SCRIPT = """
def main(argv=None):
    print("caption: n=3, median of 1")
    print("| a | b |\\n|---|---|\\n| 1 | 2 |")
    return [{"a": 1, "argv": argv}]
"""


def test_run_all_on_stand_ins(tmp_path):
    (tmp_path / "bench_ok.py").write_text(OK_SCRIPT)
    (tmp_path / "bench_boom.py").write_text("def main(argv=None):\n    raise ValueError('boom')\n")
    (tmp_path / "not_a_bench.py").write_text("raise SystemExit(3)\n")
    out = tmp_path / "RESULTS.md"
    results = run_all.main(["--quick", "--dir", str(tmp_path), "--out", str(out)])
    assert {r.script: r.ok for r in results} == {"bench_boom.py": False, "bench_ok.py": True}
    ok = next(r for r in results if r.ok)
    assert ok.rows == [{"a": 1, "argv": ["--quick"]}]
    text = out.read_text()
    assert "## bench_ok (`bench_ok.py`)" in text and "| 1 | 2 |" in text
    assert "ValueError: boom" in text and "FAILED" in text
    assert "OMP_NUM_THREADS=1" in text and "Machine:" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_run_all_only_rejects_unknown(tmp_path):
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope", "--dir", str(tmp_path), "--out", str(tmp_path / "r.md")])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
