"""Turn what bench/gpu/run.sh left in its output folder into the Markdown
that goes into bench/RESULTS.md.

    python bench/gpu/summarize.py OUT_DIR [HBM_BYTES_PER_S]
"""

import glob
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
hbm = float(sys.argv[2]) if len(sys.argv) > 2 else 4.8e12  # H200: 4.8 TB/s
lines = []


def chat():
    files = glob.glob(str(out / "chat-*.json"))
    if not files:
        return
    runs = {}  # (model, server) -> concurrency -> [report per round]
    for f in sorted(files):
        # chat-MODEL-SERVER-ROUND-cN.json
        stem = Path(f).stem[len("chat-"):]
        server = next(name for name in ("llama-server", "llmlab") if f"-{name}-" in stem)
        model = stem.split(f"-{server}-")[0]
        for level in json.load(open(f)):
            runs.setdefault((model, server), {}).setdefault(level["concurrency"], []).append(level)
    models = sorted({m for m, _ in runs})
    lines.append("| model | streams | metric | llama-server | llmlab | llmlab / llama-server |")
    lines.append("|---|---|---|---|---|---|")
    for model in models:
        for c in sorted(runs.get((model, "llmlab"), {})):
            med = lambda server, key: statistics.median(r[key] for r in runs[(model, server)][c])
            keys = ["per_stream_tokens_per_second", "aggregate_tokens_per_second", "ttft_p50_ms", "itl_p50_ms"]
            if c > 1:
                keys = ["aggregate_tokens_per_second", "ttft_p50_ms", "itl_p50_ms"]
            for key in keys:
                a, b = med("llama-server", key), med("llmlab", key)
                lines.append(f"| {model} | {c} | {key} | {a:.1f} | {b:.1f} | {b / a:.3f} |")
            errors = sum(r["errors"] for s in ("llama-server", "llmlab") for r in runs[(model, s)][c])
            if errors:
                lines.append(f"| {model} | {c} | errors | | | {errors} |")
        weights = out / f"weights-{model}.json"
        if weights.exists() and 1 in runs.get((model, "llmlab"), {}):
            per_token = json.load(open(weights))["bytes_per_token"]
            for server in ("llama-server", "llmlab"):
                tps = statistics.median(r["per_stream_tokens_per_second"] for r in runs[(model, server)][1])
                lines.append(f"| {model} | 1 | share of HBM bandwidth ({per_token / 1e9:.2f} GB/token, "
                             f"{hbm / 1e12:.1f} TB/s), {server} | | | {per_token * tps / hbm:.1%} |")
    lines.append("")


def images():
    f = out / "images.json"
    if not f.exists():
        return
    d = json.load(open(f))
    rows, args = d["rows"], d["args"]
    lines.append(f"Images: {args['size']}, {args['steps']} steps DDIM, guidance {args['guidance']} (UNet batch 2), "
                 f"median of {args['rounds']} interleaved rounds; diffusers {args['dtype']} on {args['device']}.")
    lines.append("")
    lines.append("| | s / image | marginal s / step | fixed s |")
    lines.append("|---|---|---|---|")
    for name in ("llmlab", "diffusers"):
        r = rows[name]
        lines.append(f"| {name} | {r['image_s']:.3f} | {r.get('marginal_step_s', float('nan')):.4f} | "
                     f"{r.get('fixed_s', float('nan')):.3f} |")
    ratio = d["ratio"]
    lines.append(f"| **diffusers / llmlab** | **{ratio['image_s']:.2f}x** | "
                 f"{ratio.get('marginal_step_s', float('nan')):.2f}x | {ratio.get('fixed_s', float('nan')):.2f}x |")
    lines.append("")


def embeddings():
    f = out / "embeddings.json"
    if not f.exists():
        return
    d = json.load(open(f))
    med = d["median_sentences_per_s"]
    lines.append(f"Embeddings: batches of {d['batch']} sentences, {d['reps']} per measurement, median of "
                 f"{d['rounds']} interleaved rounds; cosine of llmlab's vectors to sentence-transformers' fp32 "
                 f"ones at least {d['min_cosine_llmlab_vs_fp32']:.4f}.")
    lines.append("")
    lines.append("| | sentences / s | llmlab / this |")
    lines.append("|---|---|---|")
    for name, rate in med.items():
        lines.append(f"| {name} | {rate:.0f} | {med['llmlab'] / rate:.2f}x |")
    lines.append("")


chat()
images()
embeddings()
print("\n".join(lines))
