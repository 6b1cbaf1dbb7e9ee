# syntax=docker/dockerfile:1
# One image for every part of gpushare: timekeeper, webhook, sidecar, node manager, and the
# vGPU hook library the node manager installs on each GPU node.
#
#   docker build -t ghcr.io/gpushare/gpushare:0.1.0 .
#
# The hook and the generated gRPC code are built by the same make targets as on a workstation
# (`make hook`, `make proto`), so `make test` exercises these commands.

# --- the vGPU hook -------------------------------------------------------------------------
# Built on manylinux2014 (glibc 2.17): the library is preloaded into users' CUDA containers,
# whose C library may be much older than this image's. cuda.h comes from the PyPI wheel
# nvidia-cuda-runtime, exactly as in `make hook`; no CUDA toolkit is needed.
FROM quay.io/pypa/manylinux2014_x86_64 AS hook
WORKDIR /src
COPY Makefile pyproject.toml ./
COPY vgpu-runtime/hook vgpu-runtime/hook
# `make hook` needs only the virtual environment that holds cuda.h: create that one and mark
# it installed (the stamp `make venv` writes), so make does not install the development tools.
RUN /opt/python/cp311-cp311/bin/python -m venv .venv \
 && .venv/bin/python -m pip install --quiet "nvidia-cuda-runtime" \
 && touch .venv/.installed
RUN make hook

# --- the Python distribution -----------------------------------------------------------------
FROM python:3.11-slim-bookworm AS wheel
RUN apt-get update && apt-get install -y --no-install-recommends make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The device plugin API's Python code is generated (`make proto`, grpcio-tools), as for the
# hook: a virtual environment with the generator only, marked installed.
RUN python -m venv .venv \
 && .venv/bin/python -m pip install --quiet "grpcio-tools>=1.60" \
 && touch .venv/.installed
RUN make proto
RUN .venv/bin/python -m pip wheel --no-deps --wheel-dir /dist .

# --- the image -------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=wheel /dist /tmp/dist
RUN python -m pip install /tmp/dist/*.whl && rm -rf /tmp/dist
# The DaemonSet's init container copies the hook from here to the node
# (nodemanager.hookLibraryImagePath).
COPY --from=hook /src/vgpu-runtime/hook/build/libgpushare-vgpu.so /opt/gpushare/lib/libgpushare-vgpu.so
# Non-root by default (the UID/GID the chart's securityContexts name); the node manager's
# pod runs as root by its own securityContext.
RUN groupadd --gid 65532 gpushare \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gpushare
USER 65532:65532
ENTRYPOINT ["gpushare"]
CMD ["--help"]
