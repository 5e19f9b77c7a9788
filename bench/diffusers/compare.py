"""The measuring half of bench/compare-diffusers: one process that holds the
diffusers pipeline (loaded once) and talks to a running `llmlab serve`, so
that the two sides run one after the other, never at once, interleaved:

    warm-up llmlab, warm-up diffusers, then ROUNDS times:
    llmlab STEPS, diffusers STEPS[, llmlab FIXED_STEPS, diffusers FIXED_STEPS]

Each timed call makes one SIZE image from the same prompt with DDIM and
classifier-free guidance. llmlab: `POST /v1/images/generations` on a
fresh local connection, wall time of the request (the server also reports
its own generation_ms). diffusers: `pipe(...)` plus the PNG encoding llmlab
also does. Model loading is outside every timing on both sides.

With FIXED_STEPS > 0 the second, shorter run separates the per-step cost
(the UNet twice, for guidance, and the scheduler) from the fixed cost of
an image (text encoder, VAE decoder, PNG):
    marginal s/step = (t[STEPS] - t[FIXED_STEPS]) / (STEPS - FIXED_STEPS)
    fixed s         = t[STEPS] - STEPS * marginal s/step
"""

import argparse
import base64
import http.client
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-pid", type=int, required=True)
    p.add_argument("--model-id", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--fixed-steps", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", default="256x256")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    p.add_argument("--json-out")
    # bench/gpu: diffusers on a GPU in half precision.
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    return p.parse_args()


def log(**fields):
    print(json.dumps(fields), file=sys.stderr, flush=True)


class Llmlab:
    def __init__(self, args):
        self.args = args

    def run(self, steps):
        a = self.args
        body = json.dumps({
            "model": a.model_id, "prompt": a.prompt, "n": 1, "size": a.size, "steps": steps,
            "guidance_scale": a.guidance, "seed": a.seed, "scheduler": "ddim", "response_format": "b64_json",
        })
        # A connection per request: the server closes a keep-alive connection
        # idle for --header-timeout-secs (10 s), shorter than a diffusers turn.
        conn = http.client.HTTPConnection("127.0.0.1", self.args.port, timeout=3600)
        start = time.perf_counter()
        conn.request("POST", "/v1/images/generations", body, {"content-type": "application/json"})
        reply = conn.getresponse()
        data = reply.read()
        seconds = time.perf_counter() - start
        conn.close()
        answer = json.loads(data)
        if reply.status != 200:
            raise SystemExit(f"llmlab answered {reply.status}: {data[:500]!r}")
        png = base64.b64decode(answer["data"][0]["b64_json"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and answer["steps"] == steps, answer.get("steps")
        return seconds, {"generation_s": answer["timings"]["generation_ms"] / 1000}

    def peak_rss_gib(self):
        with open(f"/proc/{self.args.server_pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
        return float("nan")


class Diffusers:
    def __init__(self, args):
        import torch
        from diffusers import DDIMScheduler, StableDiffusionPipeline
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()

        self.torch = torch
        torch.set_num_threads(args.threads)
        self.args = args
        start = time.perf_counter()
        self.pipe = StableDiffusionPipeline.from_pretrained(args.model_dir, dtype=getattr(torch, args.dtype),
                                                            safety_checker=None, local_files_only=True)
        self.pipe.to(args.device)
        assert isinstance(self.pipe.scheduler, DDIMScheduler), type(self.pipe.scheduler)
        self.pipe.set_progress_bar_config(disable=True)
        log(side="diffusers", load_s=round(time.perf_counter() - start, 2),
            attention=type(self.pipe.unet.attn_processors[next(iter(self.pipe.unet.attn_processors))]).__name__)
        self.width, self.height = (int(x) for x in args.size.split("x"))

    def run(self, steps):
        a = self.args
        start = time.perf_counter()
        generator = self.torch.Generator("cpu").manual_seed(a.seed)
        image = self.pipe(a.prompt, height=self.height, width=self.width, num_inference_steps=steps,
                          guidance_scale=a.guidance, num_images_per_prompt=1, eta=0.0,
                          generator=generator, output_type="pil").images[0]
        image.save(io.BytesIO(), format="PNG")
        return time.perf_counter() - start, {}

    def peak_rss_gib(self):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


TICK = os.sysconf("SC_CLK_TCK")


def busy_s():
    """CPU seconds the whole machine has been busy."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK


def ours_s(server_pid):
    """CPU seconds of the two measured processes: the server and this one."""
    with open(f"/proc/{server_pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    t = os.times()
    return (int(fields[11]) + int(fields[12])) / TICK + t.user + t.system


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main():
    args = parse_args()
    step_counts = [args.steps] + ([args.fixed_steps] if 0 < args.fixed_steps < args.steps else [])
    sides = {"llmlab": Llmlab(args), "diffusers": Diffusers(args)}
    for name, side in sides.items():
        seconds, extra = side.run(args.steps)
        log(side=name, warmup_steps=args.steps, seconds=round(seconds, 3), **extra)
    times = {(name, steps): [] for name in sides for steps in step_counts}
    # CPU seconds that other processes took while a timed call ran: should
    # stay near 0; a busy machine shows here (and in the figures).
    others = []
    for round_no in range(1, args.rounds + 1):
        for steps in step_counts:
            for name, side in sides.items():
                busy0, ours0 = busy_s(), ours_s(args.server_pid)
                seconds, extra = side.run(steps)
                other = (busy_s() - busy0) - (ours_s(args.server_pid) - ours0)
                others.append(other)
                times[(name, steps)].append(seconds)
                log(round=round_no, side=name, steps=steps, seconds=round(seconds, 3),
                    others_cpu_s=round(other, 2), **{k: round(v, 3) for k, v in extra.items()})

    import diffusers
    import torch
    import transformers

    med = {key: statistics.median(values) for key, values in times.items()}
    rows = {}
    for name, side in sides.items():
        image = med[(name, args.steps)]
        row = {"image_s": image, "per_step_s": image / args.steps, "peak_rss_gib": side.peak_rss_gib(),
               "samples": times[(name, args.steps)]}
        if len(step_counts) > 1:
            short = med[(name, args.fixed_steps)]
            marginal = (image - short) / (args.steps - args.fixed_steps)
            row.update(marginal_step_s=marginal, fixed_s=image - args.steps * marginal,
                       short_samples=times[(name, args.fixed_steps)])
        rows[name] = row

    ratio = lambda key: rows["diffusers"][key] / rows["llmlab"][key]
    lines = [
        f"- Machine: {os.cpu_count()} CPUs, {cpu_name()}; threads {args.threads} on both sides "
        f"(RAYON_NUM_THREADS for llmlab's candle, torch.set_num_threads for PyTorch).",
        f"- Work: SD 1.5-shaped random weights (UNet 860M, VAE, 12-layer CLIP text encoder), {args.size}, "
        f"DDIM, guidance {args.guidance} (UNet batch 2), n=1, {args.steps} steps"
        + (f" (and {args.fixed_steps} to split per-step from fixed cost)" if len(step_counts) > 1 else "")
        + f"; median of {args.rounds} interleaved rounds after one warm-up each; fp32.",
        f"- Peer: diffusers {diffusers.__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__} (CPU).",
        f"- Other processes' CPU time during the timed calls: at most {max(others):.1f} s per call "
        f"(machine quiet if near 0).",
        "",
    ]
    header = ["", "s / image", "s / step (image / steps)"]
    if len(step_counts) > 1:
        header += ["marginal s / step", "fixed s (text + VAE + PNG)"]
    header += ["peak RSS GiB"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = ["image_s", "per_step_s"] + (["marginal_step_s", "fixed_s"] if len(step_counts) > 1 else [])
    for name in ("llmlab", "diffusers"):
        r = rows[name]
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + f" | {r['peak_rss_gib']:.1f} |")
    lines.append("| **diffusers / llmlab** | " + " | ".join(f"**{ratio(k):.2f}×**" for k in keys) + " | |")
    table = "\n".join(lines)
    print(table)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"args": vars(args), "rows": rows,
                       "ratio": {k: ratio(k) for k in keys}}, f, indent=1)


if __name__ == "__main__":
    main()
