# gpushare: `make run` starts the platform on this machine, `make test` proves it.
# Both set up their own virtual environment; nothing needs to be installed by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv build hook proto lint test run bench clean

all: build

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

# Everything that is generated or compiled.
build: venv hook proto

# The vGPU hook and the stub CUDA driver it is tested against (vgpu-runtime/hook).
hook: venv
	$(MAKE) -C vgpu-runtime/hook CUDA_INCLUDE="$$($(BIN)/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "include"))')"

# Python code of the kubelet device plugin API, generated from its .proto.
proto: venv

lint: build
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gpushare timekeeper webhook sidecar vgpu-runtime/nodemanager migrations

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

run: build
	scripts/run-local.sh

bench: build
	$(BIN)/python -m tests.bench

clean:
	rm -rf $(VENV) .run .mypy_cache .pytest_cache .ruff_cache .hypothesis
