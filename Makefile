# gpushare: `make run` starts the platform on this machine, `make test` proves it.
# Both set up their own virtual environment; nothing needs to be installed by hand.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all venv build hook proto kube-tools lint test run bench gpu-check clean

all: build

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

# Everything that is generated, compiled or fetched.
build: venv hook proto kube-tools

# Real helm and kubectl (for tests/cluster), fetched once into the virtual environment.
kube-tools: venv
	$(BIN)/python scripts/fetch-kube-tools.py $(BIN) $(BIN)/python

# The Kubernetes control-plane binaries of tests/cluster (docs/testing.md): KUBEBUILDER_ASSETS
# if set, else this folder (override with `make test K8S_ASSETS=...`).
K8S_ASSETS ?= $(or $(KUBEBUILDER_ASSETS),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/gpushare-k8s-v1.36.2)

# The vGPU hook and the stub CUDA driver it is tested against (vgpu-runtime/hook).
hook: venv
	$(MAKE) -C vgpu-runtime/hook CUDA_INCLUDE="$$($(BIN)/python -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "include"))')"

# Python code of the kubelet device plugin API, generated from its .proto.
PROTO_SRC := vgpu-runtime/nodemanager/proto
PROTO_OUT := vgpu-runtime/nodemanager/api
PROTOS    := $(wildcard $(PROTO_SRC)/*.proto)
PROTO_GEN := $(patsubst $(PROTO_SRC)/%.proto,$(PROTO_OUT)/%_pb2.py,$(PROTOS))

proto: venv $(PROTO_GEN)

# grpcio-tools writes `import x_pb2`; the package is imported as `nodemanager.api`.
$(PROTO_OUT)/%_pb2.py: $(PROTO_SRC)/%.proto $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I $(PROTO_SRC) --python_out=$(PROTO_OUT) \
		--pyi_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) $<
	sed -i 's/^import \([a-z_]*_pb2\) as /from nodemanager.api import \1 as /' \
		$(PROTO_OUT)/$*_pb2_grpc.py

lint: build
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gpushare timekeeper webhook extender sidecar vgpu-runtime/nodemanager migrations

test: lint
	KUBEBUILDER_ASSETS="$(K8S_ASSETS)" $(BIN)/python -m pytest $(PYTEST_ARGS)

run: build
	scripts/run-local.sh

bench: build
	$(BIN)/python -m tests.bench

# The hook's checks on a real NVIDIA GPU with PyTorch (docs/hook.md); not part of `make test`.
gpu-check: hook
	python3 vgpu-runtime/hook/tests/gpu_check.py --hook vgpu-runtime/hook/build/libgpushare-vgpu.so

clean:
	rm -rf $(VENV) .run .mypy_cache .pytest_cache .ruff_cache .hypothesis
