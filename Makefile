# The two entry points are `make demo` and `make test`; both set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
EXTRAS ?= torch,test
BIN := $(VENV)/bin

.PHONY: demo test lint unit integration chaos e2e e2e-images image crds binaries clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	touch $@

## demo: local control plane + operator + the example run: two crashes, a resume, a lagging
## consumer, retention; a timeline, then `kubectl get tr,ckpt`; stops all (under 3 minutes)
demo: $(VENV)/.installed
	$(BIN)/ckpt-operator demo

## test: lint, then every test tier (the e2e tier skips, saying why, where no real node can run)
test: lint binaries
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/ckpt-operator crds --check

## binaries: build (first run, cached) or find kube-apiserver, etcd, controller-manager, kwok
binaries: $(VENV)/.installed
	$(BIN)/python -m ckpt_operator.testing.binaries

unit: $(VENV)/.installed
	$(BIN)/python -m pytest tests/unit tests/sdk

integration: binaries
	$(BIN)/python -m pytest -m integration

## chaos: the operator SIGKILLed >= 30 times at random (CKPT_CHAOS_SEED=N replays a run)
chaos: binaries
	$(BIN)/python -m pytest -m chaos tests/integration/test_chaos.py

## e2e: Helm + the operator image + trainer pods on a real node (kubelet, containerd); root
e2e: $(VENV)/.installed
	$(BIN)/python -m pytest -m e2e tests/e2e

## e2e-images: build the e2e tier's images offline (debootstrap base, operator, trainer; cached)
e2e-images: $(VENV)/.installed
	$(BIN)/python -m ckpt_operator.testing.images

image:
	docker build -t ckpt-operator:dev .

## crds: regenerate what the pydantic models generate (crds/, chart CRD templates, values
## schema, docs/crd-reference.md)
crds: $(VENV)/.installed
	$(BIN)/ckpt-operator crds

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
