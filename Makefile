# make demo / make test create .venv from nothing, then run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/mini
SMOKE_INPUTS ?= runs/paper-inputs
SMOKE_OUT ?= runs/paper-smoke

# Debian packages the explorer needs (`dtlens explore`): headless Chromium for its page test,
# EGL (else OSMesa) for MuJoCo's offscreen frames in its rollout replay. Installed when missing
# (as root, with apt-get); otherwise said once.
SYSTEM_PACKAGES := chromium libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6

.PHONY: venv demo test test-fast smoke lint format bench gpu-wheels clean system-packages

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP) system-packages

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || printf '%s ' $$p; done); \
	if [ -z "$$missing" ] || ! command -v dpkg >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "missing Debian packages (explorer test, rollout replay): $$missing; as root: apt-get install $$missing"; \
	fi

# The mini preset without its controls: with them the study took 18 min on a quiet 2-core machine,
# past the demo's 15 (`dtlens reproduce --preset mini` runs them; mini-tasks and laptop have them).
demo: $(STAMP)
	$(BIN)/dtlens reproduce --preset mini --controls none --out $(OUT)

# pytest-xdist: one worker per core (tests/conftest.py gives each its share of the threads and
# orders the tests longest first; loadgroup hands them out in that order).
test: $(STAMP) system-packages
	$(BIN)/pytest -q -n auto --dist loadgroup

test-fast: $(STAMP) system-packages
	$(BIN)/pytest -q -n auto --dist loadgroup -m "not slow"

# The paper preset at the real sizes on its three tasks, smoke budget: stand-in inputs
# (random-weight GPT-2 / ImageGPT-small, collected D4RL-layout files), then the whole study.
smoke: $(STAMP)
	$(BIN)/python -c "from dtlens.experiments.paper_inputs import write_paper_inputs as w; w('$(SMOKE_INPUTS)')"
	$(BIN)/dtlens reproduce --preset paper --budget smoke --seeds 666 --out $(SMOKE_OUT) \
		--gpt2 $(SMOKE_INPUTS)/gpt2 --imagegpt $(SMOKE_INPUTS)/imagegpt --d4rl-dir $(SMOKE_INPUTS)/d4rl

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Wheels of what the GPU machine's image lacks (Python 3.12, manylinux x86-64; at most 64 MiB),
# for benchmarks/gpu_check.sh: carry gpu-wheels/ (ignored) to the device machine.
gpu-wheels: $(STAMP)
	$(BIN)/python benchmarks/gpu_wheels.py --out gpu-wheels

clean:
	rm -rf $(VENV) .pytest_cache
