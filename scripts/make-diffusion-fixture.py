#!/usr/bin/env python3
"""Write a tiny random-weight Stable Diffusion 1.x pipeline for llmlab's image
generation tests, in the folder layout diffusers' `save_pretrained` uses for
runwayml/stable-diffusion-v1-5. The weights are noise, so the pictures are
noise too; the fixture exists so that the real loading code runs end to end:
configs, CLIP BPE tokenizer files, the text encoder, the UNet, the VAE and the
scheduler settings.

Usage:   python3 scripts/make-diffusion-fixture.py <models_dir> [--force]
Needs:   pip install -r tests/diffusion-requirements.txt   (numpy, safetensors)

Writes <models_dir>/test-sd15-tiny/ only when it is missing or was written by
another FIXTURE_VERSION (kept in the stamp file STAMP inside the folder). The
folder is built under a temporary name next to it and renamed into place, so
a reader never sees a half-written fixture.

Shapes (all SD-1.5-like, only narrower and shallower):
  text_encoder  CLIPTextModel, hidden 32, 2 layers, 4 heads, MLP 64, quick_gelu,
                77 positions, vocab = 256 byte chars + the same with </w> + merges + 2 specials
  unet          UNet2DConditionModel, block_out_channels [32, 64], layers_per_block 1,
                CrossAttnDownBlock2D + DownBlock2D / UpBlock2D + CrossAttnUpBlock2D,
                attention_head_dim 8 (diffusers' name for the number of heads),
                cross_attention_dim 32, norm_num_groups 32 (as SD 1.5; candle's
                down/up resnets use 32 groups whatever the config says)
  vae           AutoencoderKL, block_out_channels [32, 32, 64, 64] (four blocks, so
                the latent is 1/8 of the image as in SD 1.5), layers_per_block 1,
                latent_channels 4, scaling_factor 0.18215
  scheduler     PNDMScheduler config of SD 1.5 (scaled_linear 0.00085..0.012,
                1000 train steps, steps_offset 1, epsilon)
A 64x64 image is an 8x8x4 latent. All tensors are float32, as diffusers writes a
float32 pipeline; norms have weight 1 and bias 0, everything else is N(0, 0.02).

Tensor names follow the PyTorch modules (diffusers UNet2DConditionModel and
AutoencoderKL, transformers CLIPTextModel, without the non-persistent
position_ids buffer). Check: fed SD 1.5's real sizes, the builders below give
686 / 248 / 196 tensors and 859,520,964 / 83,653,863 / 123,060,480 parameters
for unet / vae / text_encoder, the counts of the published checkpoint.
The tokenizer files load in transformers' CLIPTokenizer and CLIPTokenizerFast.
"""
import argparse
import json
import os
import re
import shutil
import sys
import zlib
from pathlib import Path

try:
    import numpy as np
    from safetensors.numpy import save_file
except ImportError as e:
    sys.exit(f"{e}: run `python3 -m pip install -r tests/diffusion-requirements.txt` first")

FIXTURE_VERSION = 1            # bump whenever the bytes written below change
NAME = "test-sd15-tiny"
STAMP = ".llmlab-fixture-version"
DIFFUSERS_VERSION = "0.27.2"   # what the configs claim to be written by
TRANSFORMERS_VERSION = "4.40.0"

# ---- configs ----------------------------------------------------------------

CLIP_HIDDEN = 32
CLIP_LAYERS = 2
CLIP_HEADS = 4
CLIP_FF = 64
CLIP_POSITIONS = 77
N_MERGES = 126                 # vocab = 512 + 126 + 2 = 640

UNET = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": DIFFUSERS_VERSION,
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": 8,
    "attention_type": "default",
    "block_out_channels": [32, 64],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": CLIP_HIDDEN,
    "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dropout": 0.0,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 1,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None,
    "sample_size": 8,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": False,
    "use_linear_projection": False,
}

VAE = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": DIFFUSERS_VERSION,
    "act_fn": "silu",
    "block_out_channels": [32, 32, 64, 64],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 1,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 64,
    "scaling_factor": 0.18215,
    "shift_factor": None,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": True,
    "use_quant_conv": True,
}

SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    # saved with safety_checker=None: no feature_extractor / safety_checker folders
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# ---- tokenizer --------------------------------------------------------------

BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# Merges are learnt from this text, so common prompt words get whole-word tokens.
CORPUS = """
a photograph of an astronaut riding a horse on the moon, highly detailed
a painting of a red fox in the snow, oil on canvas, trending on artstation
a cute cat sitting on a wooden table next to a cup of coffee
portrait of an old man with a beard, dramatic lighting, sharp focus
a watercolor landscape of mountains and a lake at sunset
a castle on a hill under the stars, fantasy art, digital painting
the city at night in the rain, neon lights, cinematic
a bowl of fresh fruit on the kitchen table in the morning light
a dog running on the beach with the waves behind it
an illustration of a robot reading a book in the library
"""


def bytes_to_unicode() -> list[str]:
    """CLIP's (GPT-2's) byte -> printable character table, in vocabulary order."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def learn_merges(text: str, n_merges: int) -> list[tuple[str, str]]:
    """A small deterministic BPE learner over lowercase ASCII words, CLIP style:
    the last symbol of every word carries the `</w>` suffix."""
    freq: dict[tuple[str, ...], int] = {}
    for w in re.findall(r"[a-z]+", text.lower()):
        sym = tuple(w[:-1]) + (w[-1] + "</w>",)
        freq[sym] = freq.get(sym, 0) + 1
    merges = []
    for _ in range(n_merges):
        pairs: dict[tuple[str, str], int] = {}
        for sym, f in freq.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + f
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))   # most frequent, then alphabetical
        merges.append(best)
        new = {}
        for sym, f in freq.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + f
        freq = new
    if len(merges) != n_merges:
        raise SystemExit(f"the corpus gives only {len(merges)} merges, {n_merges} wanted")
    return merges


def write_tokenizer(d: Path) -> int:
    chars = bytes_to_unicode()
    merges = learn_merges(CORPUS, N_MERGES)
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("duplicate token in the vocabulary")
    d.mkdir()
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")

    def added(content):
        return {"content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    dump(d / "special_tokens_map.json", {
        "bos_token": added(BOS), "eos_token": added(EOS),
        "pad_token": EOS, "unk_token": added(EOS)})
    dump(d / "tokenizer_config.json", {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(vocab[BOS]): dict(added(BOS), special=True),
            str(vocab[EOS]): dict(added(EOS), special=True)},
        "bos_token": BOS,
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": EOS,
        "errors": "replace",
        "model_max_length": CLIP_POSITIONS,
        "pad_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": EOS})
    return len(tokens)


# ---- weights ----------------------------------------------------------------

class Weights:
    """Tensors of one component, named and shaped as PyTorch's state_dict()."""

    def __init__(self, component: str):
        # one fixed stream per component: same script -> same bytes
        self.rng = np.random.default_rng(zlib.crc32(f"{NAME}/{component}".encode()))
        self.t: dict[str, np.ndarray] = {}

    def _put(self, name, arr):
        if name in self.t:
            raise SystemExit(f"tensor {name} written twice")
        self.t[name] = np.ascontiguousarray(arr, dtype=np.float32)

    def rand(self, name, *shape):
        self._put(name, self.rng.standard_normal(shape) * 0.02)

    def linear(self, p, n_in, n_out, bias=True):
        self.rand(p + ".weight", n_out, n_in)
        if bias:
            self.rand(p + ".bias", n_out)

    def conv(self, p, n_in, n_out, k):
        self.rand(p + ".weight", n_out, n_in, k, k)
        self.rand(p + ".bias", n_out)

    def norm(self, p, n):      # GroupNorm / LayerNorm
        self._put(p + ".weight", np.ones(n))
        self._put(p + ".bias", np.zeros(n))

    def save(self, path: Path):
        save_file(self.t, str(path), metadata={"format": "pt"})

    def n_params(self):
        return sum(a.size for a in self.t.values())


def resnet(w, p, n_in, n_out, temb=None):
    """diffusers ResnetBlock2D (time_embedding_norm "default")."""
    w.norm(p + ".norm1", n_in)
    w.conv(p + ".conv1", n_in, n_out, 3)
    if temb is not None:
        w.linear(p + ".time_emb_proj", temb, n_out)
    w.norm(p + ".norm2", n_out)
    w.conv(p + ".conv2", n_out, n_out, 3)
    if n_in != n_out:
        w.conv(p + ".conv_shortcut", n_in, n_out, 1)


def transformer_2d(w, p, ch, heads, cross_dim):
    """diffusers Transformer2DModel, use_linear_projection False, one block."""
    inner = ch   # heads * (ch // heads)
    assert ch % heads == 0
    w.norm(p + ".norm", ch)
    w.conv(p + ".proj_in", ch, inner, 1)
    b = p + ".transformer_blocks.0"
    for attn, ctx in (("attn1", inner), ("attn2", cross_dim)):
        w.linear(f"{b}.{attn}.to_q", inner, inner, bias=False)
        w.linear(f"{b}.{attn}.to_k", ctx, inner, bias=False)
        w.linear(f"{b}.{attn}.to_v", ctx, inner, bias=False)
        w.linear(f"{b}.{attn}.to_out.0", inner, inner)
    for n in ("norm1", "norm2", "norm3"):
        w.norm(f"{b}.{n}", inner)
    w.linear(b + ".ff.net.0.proj", inner, inner * 4 * 2)    # GEGLU
    w.linear(b + ".ff.net.2", inner * 4, inner)
    w.conv(p + ".proj_out", inner, ch, 1)


def unet_weights() -> Weights:
    c = UNET
    w = Weights("unet")
    boc, lpb = c["block_out_channels"], c["layers_per_block"]
    heads, cross = c["attention_head_dim"], c["cross_attention_dim"]
    temb = boc[0] * 4
    w.conv("conv_in", c["in_channels"], boc[0], 3)
    w.linear("time_embedding.linear_1", boc[0], temb)
    w.linear("time_embedding.linear_2", temb, temb)
    out_ch = boc[0]
    for i, kind in enumerate(c["down_block_types"]):
        in_ch, out_ch = out_ch, boc[i]
        p = f"down_blocks.{i}"
        for j in range(lpb):
            resnet(w, f"{p}.resnets.{j}", in_ch if j == 0 else out_ch, out_ch, temb)
            if kind == "CrossAttnDownBlock2D":
                transformer_2d(w, f"{p}.attentions.{j}", out_ch, heads, cross)
        if i < len(boc) - 1:
            w.conv(f"{p}.downsamplers.0.conv", out_ch, out_ch, 3)
    top = boc[-1]
    resnet(w, "mid_block.resnets.0", top, top, temb)
    transformer_2d(w, "mid_block.attentions.0", top, heads, cross)
    resnet(w, "mid_block.resnets.1", top, top, temb)
    rev = boc[::-1]
    out_ch = rev[0]
    for i, kind in enumerate(c["up_block_types"]):
        prev_ch, out_ch = out_ch, rev[i]
        in_ch = rev[min(i + 1, len(rev) - 1)]
        p = f"up_blocks.{i}"
        n = lpb + 1
        for j in range(n):
            skip = in_ch if j == n - 1 else out_ch
            res_in = prev_ch if j == 0 else out_ch
            resnet(w, f"{p}.resnets.{j}", res_in + skip, out_ch, temb)
            if kind == "CrossAttnUpBlock2D":
                transformer_2d(w, f"{p}.attentions.{j}", out_ch, heads, cross)
        if i < len(rev) - 1:
            w.conv(f"{p}.upsamplers.0.conv", out_ch, out_ch, 3)
    w.norm("conv_norm_out", boc[0])
    w.conv("conv_out", boc[0], c["out_channels"], 3)
    return w


def vae_mid(w, p, ch):
    resnet(w, p + ".resnets.0", ch, ch)
    a = p + ".attentions.0"
    w.norm(a + ".group_norm", ch)
    for n in ("to_q", "to_k", "to_v", "to_out.0"):
        w.linear(f"{a}.{n}", ch, ch)
    resnet(w, p + ".resnets.1", ch, ch)


def vae_weights(c: dict = VAE, w: Weights = None) -> Weights:
    """The AutoencoderKL of config `c` into `w` (default: this fixture's);
    quant convs only where the config has them (SD3 and Flux have none)."""
    w = w if w is not None else Weights("vae")
    boc, lpb, lat = c["block_out_channels"], c["layers_per_block"], c["latent_channels"]
    w.conv("encoder.conv_in", c["in_channels"], boc[0], 3)
    out_ch = boc[0]
    for i in range(len(boc)):
        in_ch, out_ch = out_ch, boc[i]
        for j in range(lpb):
            resnet(w, f"encoder.down_blocks.{i}.resnets.{j}", in_ch if j == 0 else out_ch, out_ch)
        if i < len(boc) - 1:
            w.conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", out_ch, out_ch, 3)
    vae_mid(w, "encoder.mid_block", boc[-1])
    w.norm("encoder.conv_norm_out", boc[-1])
    w.conv("encoder.conv_out", boc[-1], 2 * lat, 3)
    if c.get("use_quant_conv", True):
        w.conv("quant_conv", 2 * lat, 2 * lat, 1)
    if c.get("use_post_quant_conv", True):
        w.conv("post_quant_conv", lat, lat, 1)
    w.conv("decoder.conv_in", lat, boc[-1], 3)
    vae_mid(w, "decoder.mid_block", boc[-1])
    rev = boc[::-1]
    out_ch = rev[0]
    for i in range(len(rev)):
        prev_ch, out_ch = out_ch, rev[i]
        for j in range(lpb + 1):
            resnet(w, f"decoder.up_blocks.{i}.resnets.{j}", prev_ch if j == 0 else out_ch, out_ch)
        if i < len(rev) - 1:
            w.conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", out_ch, out_ch, 3)
    w.norm("decoder.conv_norm_out", boc[0])
    w.conv("decoder.conv_out", boc[0], c["out_channels"], 3)
    return w


def clip_weights(vocab_size: int) -> Weights:
    w = Weights("text_encoder")
    h, p = CLIP_HIDDEN, "text_model"
    w.rand(p + ".embeddings.token_embedding.weight", vocab_size, h)
    w.rand(p + ".embeddings.position_embedding.weight", CLIP_POSITIONS, h)
    for i in range(CLIP_LAYERS):
        lp = f"{p}.encoder.layers.{i}"
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            w.linear(f"{lp}.self_attn.{n}", h, h)
        w.norm(lp + ".layer_norm1", h)
        w.linear(lp + ".mlp.fc1", h, CLIP_FF)
        w.linear(lp + ".mlp.fc2", CLIP_FF, h)
        w.norm(lp + ".layer_norm2", h)
    w.norm(p + ".final_layer_norm", h)
    return w


def clip_config(vocab_size: int, bos: int, eos: int) -> dict:
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "dropout": 0.0,
        "eos_token_id": eos,
        "hidden_act": "quick_gelu",
        "hidden_size": CLIP_HIDDEN,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": CLIP_FF,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": CLIP_POSITIONS,
        "model_type": "clip_text_model",
        "num_attention_heads": CLIP_HEADS,
        "num_hidden_layers": CLIP_LAYERS,
        "pad_token_id": 1,
        "projection_dim": CLIP_HIDDEN,
        "torch_dtype": "float32",
        "transformers_version": TRANSFORMERS_VERSION,
        "vocab_size": vocab_size,
    }


# ---- writing ----------------------------------------------------------------

def dump(path: Path, obj):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make(d: Path):
    d.mkdir()
    dump(d / "model_index.json", MODEL_INDEX)
    vocab_size = write_tokenizer(d / "tokenizer")
    bos, eos = vocab_size - 2, vocab_size - 1
    (d / "scheduler").mkdir()
    dump(d / "scheduler" / "scheduler_config.json", SCHEDULER)
    for sub, cfg, w, fname in (
            ("text_encoder", clip_config(vocab_size, bos, eos), clip_weights(vocab_size),
             "model.safetensors"),
            ("unet", UNET, unet_weights(), "diffusion_pytorch_model.safetensors"),
            ("vae", VAE, vae_weights(), "diffusion_pytorch_model.safetensors")):
        (d / sub).mkdir()
        dump(d / sub / "config.json", cfg)
        w.save(d / sub / fname)
        print(f"  {sub}: {len(w.t)} tensors, {w.n_params():,} parameters")
    (d / STAMP).write_text(f"{FIXTURE_VERSION}\n")    # last: marks the folder complete


def current_version(d: Path):
    try:
        return int((d / STAMP).read_text().strip())
    except (OSError, ValueError):
        return None


def write_fixture(models_dir: Path, name: str, version: int, make_into, force: bool) -> int:
    """Write <models_dir>/<name> with `make_into(folder)` unless it holds
    `version` already: built under a temporary name and renamed into place,
    so a reader never sees a half-written fixture (make-sdxl-fixture.py uses
    it too)."""
    out = models_dir / name
    if not force and current_version(out) == version:
        print(f"{out}: up to date (fixture version {version})")
        return 0
    models_dir.mkdir(parents=True, exist_ok=True)
    tmp = models_dir / f".{name}.tmp-{os.getpid()}"
    old = models_dir / f".{name}.old-{os.getpid()}"
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    print(f"writing {out} (fixture version {version})")
    try:
        make_into(tmp)
        if out.exists():
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            # another run put a folder there in between: keep it if it is current
            if current_version(out) != version:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description="write llmlab's tiny random-weight SD 1.5 pipeline")
    ap.add_argument("models_dir", type=Path)
    ap.add_argument("--force", action="store_true", help="rewrite even when up to date")
    args = ap.parse_args()
    return write_fixture(args.models_dir, NAME, FIXTURE_VERSION, make, args.force)


if __name__ == "__main__":
    sys.exit(main())
