# `make test` and `make run` do all set-up from nothing: a .venv with CPU torch pinned
# (torch==2.13.0), triton, helion==1.5.0 and the rest of pyproject.toml's dependencies.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.presetdb-installed

.PHONY: test run lint bench-cpu clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,farm]'
	touch $(STAMP)

# The whole suite, on CPU: Helion kernels run in the Triton interpreter.
test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider

# The main job: the end-to-end demo on the embedded default db (it switches to the Triton
# interpreter by itself when no GPU is present, and says so).
run: $(STAMP)
	$(VENV)/bin/presetdb demo

lint: $(STAMP)
	$(VENV)/bin/ruff check presetdb migrations tests benchmarks
	$(VENV)/bin/mypy presetdb

clean:
	rm -rf $(VENV) build dist *.egg-info
