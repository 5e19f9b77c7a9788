"""Check that llmlab paints the very pixels diffusers paints: the tiny SD 1.5,
SDXL, SD3 and Flux test fixtures, the same prompt, the same sampler (for the
UNet models DDIM with eta 0, no sample clipping, no final alpha of one:
candle's DDIM; for SD3 and Flux the flow-matching Euler scheduler of their
folders), and llmlab's seeded starting noise rebuilt here and handed to
diffusers as `latents` (packed into 2x2 patch tokens for Flux). Prints the
largest and the mean per-channel difference of the two 8-bit pictures
(0 = identical). llmlab runs SD3's transformer in f16 (candle's MMDiT has
no f32 path), diffusers in f32, so SD3 is allowed a few levels more.

Usage (the bench venv of bench/compare-diffusers):
  ~/.cache/llmlab-ci/diffusers-venv/bin/python bench/diffusers/same_pixels.py \
      <llmlab binary> <models folder>
"""
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from diffusers import (DDIMScheduler, FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline,
                       StableDiffusionXLPipeline)

PROMPT, SEED, STEPS, SIZE = "a red fox in the snow", 5, 3, 64
# folder, diffusers pipeline, guidance, llmlab scheduler, latent channels,
# largest difference allowed
CASES = (
    ("test-sd15-tiny", StableDiffusionPipeline, 7.5, "ddim", 4, 1),
    ("test-sdxl-tiny", StableDiffusionXLPipeline, 7.5, "ddim", 4, 1),
    ("test-sd3-tiny", StableDiffusion3Pipeline, 7.0, "flow_euler", 16, 4),
    ("test-flux-tiny", FluxPipeline, 3.5, "flow_euler", 16, 1),
)
MASK = 2**64 - 1


def seeded_noise(seed: int, count: int) -> np.ndarray:
    """llmlab's SeededNoise (diffusion/noise.rs): splitmix64, Box-Muller."""
    state, out = seed, []

    def next_u64():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform():
        return ((next_u64() >> 11) + 0.5) / float(1 << 53)

    for _ in range(count):
        u1, u2 = uniform(), uniform()
        out.append(math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2))
    return np.array(out, dtype=np.float32)


def starting_noise(pipeline, channels: int) -> torch.Tensor:
    side = SIZE // 8
    latents = torch.from_numpy(seeded_noise(SEED, channels * side * side).reshape(1, channels, side, side))
    if pipeline is FluxPipeline:
        # Flux reads 2x2 patches of every channel as one token.
        latents = latents.view(1, channels, side // 2, 2, side // 2, 2).permute(0, 2, 4, 1, 3, 5)
        latents = latents.reshape(1, (side // 2) ** 2, channels * 4)
    return latents


def main() -> int:
    binary, models = sys.argv[1], Path(sys.argv[2])
    work = Path(tempfile.mkdtemp())
    failed = []
    for folder, pipeline, guidance, scheduler, channels, allowed in CASES:
        registry = work / "models.yaml"
        registry.write_text(f"models:\n  - {{id: m, kind: image, backend: candle, path: '{models / folder}'}}\n")
        ours_path = work / f"{folder}.png"
        subprocess.run([binary, "--registry", str(registry), "image", "-m", "m", PROMPT, "-o", str(ours_path),
                        "--size", f"{SIZE}x{SIZE}", "--steps", str(STEPS), "--seed", str(SEED),
                        "--guidance", str(guidance), "--scheduler", scheduler], check=True, capture_output=True)
        pipe = pipeline.from_pretrained(models / folder, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        if scheduler == "ddim":
            pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False,
                                                       set_alpha_to_one=False)
        theirs = pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=guidance,
                      latents=starting_noise(pipeline, channels), output_type="np").images[0]
        theirs = np.round(np.clip(theirs, 0, 1) * 255)
        ours = np.asarray(Image.open(ours_path).convert("RGB")).astype(np.float32)
        difference = np.abs(ours - theirs)
        if difference.max() > allowed:
            failed.append(folder)
        print(f"{folder}: largest difference {difference.max():.0f} (allowed {allowed}), "
              f"mean {difference.mean():.3f} (pixel std {theirs.std():.1f})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
