# Two entry points: `make demo` (the main job) and `make test` (what CI runs).
# Both create .venv in the checkout on first use and install everything from the package registries.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mgd-installed

export OMP_NUM_THREADS ?= 1

.PHONY: test demo bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/quickstart.py

bench: $(STAMP)
	$(PY) benchmarks/bench_matching.py
	$(PY) benchmarks/bench_reducer.py

clean:
	rm -rf $(VENV) .pytest_cache
