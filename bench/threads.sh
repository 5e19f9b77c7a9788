#!/usr/bin/env bash
# Decode speed (tg128) of upstream llama-bench and of llmlab's engine, for
# each thread count and OpenMP spin setting, on a quiet machine and with a
# competing busy process pinned to CPU 0. Results go to stdout.
#   bench/threads.sh <llama-bench> <llmlab> <model.gguf> <llmlab model id>
set -euo pipefail
BENCH=${1:?llama-bench path}; LLMLAB=${2:?llmlab path}; MODEL=${3:?gguf path}; ID=${4:?model id}
settings=("OMP_WAIT_POLICY=ACTIVE" "OMP_WAIT_POLICY=PASSIVE" "GOMP_SPINCOUNT=10000" "GOMP_SPINCOUNT=100000")
for load in quiet busy; do
  pid=""
  if [ "$load" = busy ]; then taskset -c 0 sh -c 'while :; do :; done' & pid=$!; fi
  for t in 1 2; do
    for s in "${settings[@]}"; do
      upstream=$(env "$s" "$BENCH" -m "$MODEL" -p 0 -n 128 -r 3 -t "$t" -o md 2>/dev/null | grep tg128 | awk -F'|' '{gsub(/ /,"",$(NF-1)); print $(NF-1)}')
      ours=$(env "$s" LLMLAB_THREADS="$t" LLMLAB_LOG=error "$LLMLAB" bench-engine -m "$ID" --tokens 128 --reps 3 | sed 's/.*: //')
      echo "| $load | $t | $s | $upstream | $ours |"
    done
  done
  if [ -n "$pid" ]; then kill "$pid"; fi
done
