# Quickstart: `make train` then `make test`. Both create/reuse the virtualenv in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= $(CURDIR)/data/tfds
WORKDIR ?= $(CURDIR)/workdirs/fashion_mnist
CONFIG ?= configs/fashion_mnist.py
PYTEST_ARGS ?=

.PHONY: venv test test-all train data sweep clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Fast suite (slow tests excluded); 8 simulated CPU devices are set up in tests/conftest.py.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

# Everything, including the tests marked slow.
test-all: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "" $(PYTEST_ARGS)

# Builds the Fashion-MNIST TFDS dataset offline from Debian's dataset-fashion-mnist files.
data: $(STAMP)
	$(PY) scripts/prepare_fashion_mnist.py --data_dir=$(DATA_DIR)

# Trains the embedded demo and prints `final: top1=... top5=...`.
train: data
	$(PY) experiments/train.py --config=$(CONFIG) --workdir=$(WORKDIR) --config.data_dir=$(DATA_DIR)

# The default clipping x batch-size sweep on the demo (about 45 minutes on 2 CPU cores).
sweep: data
	$(PY) scripts/sweep_clipping.py --config=configs/fashion_mnist_sweep.py --config.data_dir=$(DATA_DIR) --workdir=$(CURDIR)/workdirs/sweep

clean:
	rm -rf $(VENV) workdirs
