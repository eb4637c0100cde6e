# Quickstart: `make train` then `make test`. Both create/reuse the virtualenv in .venv.
# `make finetune` fine-tunes the `make train` model on real handwritten digits (an image folder).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= $(CURDIR)/data/tfds
WORKDIR ?= $(CURDIR)/workdirs/fashion_mnist
CONFIG ?= configs/fashion_mnist.py
FINETUNE_DATA ?= $(CURDIR)/data/finetune_demo
FINETUNE_WORKDIR ?= $(CURDIR)/workdirs/finetune
PYTEST_ARGS ?=
TIMM_STAMP := $(VENV)/.timm-extra
DEMO_STAMP := $(VENV)/.demo-extra

.PHONY: venv timm-extra test test-all train data sweep finetune clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The optional test extra: CPU torch + timm, for the tests against real timm (skipped with a
# reason when it cannot be installed, e.g. offline). The stamp exists only after a successful
# install; without it `make test` / `make test-all` print a warning banner on stderr
# (before and after pytest; the exit status stays pytest's).
timm-extra: $(TIMM_STAMP)

$(TIMM_STAMP): $(STAMP) scripts/install_timm_extra.sh
	bash scripts/install_timm_extra.sh $(PY) && touch $(TIMM_STAMP) || \
	  echo "timm extra not installed: the timm interop tests will be skipped." >&2

# Shell code: a banner on stderr when the timm extra is missing (never fails); $(1) is the verb.
timm_missing_banner = if [ ! -f $(TIMM_STAMP) ]; then printf '%s\n' '' \
  '********************************************************************************' \
  '* WARNING: the optional timm test extra (CPU torch + timm) is NOT installed:' \
  '* the timm interop tests $(1) SKIPPED, so nothing is checked against real timm' \
  '* (pytest lists every skip with its reason). Why: see the output of' \
  '* scripts/install_timm_extra.sh at the start of this run. Retry: make timm-extra' \
  '********************************************************************************' \
  '' >&2; fi

# Fast suite (slow tests excluded); 8 simulated CPU devices are set up in tests/conftest.py.
test: $(STAMP) $(TIMM_STAMP)
	@$(call timm_missing_banner,will be)
	$(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS); status=$$?; \
	  $(call timm_missing_banner,were); exit $$status

# Everything, including the tests marked slow.
test-all: $(STAMP) $(TIMM_STAMP)
	@$(call timm_missing_banner,will be)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "" $(PYTEST_ARGS); status=$$?; \
	  $(call timm_missing_banner,were); exit $$status

# Builds the Fashion-MNIST TFDS dataset offline from Debian's dataset-fashion-mnist files.
data: $(STAMP)
	$(PY) scripts/prepare_fashion_mnist.py --data_dir=$(DATA_DIR)

# Trains the embedded demo and prints `final: top1=... top5=...`.
train: data
	$(PY) experiments/train.py --config=$(CONFIG) --workdir=$(WORKDIR) --config.data_dir=$(DATA_DIR)

# The default clipping x batch-size sweep on the demo (about 45 minutes on 2 CPU cores).
sweep: data
	$(PY) scripts/sweep_clipping.py --config=configs/fashion_mnist_sweep.py --config.data_dir=$(DATA_DIR) --workdir=$(CURDIR)/workdirs/sweep

# Fine-tunes the `make train` model (trained first if missing) on scikit-learn's handwritten
# digits written as an image folder; prints `final: top1=...`.
finetune: $(WORKDIR)/summary.json $(DEMO_STAMP)
	$(PY) scripts/prepare_finetune_demo.py --out=$(FINETUNE_DATA)
	$(PY) experiments/train.py --config=configs/finetune.py:demo --workdir=$(FINETUNE_WORKDIR) \
	  --config.init_from=$(WORKDIR) --config.data_dir=$(FINETUNE_DATA)

$(WORKDIR)/summary.json:
	$(MAKE) train

$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[demo]"
	touch $(DEMO_STAMP)

clean:
	rm -rf $(VENV) workdirs
