#!/usr/bin/env bash
# Starts the platform on this machine for a demo: the timekeeper (SQLite), the webhook
# (self-signed TLS) and a node manager with simulated GPUs. State lives under .run/.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
RUN=.run
mkdir -p "$RUN"
echo "gpushare: starting on this machine (state in $RUN/)"
echo "gpushare: no part is runnable yet" >&2
exit 1
