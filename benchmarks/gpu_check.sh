#!/usr/bin/env bash
# The GPU check in one call: on a bare CUDA machine whose image holds torch, transformers,
# xarray, h5py, typer, einops, jaxtyping, rich and scikit-learn (Python 3.12, no registry), it
# installs dtlens's missing dependencies from the wheels `make gpu-wheels` put in gpu-wheels/
# (carried: an ignored folder), then, within 8 minutes, runs
#   1. benchmarks/bench_gpu.py: paper-size step vs HF in fp32 and bf16, capture, per-sample
#      gradients, rollouts, the paper preset's projection;
#   2. a smoke reproduction on CUDA: the paper preset, smoke budget, hopper, seed 666, in process
#      on cuda:0, on stand-in GPT-2 / ImageGPT (random weights, published configs) and a
#      dataset collected with the committed medium policy;
#   3. the CUDA-marked tests (pytest -m cuda);
# and writes one summary, $OUT/gpu-check-summary.md (OUT: the device machine's folder that comes
# back; default gpu-check/).
#
#   benchmarks/gpu_check.sh              on the GPU machine (dtlens is run from this checkout)
#   benchmarks/gpu_check.sh --rehearse   the same steps on the CPU at tiny size (CI runs it):
#                                        bench_gpu --quick --device cpu, the tests' tiny preset
#                                        reproduced end to end (one seed), the CUDA tests with
#                                        DTLENS_TEST_DEVICE=cpu
# Env: PYTHON (default python3, or .venv/bin/python when there is one), GPU_WHEELS (default
# gpu-wheels), GPU_CHECK_SECONDS (default 480: the steps' budget together).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
REHEARSE=0
[[ "${1:-}" == "--rehearse" ]] && REHEARSE=1
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=$REPO/.venv/bin/python
else PY=python3; fi
OUT_DIR=${OUT:-$REPO/gpu-check}
WHEELS=${GPU_WHEELS:-$REPO/gpu-wheels}
BUDGET=${GPU_CHECK_SECONDS:-480}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT_DIR"
SUMMARY=$OUT_DIR/gpu-check-summary.md
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" DTLENS_CACHE="$WORK/cache" PYTHONUNBUFFERED=1
export PIP_BREAK_SYSTEM_PACKAGES=1  # the image's own Python may be marked externally managed
START=$SECONDS
FAILED=0
export PY WHEELS WORK REPO REHEARSE
# The CLI from this checkout (no install of dtlens itself).
dtlens_cli() { "$PY" -c "from cli.main import app; app(prog_name='dtlens')" "$@"; }

if ((REHEARSE)); then
  DEVICE=cpu MODE="rehearsal on the CPU, tiny sizes"
  BENCH=(--quick --device cpu --gpus 1)
  export DTLENS_TEST_DEVICE=cpu
else
  DEVICE=cuda MODE="CUDA"
  BENCH=()
fi

{
  echo "# dtlens GPU check ($MODE)"
  echo
  echo "- $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname); $(nproc) CPU(s)"
  echo "- git: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')"
  command -v nvidia-smi >/dev/null && echo "- $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
} >"$SUMMARY"

# step NAME SECONDS CMD...: run CMD within SECONDS (and what is left of the budget), log it, and
# add its status, time and the end of its output to the summary.
step() {
  local name=$1 limit=$2 left
  shift 2
  left=$((BUDGET - (SECONDS - START)))
  ((left < limit || REHEARSE)) && limit=$left  # a rehearsal: only the budget (a slow CPU)
  if ((limit <= 0)); then
    printf '\n## %s: not run (the %d s budget is spent)\n' "$name" "$BUDGET" >>"$SUMMARY"
    FAILED=1
    return
  fi
  local t0=$SECONDS log=$WORK/$name.log code
  echo "[gpu_check] $name (at most $limit s)" >&2
  timeout "$limit" bash -c '"$@"' step "$@" >"$log" 2>&1  # functions too (exported)
  code=$?
  local state="ok"
  ((code == 124)) && state="TIMED OUT after $limit s"
  ((code != 0 && code != 124)) && state="FAILED (exit $code)"
  ((code != 0)) && FAILED=1
  {
    printf '\n## %s: %s in %d s\n\n`%s`\n\n```\n' "$name" "$state" $((SECONDS - t0)) "$*"
    tail -n "${TAIL:-40}" "$log"
    printf '```\n'
  } >>"$SUMMARY"
  cp "$log" "$OUT_DIR/$name.log" 2>/dev/null
  echo "[gpu_check] $name: $state" >&2
}

# 0. dependencies: what the image lacks, from the carried wheels; `datasets` (which
# transformer-lens imports and dtlens never calls) as an import-only stand-in if still missing.
install() {
  local probe="import transformer_lens, netCDF4, matplotlib, gymnasium, mujoco, minari, distributed, pytest"
  if "$PY" -c "$probe" 2>/dev/null; then
    echo "every dependency is importable: nothing to install"
  elif compgen -G "$WHEELS/*.whl" >/dev/null; then
    "$PY" -m pip install --no-index --no-deps --disable-pip-version-check "$WHEELS"/*.whl || return 1
  else
    echo "dependencies missing and no wheels in $WHEELS (make gpu-wheels, then carry it)"
    return 1
  fi
  if ! "$PY" -c "import datasets" 2>/dev/null; then
    "$PY" "$REPO/benchmarks/gpu_check_shim.py" "$WORK/shim" || return 1
  fi
  PYTHONPATH="$PYTHONPATH:$WORK/shim" \
    "$PY" -c "$probe; import dtlens.experiments.reproduce, cli.main; print('dtlens imports')"
}
smoke() {
  if ((REHEARSE)); then  # the tests' tiny preset (the mini preset's shape), one seed
    "$PY" - "$WORK" <<'EOF' || return 1
import sys
from dataclasses import replace
from pathlib import Path
from dtlens.data.collect import collect_to_file
from dtlens.experiments.reproduce import reproduce
from dtlens.report.report import write_report
from tests.test_reproduce import tiny_preset
work = Path(sys.argv[1])
data = collect_to_file(work / "hopper.hdf5", "Hopper-v5", "random", transitions=2000, seed=0)
preset = replace(tiny_preset(data, work), seeds=(666,))
print(write_report(reproduce(preset, work / "smoke", workers=1, log=print)))
EOF
  else
    "$PY" - "$WORK/inputs" <<'EOF' || return 1
import sys
from pathlib import Path
from dtlens.data.collect import collect_to_file
from dtlens.experiments.presets import PAPER_ENVS
from dtlens.model.synthetic import write_random_hf_model
root = Path(sys.argv[1])
for kind in ("gpt2", "imagegpt"):
    write_random_hf_model(kind, root / kind, seed=0)
collect_to_file(root / "d4rl" / "hopper-medium-v2.hdf5", PAPER_ENVS["hopper"], "medium",
                transitions=3000, seed=0)
EOF
    dtlens_cli reproduce --preset paper --budget smoke --tasks hopper --seeds 666 \
      --device cuda:0 --workers 1 --out "$WORK/smoke" --gpt2 "$WORK/inputs/gpt2" \
      --imagegpt "$WORK/inputs/imagegpt" --d4rl-dir "$WORK/inputs/d4rl"
  fi
  ls "$WORK/smoke"
}
export -f dtlens_cli install smoke
step install 150 install
[[ -d $WORK/shim ]] && export PYTHONPATH="$PYTHONPATH:$WORK/shim"

step bench_gpu 240 "$PY" benchmarks/bench_gpu.py "${BENCH[@]}"

step smoke 240 smoke
[[ -f $WORK/smoke/report.md ]] && cp "$WORK/smoke/report.md" "$OUT_DIR/smoke-report.md"

step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider -m cuda -o addopts="-ra" tests

printf '\nTotal %d s of the %d s budget; %s.\n' $((SECONDS - START)) "$BUDGET" \
  "$( ((FAILED)) && echo 'SOME STEPS FAILED' || echo 'every step ok')" >>"$SUMMARY"
echo "[gpu_check] summary: $SUMMARY" >&2
exit $FAILED
