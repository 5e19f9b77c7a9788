#!/usr/bin/env bash
# Installs the system packages llmlab needs to build (llama.cpp is compiled
# from source by llama-cpp-sys-2): a C/C++ toolchain, cmake and libclang;
# with `--browser`, also Chromium for the playground's browser tests.
# Safe to run repeatedly; does nothing when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || missing+=(g++)
# bindgen needs libclang itself; libclang-cpp (pulled in by other packages)
# does not count.
ldconfig -p 2>/dev/null | grep -Eq 'libclang(-[0-9][0-9.]*)?\.so' \
  || ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 \
  || missing+=(libclang-dev)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
# `--browser` (scripts/test.sh): the headless Chromium the playground's
# browser tests drive; Debian's package, so no browser download at test time.
if [ "${1:-}" = --browser ] && ! [ -x /usr/bin/chromium ]; then
  missing+=(chromium)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is required (https://rustup.rs)" >&2; exit 1; }

# llama.cpp's build options (the GGML_* and C/C++ flag entries of
# .cargo/config.toml) reach its CMake build through the environment, which
# cargo's fingerprint does not track: rebuild llama-cpp-sys-2 whenever they
# differ from the cached build.
target=${CARGO_TARGET_DIR:-target}
stamp="$target/.ggml-build-options"
options=$(grep -E '^(GGML_|CFLAGS|CXXFLAGS)' .cargo/config.toml || true)
if [ -d "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$options" ]; then
  echo "setup: llama.cpp build options changed; rebuilding llama-cpp-sys-2" >&2
  cargo clean -p llama-cpp-sys-2 --quiet 2>/dev/null || true
fi
mkdir -p "$target" && printf '%s' "$options" >"$stamp"
