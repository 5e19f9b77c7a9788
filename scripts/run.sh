#!/usr/bin/env bash
# Runs llmlab on the default model on a fresh machine: installs system
# packages, builds, fetches the model when missing, then starts it.
# Arguments are passed to `llmlab` (default: an interactive chat).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -p llmlab-server --quiet
llmlab() { cargo run -p llmlab-server --quiet -- "$@"; }
llmlab pull
if [ $# -eq 0 ]; then set -- serve; fi
llmlab "$@"
