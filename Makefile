# `make test` and `make demo` set the environment up from nothing; nothing else needs typing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision are pinned as a pair before anything else resolves them. With a CUDA GPU any
# matching pair in range will do; without one, torch 2.14.1 + torchvision 0.29.1: PyPI's torchvision
# (needed by open_clip and qwen-vl-utils) only loads beside a CUDA build of torch, and the local CPU
# build of torch 2.13 has no torchvision that imports. That pair runs on the CPU here.
comma := ,
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_GPU),torch>=2.4$(comma)<2.15 torchvision>=0.19$(comma)<0.30,torch==2.14.1 torchvision==0.29.1)

# `make image`: the container image the Helm chart runs (helm/slas: image slas:<appVersion>), CUDA torch inside
IMAGE ?= slas:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
DOCKER ?= docker

.PHONY: setup test lint demo clean image

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(foreach p,$(TORCH_SPEC),"$(p)")
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: setup
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/slas demo

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

image:
	$(DOCKER) build -t $(IMAGE) .

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
