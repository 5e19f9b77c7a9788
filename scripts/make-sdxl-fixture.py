#!/usr/bin/env python3
"""Write a tiny random-weight SDXL pipeline for llmlab's image generation
tests, in the folder layout diffusers' `save_pretrained` uses for
stabilityai/stable-diffusion-xl-base-1.0: two CLIP text encoders (the second
OpenCLIP-like, GELU, with `text_projection`), two tokenizers (the second pads
with "!"), a UNet with SDXL's added conditioning (`addition_embed_type:
text_time`), linear projections and several transformer blocks per level, a
VAE and the scheduler settings. Weights are noise; the fixture exists so that
the SDXL loading and conditioning code runs end to end.

Usage:   python3 scripts/make-sdxl-fixture.py <models_dir> [--force]
Needs:   pip install -r tests/diffusion-requirements.txt   (numpy, safetensors)

Writes <models_dir>/test-sdxl-tiny/ when missing or of another FIXTURE_VERSION;
the helpers (tokenizer, tensor writers, resnets, VAE) are those of
scripts/make-diffusion-fixture.py, so both fixtures name tensors one way.

Shapes:
  text_encoder    CLIPTextModel as in test-sd15-tiny (hidden 32, quick_gelu)
  text_encoder_2  CLIPTextModelWithProjection, hidden 32, 2 layers, gelu,
                  projection_dim 32
  unet            block_out_channels [32, 64], DownBlock2D + CrossAttnDownBlock2D,
                  transformer_layers_per_block [1, 2] (mid block: 2),
                  attention_head_dim [2, 4], cross_attention_dim 64 (32 + 32),
                  use_linear_projection, addition_time_embed_dim 8,
                  projection_class_embeddings_input_dim 80 (32 pooled + 6 x 8)
  vae             test-sd15-tiny's, scaling_factor 0.13025 (SDXL's)
  scheduler       EulerDiscreteScheduler config of SDXL base
"""
import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("sd15_fixture", HERE / "make-diffusion-fixture.py")
sd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sd)

FIXTURE_VERSION = 1            # bump whenever the bytes written below change
NAME = "test-sdxl-tiny"
TIME_DIM = 8
POOLED = sd.CLIP_HIDDEN        # text_encoder_2's projection_dim

UNET = dict(
    sd.UNET,
    addition_embed_type="text_time",
    addition_time_embed_dim=TIME_DIM,
    attention_head_dim=[2, 4],
    cross_attention_dim=2 * sd.CLIP_HIDDEN,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    projection_class_embeddings_input_dim=POOLED + 6 * TIME_DIM,
    transformer_layers_per_block=[1, 2],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)
VAE = dict(sd.VAE, scaling_factor=0.13025)
SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": sd.DIFFUSERS_VERSION,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": sd.DIFFUSERS_VERSION,
    "feature_extractor": [None, None],
    "force_zeros_for_empty_prompt": True,
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


class Weights(sd.Weights):
    """sd.Weights seeded from this fixture's name, not test-sd15-tiny's."""

    def __init__(self, component: str):
        super().__init__(f"../{NAME}/{component}")


def transformer_2d(w, p, ch, heads, cross_dim, layers):
    """diffusers Transformer2DModel with use_linear_projection and `layers` blocks."""
    assert ch % heads == 0
    w.norm(p + ".norm", ch)
    w.linear(p + ".proj_in", ch, ch)
    for k in range(layers):
        b = f"{p}.transformer_blocks.{k}"
        for attn, ctx in (("attn1", ch), ("attn2", cross_dim)):
            w.linear(f"{b}.{attn}.to_q", ch, ch, bias=False)
            w.linear(f"{b}.{attn}.to_k", ctx, ch, bias=False)
            w.linear(f"{b}.{attn}.to_v", ctx, ch, bias=False)
            w.linear(f"{b}.{attn}.to_out.0", ch, ch)
        for n in ("norm1", "norm2", "norm3"):
            w.norm(f"{b}.{n}", ch)
        w.linear(b + ".ff.net.0.proj", ch, ch * 4 * 2)    # GEGLU
        w.linear(b + ".ff.net.2", ch * 4, ch)
    w.linear(p + ".proj_out", ch, ch)


def unet_weights():
    c = UNET
    w = Weights("unet")
    boc, lpb = c["block_out_channels"], c["layers_per_block"]
    heads, layers, cross = c["attention_head_dim"], c["transformer_layers_per_block"], c["cross_attention_dim"]
    temb = boc[0] * 4
    w.conv("conv_in", c["in_channels"], boc[0], 3)
    w.linear("time_embedding.linear_1", boc[0], temb)
    w.linear("time_embedding.linear_2", temb, temb)
    w.linear("add_embedding.linear_1", c["projection_class_embeddings_input_dim"], temb)
    w.linear("add_embedding.linear_2", temb, temb)
    out_ch = boc[0]
    for i, kind in enumerate(c["down_block_types"]):
        in_ch, out_ch = out_ch, boc[i]
        p = f"down_blocks.{i}"
        for j in range(lpb):
            sd.resnet(w, f"{p}.resnets.{j}", in_ch if j == 0 else out_ch, out_ch, temb)
            if kind == "CrossAttnDownBlock2D":
                transformer_2d(w, f"{p}.attentions.{j}", out_ch, heads[i], cross, layers[i])
        if i < len(boc) - 1:
            w.conv(f"{p}.downsamplers.0.conv", out_ch, out_ch, 3)
    top = boc[-1]
    sd.resnet(w, "mid_block.resnets.0", top, top, temb)
    transformer_2d(w, "mid_block.attentions.0", top, heads[-1], cross, layers[-1])
    sd.resnet(w, "mid_block.resnets.1", top, top, temb)
    rev = boc[::-1]
    out_ch = rev[0]
    for i, kind in enumerate(c["up_block_types"]):
        level = len(boc) - 1 - i
        prev_ch, out_ch = out_ch, rev[i]
        in_ch = rev[min(i + 1, len(rev) - 1)]
        p = f"up_blocks.{i}"
        n = lpb + 1
        for j in range(n):
            skip = in_ch if j == n - 1 else out_ch
            res_in = prev_ch if j == 0 else out_ch
            sd.resnet(w, f"{p}.resnets.{j}", res_in + skip, out_ch, temb)
            if kind == "CrossAttnUpBlock2D":
                transformer_2d(w, f"{p}.attentions.{j}", out_ch, heads[level], cross, layers[level])
        if i < len(rev) - 1:
            w.conv(f"{p}.upsamplers.0.conv", out_ch, out_ch, 3)
    w.norm("conv_norm_out", boc[0])
    w.conv("conv_out", boc[0], c["out_channels"], 3)
    return w


def clip_weights(component, vocab_size, projection):
    """sd.clip_weights' tensors under this fixture's seed, plus text_projection."""
    w = Weights(component)
    norms = ("layer_norm1", "layer_norm2", "final_layer_norm")
    for name, array in sd.clip_weights(vocab_size).t.items():
        if name.rsplit(".", 1)[0].endswith(norms):
            w._put(name, array)        # ones and zeros, as every fixture's norms
        else:
            w.rand(name, *array.shape)
    if projection:
        w.linear("text_projection", sd.CLIP_HIDDEN, POOLED, bias=False)
    return w


def make(d: Path):
    d.mkdir()
    sd.dump(d / "model_index.json", MODEL_INDEX)
    vocab_size = sd.write_tokenizer(d / "tokenizer")
    sd.write_tokenizer(d / "tokenizer_2")
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = d / "tokenizer_2" / name
        config = sd.json.loads(path.read_text(encoding="utf-8"))
        config["pad_token"] = "!"         # as SDXL's second tokenizer
        sd.dump(path, config)
    bos, eos = vocab_size - 2, vocab_size - 1
    (d / "scheduler").mkdir()
    sd.dump(d / "scheduler" / "scheduler_config.json", SCHEDULER)
    second = dict(sd.clip_config(vocab_size, bos, eos), architectures=["CLIPTextModelWithProjection"],
                  hidden_act="gelu", projection_dim=POOLED)
    for sub, cfg, w, fname in (
            ("text_encoder", sd.clip_config(vocab_size, bos, eos), clip_weights("text_encoder", vocab_size, False),
             "model.safetensors"),
            ("text_encoder_2", second, clip_weights("text_encoder_2", vocab_size, True), "model.safetensors"),
            ("unet", UNET, unet_weights(), "diffusion_pytorch_model.safetensors"),
            ("vae", VAE, sd.vae_weights(), "diffusion_pytorch_model.safetensors")):
        (d / sub).mkdir()
        sd.dump(d / sub / "config.json", cfg)
        w.save(d / sub / fname)
        print(f"  {sub}: {len(w.t)} tensors, {w.n_params():,} parameters")
    (d / sd.STAMP).write_text(f"{FIXTURE_VERSION}\n")    # last: marks the folder complete


def main() -> int:
    ap = argparse.ArgumentParser(description="write llmlab's tiny random-weight SDXL pipeline")
    ap.add_argument("models_dir", type=Path)
    ap.add_argument("--force", action="store_true", help="rewrite even when up to date")
    args = ap.parse_args()
    return sd.write_fixture(args.models_dir, NAME, FIXTURE_VERSION, make, args.force)


if __name__ == "__main__":
    sys.exit(main())
