# Two entry points on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv if missing and installs torch first, then kdforge with all extras.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kdforge-installed
# torchvision does not import beside the 2.13.0 CPU wheel; this pair does (pip takes both
# from local disk on these machines). The package itself only asks for torch>=2.4.
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[all]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kdforge demo --output runs/demo

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf runs .pytest_cache
