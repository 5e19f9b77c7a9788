#!/usr/bin/env bash
# Measures llama.cpp decode speed (tg128) with upstream llama-bench for each
# thread count and OpenMP wait policy, once on a quiet machine and once with a
# competing busy process pinned to CPU 0. Usage:
#   bench/threads-llama-bench.sh /path/to/llama-bench /path/to/model.gguf
set -euo pipefail
BENCH=${1:?llama-bench path}; MODEL=${2:?model path}
run() { # label, env..., -- args
  local label=$1; shift
  env "$@" "$BENCH" -m "$MODEL" -p 0 -n 128 -r 3 -o csv 2>/dev/null | awk -F, -v l="$label" 'NR>1 {gsub(/"/,""); print l", threads="$(NF-13)", avg_ts="$(NF-1)", stddev="$NF}'
}
for load in quiet busy; do
  pid=""
  if [ $load = busy ]; then taskset -c 0 sh -c 'while :; do :; done' & pid=$!; fi
  for t in 1 2; do
    for policy in ACTIVE PASSIVE; do
      echo "load=$load policy=$policy threads=$t: $(env OMP_WAIT_POLICY=$policy "$BENCH" -m "$MODEL" -p 0 -n 128 -r 3 -t $t -o md 2>/dev/null | grep tg128 | awk -F'|' '{print $(NF-1)}')"
    done
  done
  [ -n "$pid" ] && kill $pid
done
