#!/usr/bin/env bash
# W2-5's measurements on the GPU machine (one H200, CUDA 13, a PyTorch venv,
# no Rust, no registry). Runs from the repository root there, after
# bench/gpu/prepare.sh put the CUDA build of llmlab and what else goes along
# in dist/ and bench/gpu/carry/ here. Stages, each under the 10 minutes one
# device call may take; files under /tmp survive from one call to the next
# while the machine stays up:
#
#   setup    build llama.cpp b11434 (the source llama-cpp-sys-2 compiles) with
#            CUDA the way upstream does (shared libraries, GGML_CUDA=ON,
#            sm_90): llama-server, the peer, and the libraries llmlab loads in
#            place of its CPU ones (one build: the very same kernels on both
#            sides); write the random-weight GGUF models (Q8_0 blocks).
#   unpack   (part of setup) llmlab's CUDA build, llama.cpp's CUDA libraries in.
#   quantize Q8_0 -> Q4_K_M with llama-quantize, then sd15 and minilm:
#   sd15     SD 1.5-shaped random weights saved by diffusers;
#   minilm   a MiniLM-shaped BERT, converted to GGUF.
#   chat     llmlab serve vs llama-server, one after the other, ROUNDS rounds,
#            each model: concurrency 1 (decode, TTFT), 8 and 32 (aggregate).
#   images   llmlab serve vs diffusers (fp16, SDPA), 512x512, 20 steps.
#   smoke    a build whose CUDA libraries were made on the CPU machine
#            (scripts/build-cuda.sh --ggml): serve and bench a model here.
#   embeddings  llmlab serve (a GGUF BERT on llama.cpp's CUDA backend) vs
#            sentence-transformers (fp32, fp16), batches of 64 sentences.
#
# Usage: bench/gpu/run.sh STAGE...
# Results (JSON and logs) collect in /tmp/llmlab-gpu/out; when the device
# tool's return folder ($OUT) is set, they go back as one results.tgz (it
# returns only so many files).
# Env:   ROUNDS (2), SHAPES (llama3-8b qwen2.5-0.5b: the GGUF models made),
#        CHAT_MODELS (rand-qwen2.5-0.5b rand-llama3-8b: the models measured)
set -uo pipefail
R=$PWD
W=/tmp/llmlab-gpu
RETURN_DIR=${OUT:-}
OUT=$W/out
ROUNDS=${ROUNDS:-2}
# (Set but empty: none, e.g. to measure images alone.)
SHAPES=${SHAPES-llama3-8b qwen2.5-0.5b}
CHAT_MODELS=${CHAT_MODELS-rand-qwen2.5-0.5b rand-llama3-8b}
mkdir -p "$W/models" "$OUT"
export PATH=/usr/local/cuda/bin:$PATH
# CUDA 13 libraries: the toolkit's, then PyTorch's.
VENV_LIBS=$(python3 -c 'import site, glob; print(":".join(glob.glob(site.getsitepackages()[0] + "/nvidia/cu13/lib")))')
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${VENV_LIBS:+:$VENV_LIBS}
LLMLAB=$W/llmlab-cuda/llmlab
SERVER=$W/build/bin/llama-server
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/run.log" >&2; }

stage_setup() {
  if [ ! -d "$W/llama.cpp" ]; then
    tar xJf bench/gpu/carry/llama.cpp-b11434.tar.xz -C "$W"
  fi
  (
    for shape in $SHAPES; do
      [ -f "$W/models/rand-$shape-q8_0.gguf" ] || [ -f "$W/models/rand-$shape-q4_k_m.gguf" ] ||
        python3 bench/gpu/random_gguf.py "$shape" "$W/models/rand-$shape-q8_0.gguf" "$W/llama.cpp/gguf-py"
    done
  ) > "$OUT/models.log" 2>&1 &
  local models=$!
  log "building llama.cpp with CUDA"
  cmake -S "$W/llama.cpp" -B "$W/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF > "$OUT/cmake.log" 2>&1 || { tail -20 "$OUT/cmake.log"; return 1; }
  cmake --build "$W/build" -j "$(nproc)" --target llama-server llama-quantize mtmd > "$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; return 1; }
  log "llama.cpp built"
  stage_unpack
  wait "$models"; cat "$OUT/models.log"
  log "setup done"
}

# llmlab's CUDA build; with llama.cpp built here (setup), its CUDA libraries
# replace the CPU ones cargo built (without, image models still run on the
# GPU through candle).
stage_unpack() {
  rm -rf "$W/llmlab-cuda" && tar xJf dist/llmlab-cuda.tar.xz -C "$W"
  if [ -d "$W/build/bin" ]; then cp -P "$W"/build/bin/lib*.so* "$W/llmlab-cuda/lib/"; fi
  ldd "$LLMLAB" | grep -E 'not found|llama|ggml|mtmd|cuda|cublas' | tee -a "$OUT/run.log"
  "$LLMLAB" --version | tee -a "$OUT/run.log"
}

stage_quantize() {
  for shape in $SHAPES; do
    local q8=$W/models/rand-$shape-q8_0.gguf q4=$W/models/rand-$shape-q4_k_m.gguf
    if [ ! -f "$q4" ]; then
      "$W/build/bin/llama-quantize" --allow-requantize "$q8" "$q4" Q4_K_M "$(nproc)" > "$OUT/quantize-$shape.log" 2>&1 ||
        { tail -20 "$OUT/quantize-$shape.log"; return 1; }
      rm -f "$q8"
    fi
    ls -la "$q4" | tee -a "$OUT/run.log"
    # Bytes of weights one decoded token reads: every tensor but the token
    # embedding table, of which it reads one row.
    PYTHONPATH=$W/llama.cpp/gguf-py python3 -c '
import json, sys, gguf
r = gguf.GGUFReader(sys.argv[1])
print(json.dumps({"file_bytes": sum(int(t.n_bytes) for t in r.tensors),
                  "bytes_per_token": sum(int(t.n_bytes) for t in r.tensors if t.name != "token_embd.weight")}))
' "$q4" > "$OUT/weights-rand-$shape.json"
  done
  stage_sd15 && stage_minilm
}

stage_sd15() {
  if [ ! -d "$W/models/rand-sd15" ]; then
    python3 -m pip install --quiet --no-index --no-deps --target "$W/site" bench/gpu/carry/diffusers-*.whl
    PYTHONPATH=$W/site python3 bench/gpu/with_diffusers.py bench/diffusers/make_weights.py \
      "$W/models/rand-sd15" bench/gpu/carry/tokenizer > "$OUT/sd15-weights.log" 2>&1 ||
      { tail -20 "$OUT/sd15-weights.log"; return 1; }
  fi
}

stage_minilm() {
  if [ ! -f "$W/models/rand-minilm-f16.gguf" ]; then
    # The embedding model: a BERT made by transformers, converted by the
    # llama.cpp source's own converter. Its failure costs only the
    # embeddings stage.
    { python3 bench/gpu/make_bert.py "$W/models/rand-minilm" bench/gpu/carry/minilm &&
      PYTHONPATH=$W/llama.cpp/gguf-py python3 "$W/llama.cpp/convert_hf_to_gguf.py" "$W/models/rand-minilm" \
        --outtype f16 --outfile "$W/models/rand-minilm-f16.gguf"; } > "$OUT/minilm.log" 2>&1 ||
      { tail -20 "$OUT/minilm.log"; log "no embedding model"; }
  fi
  log "models ready"
}

wait_healthy() { # url pid
  for _ in $(seq 1 600); do
    curl -fs "$1/health" > /dev/null 2>&1 && return 0
    kill -0 "$2" 2> /dev/null || { log "server exited"; return 1; }
    sleep 0.2
  done
  log "server did not become healthy"; return 1
}

# serve NAME MODEL_ID PORT: start one server in the background (SERVED: its pid).
serve() {
  local name=$1 id=$2 port=$3
  if [ "$name" = llama-server ]; then
    # Upstream's defaults but for what both sides must share: every layer
    # on the GPU, 32 slots of 1024 tokens.
    "$SERVER" -m "$W/models/$id-q4_k_m.gguf" -ngl 99 -c $((1024 * 32)) -np 32 \
      --host 127.0.0.1 --port "$port" > "$OUT/$name-$id.log" 2>&1 &
  else
    LLMLAB_REGISTRY=$R/bench/gpu/models.yaml LLMLAB_MODELS_DIR=$W/models \
      "$LLMLAB" serve --host 127.0.0.1 --port "$port" --no-preload > "$OUT/$name-$id.log" 2>&1 &
  fi
  SERVED=$!
}

# stop PID: and wait until it is gone, its GPU memory with it.
stop() {
  kill "$1" 2> /dev/null
  wait "$1" 2> /dev/null
}

stage_chat() {
  for id in $CHAT_MODELS; do
    for round in $(seq 1 "$ROUNDS"); do
      for name in llama-server llmlab; do
        local port=$((19000 + RANDOM % 500)) pid
        serve "$name" "$id" "$port"; pid=$SERVED
        wait_healthy "http://127.0.0.1:$port" "$pid" || { stop "$pid"; return 1; }
        local common=(--url "http://127.0.0.1:$port/v1" --model "$id" --prompt-tokens 128 --output-tokens 128 --json --quiet)
        "$LLMLAB" bench "${common[@]}" --concurrency 1 --requests 8 --warmup 2 > "$OUT/chat-$id-$name-$round-c1.json" &&
          "$LLMLAB" bench "${common[@]}" --concurrency 8,32 --requests 64 --warmup 0 > "$OUT/chat-$id-$name-$round-cN.json" ||
          log "bench failed: $name $id round $round"
        stop "$pid"
        log "chat $id $name round $round done"
      done
    done
  done
}

stage_images() {
  local port=$((19600 + RANDOM % 300)) pid
  serve llmlab rand-sd15 "$port"; pid=$SERVED
  wait_healthy "http://127.0.0.1:$port" "$pid" || { stop "$pid"; return 1; }
  PYTHONPATH=$W/site python3 bench/gpu/with_diffusers.py bench/diffusers/compare.py --port "$port" --server-pid "$pid" \
    --model-id rand-sd15 --model-dir "$W/models/rand-sd15" --threads "$(nproc)" --steps 20 --fixed-steps 5 \
    --rounds "${IMAGE_ROUNDS:-5}" --size 512x512 --device cuda --dtype float16 --json-out "$OUT/images.json" \
    2> "$OUT/images.log"
  local rc=$?
  stop "$pid"
  tail -5 "$OUT/images.log"
  return $rc
}

# A binary whose llama.cpp CUDA libraries were built on the CPU machine
# (scripts/build-cuda.sh --ggml): no build here, a Q8_0 model made here,
# one short benchmark, and the log lines that say where the layers went.
stage_smoke() {
  local gguf_py=$W/llama.cpp/gguf-py model=$W/models/rand-qwen2.5-0.5b-q8_0.gguf port=$((19990 + RANDOM % 9)) pid
  [ -d "$gguf_py" ] || gguf_py=$R/bench/gpu/carry/gguf-py
  [ -f "$model" ] || python3 bench/gpu/random_gguf.py qwen2.5-0.5b "$model" "$gguf_py" || return 1
  printf 'models:\n  - {id: smoke, kind: chat, backend: llama, path: %s, context_size: 1024, parallel: 8,\n     guards: {repetition: {enabled: false}, perplexity: {enabled: false}}}\n' "$model" > "$W/smoke.yaml"
  LLMLAB_REGISTRY=$W/smoke.yaml LLMLAB_MODELS_DIR=$W/models "$LLMLAB" serve --host 127.0.0.1 --port "$port" \
    > "$OUT/smoke.log" 2>&1 &
  pid=$!
  wait_healthy "http://127.0.0.1:$port" "$pid" || { stop "$pid"; return 1; }
  "$LLMLAB" bench --url "http://127.0.0.1:$port/v1" --model smoke --concurrency 1,8 --requests 16 --warmup 2 \
    --json --quiet > "$OUT/smoke.json"
  local rc=$?
  stop "$pid"
  grep -E 'CUDA|offload|planned' "$OUT/smoke.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -6
  cat "$OUT/smoke.json"
  return $rc
}

stage_embeddings() {
  local port=$((19900 + RANDOM % 90)) pid
  serve llmlab rand-minilm "$port"; pid=$SERVED
  wait_healthy "http://127.0.0.1:$port" "$pid" || { stop "$pid"; return 1; }
  python3 bench/gpu/embeddings.py --port "$port" --model-id rand-minilm --model-dir "$W/models/rand-minilm" \
    --json-out "$OUT/embeddings.json" 2> "$OUT/embeddings.log"
  local rc=$?
  stop "$pid"
  tail -3 "$OUT/embeddings.log"
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version --format=csv,noheader | tee -a "$OUT/run.log"
send_back() {
  if [ -n "$RETURN_DIR" ]; then tar czf "$RETURN_DIR/results.tgz" -C "$W" out; fi
}
trap send_back EXIT
for stage in "$@"; do
  log "stage $stage"
  "stage_$stage" || { log "stage $stage failed"; exit 1; }
done
