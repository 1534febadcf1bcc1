# sapnet developer targets. Set-up: `make install`, then `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/reproduce
export PYTHONUNBUFFERED := 1

.PHONY: install browser test test-slow lint format bench gpu-check reproduce clean

install:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip<25"
	# setuptools<81 keeps pkg_resources, which detectron2 0.6 imports.
	$(BIN)/python -m pip install -e ".[dev,mobile]" "setuptools<81"
	bash scripts/install_detectron2.sh $(BIN)/python
	# SAM 2.1 after detectron2: its iopath pin (0.1.10) must win over detectron2 0.6's "<0.1.10" (see
	# pyproject.toml); pip then prints that known conflict. No CUDA extension, and the project's torch.
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --no-build-isolation -e ".[sam2]"

# Headless Chromium for the report.html browser tests (Debian package `chromium`); idempotent: does nothing
# when a Chromium is already on PATH. Needs root or sudo for apt-get; without it the browser tests are skipped.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium || command -v chromium-browser)"; \
	else \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends chromium; \
	fi

test:
	$(BIN)/python -m pytest -q

test-slow:
	$(BIN)/python -m pytest -q -m slow

lint:
	$(BIN)/ruff check sapnet_cli stages tests benchmarks
	$(BIN)/ruff format --check sapnet_cli stages tests benchmarks

format:
	$(BIN)/ruff format sapnet_cli stages tests benchmarks
	$(BIN)/ruff check --fix sapnet_cli stages tests benchmarks

bench:
	$(BIN)/python benchmarks/run_all.py --out runs/bench

# One CUDA GPU, offline, < 8 minutes: CUDA tests, speed targets, the chain on CUDA -> runs/gpu-check/summary.md.
# SMOKE=1: the same script at toy sizes on CPU (the default test suite runs it too).
gpu-check:
	$(BIN)/python benchmarks/gpu_check.py --out runs/gpu-check $(if $(SMOKE),--cpu-smoke)

reproduce:
	bash scripts/reproduce.sh $(OUT)

clean:
	rm -rf runs .pytest_cache .ruff_cache

# The README figure: runs (or resumes) `make reproduce` into $(OUT), then draws the selectors' overlays of the
# most crowded training image and writes docs/figures/selectors-grid.png (commit it only if < 300 KB).
.PHONY: figure
figure:
	FIGURE=1 bash scripts/reproduce.sh $(OUT)
