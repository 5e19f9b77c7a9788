#!/usr/bin/env bash
# The one build both scripts/run.sh and scripts/test.sh use: the workspace's
# test binaries and the `llmlab` binary, from a single cargo command line.
# Any other command line (`cargo build -p llmlab-server`, `cargo run`)
# resolves other features for the build tools and compiles llama.cpp a
# second time (docs/PITFALLS.md), so nothing here or in the two scripts
# runs cargo any other way. Prints the path of the `llmlab` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
cargo test --workspace --no-run --quiet >&2
echo "${CARGO_TARGET_DIR:-$PWD/target}/debug/llmlab"
