#!/usr/bin/env bash
# Runs every test: installs system and Python test packages, fetches the test
# models when missing (verified by size and sha256), runs the workspace
# suite, then the end-to-end suite with the official `openai` client against
# a real `llmlab serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
# One build for everything, shared with scripts/run.sh: the test binaries
# and the `llmlab` binary they drive (setup.sh installs what it needs).
LLMLAB_BIN=$(scripts/build.sh)
# The e2e suites' clients: OpenAI's, Ollama's, and raw WebSocket, gRPC (with
# protoc, for stubs compiled from proto/ at test time) and AMQP clients;
# Playwright drives Debian's Chromium for the playground (its wheel bundles
# its driver; `playwright install` is never run).
python3 -c 'import openai, ollama, pytest, websocket, grpc, grpc_tools, pika, playwright' 2>/dev/null \
  || python3 -m pip install --quiet openai ollama pytest websocket-client grpcio grpcio-tools pika playwright
scripts/setup.sh --browser >&2
"$LLMLAB_BIN" pull qwen2.5-coder-0.5b gemma-3-270m all-minilm-l6-v2
# Vision tests run real llama.cpp projectors with random weights (no vision
# weights can be downloaded): written once into the models folder.
MODELS_DIR="${LLMLAB_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llmlab/models}"
python3 -c 'import gguf, numpy' 2>/dev/null \
  || python3 -m pip install --quiet -r tests/vision-requirements.txt
python3 scripts/make-vision-fixtures.py "$MODELS_DIR" --with-qwen2vl
# Likewise image generation: tiny random SD-1.5-, SDXL-, SD3- and Flux-shaped
# diffusers folders.
python3 -c 'import safetensors' 2>/dev/null \
  || python3 -m pip install --quiet -r tests/diffusion-requirements.txt
python3 scripts/make-diffusion-fixture.py "$MODELS_DIR"
python3 scripts/make-sdxl-fixture.py "$MODELS_DIR"
python3 scripts/make-flow-fixtures.py "$MODELS_DIR"
# Test binaries run one after another; inside each, tests that use a real
# model share one loaded instance.
cargo test --workspace "$@"
LLMLAB_BIN="$LLMLAB_BIN" python3 -m pytest -q tests/e2e
