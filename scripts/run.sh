#!/usr/bin/env bash
# Runs llmlab on the default model on a fresh machine: installs system
# packages, builds (the same build as scripts/test.sh), fetches the model
# when missing, then starts it.
# Arguments are passed to `llmlab` (default: `serve`).
set -euo pipefail
cd "$(dirname "$0")/.."
llmlab=$(scripts/build.sh)
"$llmlab" pull
if [ $# -eq 0 ]; then set -- serve; fi
exec "$llmlab" "$@"
