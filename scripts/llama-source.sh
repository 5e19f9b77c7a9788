#!/usr/bin/env bash
# Prints the folder of the llama.cpp source that llama-cpp-sys-2 compiles
# (the version pinned in Cargo.toml), so that builds of llama.cpp outside
# cargo (CUDA libraries, the llama-server peer on the GPU machine) use the
# very same source.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^llama-cpp-sys-2 = { version = "=\([^"]*\)".*/\1/p' Cargo.toml)
cargo fetch --quiet >&2
dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"llama-cpp-sys-2-$version"/llama.cpp | head -1)
[ -f "$dir/CMakeLists.txt" ] || { echo "llama-source: no llama.cpp source for llama-cpp-sys-2 $version" >&2; exit 1; }
echo "$dir"
