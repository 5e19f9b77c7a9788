"""Embedding throughput on one GPU, one side after the other, interleaved:
llmlab serving a GGUF BERT (llama.cpp on CUDA) over HTTP, one batch per
`POST /v1/embeddings` (base64 vectors) on a kept-alive connection, against
sentence-transformers `encode(batch)` on the same GPU in fp32 and fp16, on
the same random weights. Also the cosine of llmlab's vectors to
sentence-transformers' fp32 ones (same weights, same pooling: about 1).

    python embeddings.py --port P --model-id ID --model-dir DIR [--batch 64 --reps 20 --rounds 3] --json-out F
"""

import argparse
import base64
import http.client
import json
import statistics
import sys
import time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer


def sentences(batch):
    subjects = ["The cat", "A developer", "My neighbour", "The old train", "This library", "A small bird",
                "The committee", "Our server"]
    actions = ["sleeps on the warm windowsill", "fixes a bug before lunch", "plants tomatoes in the garden",
               "arrives late at the station", "parses JSON faster than expected", "sings at dawn near the river",
               "approves the new budget", "answers thousands of requests"]
    return [f"{subjects[i % 8]} {actions[(i // 8) % 8]} (sentence {i})." for i in range(batch)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json-out", required=True)
    a = p.parse_args()
    texts = sentences(a.batch)
    conn = http.client.HTTPConnection("127.0.0.1", a.port, timeout=600)

    def llmlab():
        # base64, as OpenAI's own Python client asks by default: 64 x 384
        # numbers as JSON text would be parsing work of the client's.
        conn.request("POST", "/v1/embeddings",
                     json.dumps({"model": a.model_id, "input": texts, "encoding_format": "base64"}),
                     {"content-type": "application/json"})
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise SystemExit(f"llmlab answered {reply.status}: {body[:300]!r}")
        return [np.frombuffer(base64.b64decode(d["embedding"]), dtype=np.float32) for d in json.loads(body)["data"]]

    fp32 = SentenceTransformer(a.model_dir, device="cuda")
    fp16 = SentenceTransformer(a.model_dir, device="cuda")
    fp16.half()
    sides = {
        "llmlab": llmlab,
        "sentence-transformers fp32": lambda: fp32.encode(texts, batch_size=a.batch, convert_to_numpy=True),
        "sentence-transformers fp16": lambda: fp16.encode(texts, batch_size=a.batch, convert_to_numpy=True),
    }
    for run in sides.values():  # warm-up: load, kernels, caches
        run(); run()
    rates = {name: [] for name in sides}
    for round_no in range(a.rounds):
        for name, run in sides.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(a.reps):
                run()
            torch.cuda.synchronize()
            rate = a.batch * a.reps / (time.perf_counter() - start)
            rates[name].append(rate)
            print(json.dumps({"round": round_no + 1, "side": name, "sentences_per_s": round(rate, 1)}), file=sys.stderr)
    ours = torch.tensor(np.stack(llmlab()))
    theirs = torch.tensor(fp32.encode(texts, convert_to_numpy=True))
    cosine = torch.nn.functional.cosine_similarity(ours, theirs).min().item()
    result = {"batch": a.batch, "reps": a.reps, "rounds": a.rounds, "gpu": torch.cuda.get_device_name(0),
              "median_sentences_per_s": {n: statistics.median(r) for n, r in rates.items()},
              "samples": rates, "min_cosine_llmlab_vs_fp32": cosine}
    json.dump(result, open(a.json_out, "w"), indent=1)
    print(json.dumps(result["median_sentences_per_s"]), "min cosine", round(cosine, 5))


if __name__ == "__main__":
    main()
