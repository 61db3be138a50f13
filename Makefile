# `make test` and `make run` do all set-up from nothing: a .venv with CPU torch pinned
# (torch==2.13.0), triton, helion $(HELION) and the rest of pyproject.toml's dependencies;
# `make test` also builds a second venv with helion $(HELION_2) and runs the suite again
# (pyproject supports helion>=1.5.0,<1.6; both ends are tested).
PYTHON   ?= python3
HELION   ?= 1.5.0
HELION_2 ?= 1.5.1
VENV     ?= .venv
VENV_2   ?= .venv-helion2
PY       := $(VENV)/bin/python
PY_2     := $(VENV_2)/bin/python
STAMP    := $(VENV)/.presetdb-installed
STAMP_2  := $(VENV_2)/.presetdb-installed
# The package's default db (both venvs are editable installs of this tree: one file, built
# with the first venv), rebuilt whenever a migration or seed file changes.
EMBEDDED := presetdb/data/default.db

.PHONY: test test-main test-helion2 run lint bench-cpu clean postgres-bin

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,registry,farm]' "helion==$(HELION)"
	touch $(STAMP)

$(STAMP_2): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_2)
	$(PY_2) -m pip install -q --upgrade pip
	$(PY_2) -m pip install -q torch==2.13.0
	$(PY_2) -m pip install -q -e '.[dev,registry,farm]' "helion==$(HELION_2)"
	touch $(STAMP_2)

$(EMBEDDED): $(STAMP) $(wildcard migrations/versions/*.py) $(wildcard seed_data/*.json)
	$(VENV)/bin/presetdb build --embedded > /dev/null  # the package's default db, from its migrations
	touch $(EMBEDDED)

# The whole suite on CPU (Helion kernels in the Triton interpreter), once per Helion version.
test: test-main test-helion2

test-main: $(STAMP) $(EMBEDDED) postgres-bin
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider

test-helion2: $(STAMP_2) $(EMBEDDED) postgres-bin
	TRITON_INTERPRET=1 $(PY_2) -m pytest -q -p no:cacheprovider

# The main job: the end-to-end demo on the embedded default db (it switches to the Triton
# interpreter by itself when no GPU is present, and says so).
run: $(STAMP) $(EMBEDDED)
	$(VENV)/bin/presetdb demo

# PostgreSQL server binaries for the registry tests (installed as root when missing).
postgres-bin:
	.ci/ensure-postgres

lint: $(STAMP)
	$(VENV)/bin/ruff check presetdb migrations tests benchmarks
	$(VENV)/bin/mypy presetdb

clean:
	rm -rf $(VENV) $(VENV_2) build dist *.egg-info
