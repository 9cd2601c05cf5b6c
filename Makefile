# derainbench — `make demo` runs the main job offline; `make test` runs the test suite.
# Both create .venv and install the project first (torch from pip; a CUDA build where pip picks one).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev,tensorboard,zoo]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	YOLO_OFFLINE=1 $(VENV)/bin/derainbench demo --out runs/demo

test: setup
	$(VENV)/bin/ruff check .
	YOLO_OFFLINE=1 $(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) bench/mspfn_speed.py

clean:
	rm -rf runs .pytest_cache
