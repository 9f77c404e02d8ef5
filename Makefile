# Each target creates .venv when missing: torch (CPU build) first, then the package with dev extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick bench bench-gpu gpu-wheels lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# the atlas engine's fireants backend; --no-deps: its simpleitk==2.2.1 pin (it runs with ours)
	$(BIN)/python -m pip install --quiet --no-deps fireants==1.5.0
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/liverfat demo --out demo_output

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-quick: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks --out benchmarks/results

# The GPU check (docs/gpu.md): skips with a reason where there is no CUDA device.
bench-gpu: $(STAMP)
	$(BIN)/python -m benchmarks gpu --out benchmarks/results

# Wheels of SimpleITK and MONAI for the lent GPU machine's bare image, into .whl/ (docs/gpu.md).
gpu-wheels:
	PYTHON=$(PYTHON) bash benchmarks/gpu_wheels.sh

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf demo_output .pytest_cache
