#!/usr/bin/env bash
# Builds llmlab for NVIDIA GPUs on a machine that needs no GPU (nor a CUDA
# install): the CUDA 13 toolkit comes from NVIDIA's PyPI wheels.
#
#   scripts/build-cuda.sh            llmlab with `--features cuda` -> dist/llmlab-cuda/
#   scripts/build-cuda.sh --ggml     also llama.cpp's CUDA libraries (20 minutes on 2 idle cores)
#
# What goes where, and why:
# - candle (image models) is compiled with CUDA here: nvcc turns its
#   kernels into PTX and cubins for LLMLAB_CUDA_ARCH, and the CUDA libraries
#   (cuBLAS, cuRAND) are linked dynamically (a
#   stub libcuda.so stands in for the driver's at link time; the driver
#   provides the real one at run time).
# - llama.cpp (chat, embeddings, vision) is linked as shared libraries
#   (libllama, libggml*, libmtmd) placed in dist/llmlab-cuda/lib, which the
#   binary finds through its rpath. The ones cargo builds are CPU-only; a
#   CUDA build of the same llama.cpp source (the one llama-cpp-sys-2
#   vendors) replaces them: `--ggml` makes it here, or bench/gpu/ makes it on
#   the GPU machine, where llama-server for the side-by-side benchmark comes
#   out of the same build (16 cores: 6 minutes instead of 40).
#   llama-cpp-sys-2's own `cuda` feature links cuBLAS statically, and the
#   wheels have no static cuBLAS: hence shared libraries.
# - The CPU level is portable (x86-64-v3, AVX2): the GPU machine's host and
#   our build machines are different CPUs, so never target-cpu=native here.
#
# Env: LLMLAB_CUDA_ARCH (90: H100/H200), LLMLAB_CUDA_CACHE (~/.cache/llmlab-cuda:
#      toolkit, target folder, ggml build), JOBS (nproc).
# Prints the path of the packed folder; dist/llmlab-cuda.tar.xz holds it too.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
ARCH=${LLMLAB_CUDA_ARCH:-90}
CACHE=${LLMLAB_CUDA_CACHE:-$HOME/.cache/llmlab-cuda}
JOBS=${JOBS:-$(nproc)}
WITH_GGML=0
[ "${1:-}" = --ggml ] && WITH_GGML=1

# 1. The toolkit from PyPI (nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC).
TOOLKIT=$CACHE/toolkit
CU=$TOOLKIT/nvidia/cu13
if [ ! -x "$CU/bin/nvcc" ]; then
  echo "build-cuda: installing the CUDA 13 toolkit wheels into $TOOLKIT" >&2
  python3 -m pip install --quiet --target "$TOOLKIT" nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 \
    nvidia-cublas==13.1.0.3 nvidia-curand
fi
# Linkers look for unversioned names; CMake's FindCUDAToolkit for lib64.
for lib in "$CU"/lib/lib*.so.*; do
  base=${lib##*/}; base=${base%%.so.*}.so
  [ -e "$CU/lib/$base" ] || ln -s "${lib##*/}" "$CU/lib/$base"
done
[ -e "$CU/lib64" ] || ln -s lib "$CU/lib64"
# The driver API (libcuda) ships with the driver, not the toolkit: a stub
# that defines every cu* function of cuda.h satisfies the linker.
if [ ! -e "$CU/lib/stubs/libcuda.so" ]; then
  mkdir -p "$CU/lib/stubs"
  gcc -E -I"$CU/include" "$CU/include/cuda.h" |
    grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u |
    sed 's/.*/void &(void) {}/' > "$CU/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -o "$CU/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 "$CU/lib/stubs/libcuda_stub.c"
fi
export PATH=$CU/bin:$PATH CUDA_ROOT=$CU CUDA_PATH=$CU CUDA_TOOLKIT_ROOT_DIR=$CU
export LIBRARY_PATH=$CU/lib:$CU/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
export CUDA_COMPUTE_CAP=$ARCH  # candle-kernels: the architecture to compile for (no GPU to ask)

# 2. llmlab. DT_RPATH (not RUNPATH) so that the llama.cpp libraries find
#    each other in lib/ too.
export CARGO_TARGET_DIR=$CACHE/target
export RUSTFLAGS="-C target-cpu=x86-64-v3 -C link-arg=-Wl,--disable-new-dtags,-rpath,\$ORIGIN/lib"
cargo build --release -p llmlab-server --bin llmlab --features cuda >&2

DIST=$ROOT/dist/llmlab-cuda
rm -rf "$DIST" && mkdir -p "$DIST/lib"
cp "$CARGO_TARGET_DIR/release/llmlab" "$DIST/"
strip "$DIST/llmlab"
# From llama-cpp-sys-2's own output folder: the copies it links into
# target/release are bare symlinks to names that are not there.
LLAMA_LIBS=$(ls -td "$CARGO_TARGET_DIR"/release/build/llama-cpp-sys-2-*/out/lib | head -1)
cp -P "$LLAMA_LIBS"/lib*.so* "$DIST/lib/"

# 3. Optionally llama.cpp's CUDA libraries from the same source, with the
#    switches llama-cpp-sys-2 uses (its copy has no tools but mtmd).
if [ "$WITH_GGML" = 1 ]; then
  SRC=$(scripts/llama-source.sh)
  BUILD=$CACHE/ggml-cuda-$ARCH
  # No RUNPATH in these libraries: one would hide the binary's rpath from
  # them, and libggml.so would not find libggml-cuda.so beside it.
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DCMAKE_SKIP_BUILD_RPATH=ON \
    -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DCMAKE_CUDA_COMPILER="$CU/bin/nvcc" \
    -DCUDAToolkit_ROOT="$CU" -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_MTMD=ON \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF >&2
  cmake --build "$BUILD" -j "$JOBS" --target llama llama-common mtmd >&2
  find "$BUILD/bin" -name 'lib*.so*' -exec cp -P {} "$DIST/lib/" \;
fi

XZ_OPT='-6 -T0' tar -C "$ROOT/dist" -cJf "$ROOT/dist/llmlab-cuda.tar.xz" llmlab-cuda
echo "$DIST"
