"""Random weights in Stable Diffusion 1.5's shapes, as a diffusers folder.

Made once by diffusers itself, seeded, so that llmlab and diffusers run the
very same networks: the UNet, VAE and DDIM scheduler with SD 1.5's configs,
and a CLIP text encoder with SD 1.5's text config except vocab_size, which
fits the tokenizer we have (the 640-token one of the test-sd15-tiny fixture;
no model hub is reachable). The text encoder is a negligible share of the
cost of an image.

    python make_weights.py OUT_DIR TOKENIZER_DIR
"""

import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from safetensors.torch import load_file, save_file
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

SEED = 1234


def main() -> None:
    out, tokenizer_dir = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(SEED)

    # runwayml/stable-diffusion-v1-5 unet/config.json.
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    # vae/config.json.
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    vocab = json.loads((tokenizer_dir / "vocab.json").read_text())
    # text_encoder/config.json, but for vocab_size and the special ids of
    # the tokenizer we have.
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=768,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=1,
    )
    text_encoder = CLIPTextModel(text_config)
    # scheduler/scheduler_config.json, as DDIM.
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    # llmlab's tokenizer reads vocab.json + merges.txt; a tokenizer saved by
    # transformers 5 may hold only tokenizer.json.
    for name in ("vocab.json", "merges.txt"):
        target = tmp / "tokenizer" / name
        if not target.is_file():
            print(f"note: save_pretrained wrote no tokenizer/{name}; copied from {tokenizer_dir}", file=sys.stderr)
            shutil.copy(tokenizer_dir / name, target)
    # transformers 5 flattened CLIPTextModel (no `text_model` submodule) and
    # saves its tensors without the `text_model.` prefix that every published
    # SD 1.x checkpoint (and transformers 4) has and that llmlab looks for
    # ("cannot find tensor text_model.embeddings.token_embedding.weight").
    # Write them as published; transformers 5 loads both spellings.
    te_file = tmp / "text_encoder" / "model.safetensors"
    tensors = load_file(te_file)
    if not any(k.startswith("text_model.") for k in tensors):
        print("note: transformers saved the text encoder without the 'text_model.' prefix; added it", file=sys.stderr)
        save_file({f"text_model.{k}": v for k, v in tensors.items()}, te_file, metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in
              (("unet", unet), ("vae", vae), ("text_encoder", text_encoder))}
    print(json.dumps({"made": str(out), "seed": SEED, "params": params}))


if __name__ == "__main__":
    main()
