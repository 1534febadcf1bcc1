# sapnet developer targets. Set-up: `make install`, then `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= runs/reproduce
export PYTHONUNBUFFERED := 1

.PHONY: install test test-slow lint format bench reproduce clean

install:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip<25"
	# setuptools<81 keeps pkg_resources, which detectron2 0.6 imports.
	$(BIN)/python -m pip install -e ".[dev,mobile]" "setuptools<81"
	bash scripts/install_detectron2.sh $(BIN)/python

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

reproduce:
	bash scripts/reproduce.sh $(OUT)

clean:
	rm -rf runs .pytest_cache .ruff_cache

# The README figure: runs (or resumes) `make reproduce` into $(OUT), then draws the selectors' overlays of the
# most crowded training image and writes docs/figures/selectors-grid.png (commit it only if < 300 KB).
.PHONY: figure
figure:
	FIGURE=1 bash scripts/reproduce.sh $(OUT)
