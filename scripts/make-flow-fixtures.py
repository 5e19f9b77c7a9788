#!/usr/bin/env python3
"""Write tiny random-weight SD3- and Flux-shaped pipelines for llmlab's image
generation tests, in the folder layout diffusers' `save_pretrained` uses for
stabilityai/stable-diffusion-3-medium-diffusers and
black-forest-labs/FLUX.1-dev: the transformer under diffusers' own tensor
names (llmlab renames them for candle), CLIP text encoders and tokenizers, a
T5 encoder with a small Unigram `tokenizer.json`, a 16-channel VAE without
quant convs, and the flow-matching scheduler settings. The weights are noise;
the fixtures exist so that the loading, renaming and conditioning code runs
end to end.

Usage:   python3 scripts/make-flow-fixtures.py <models_dir> [--force]
Needs:   pip install -r tests/diffusion-requirements.txt   (numpy, safetensors)

Writes <models_dir>/test-sd3-tiny/ and <models_dir>/test-flux-tiny/ when
missing or of another FIXTURE_VERSION; the helpers (CLIP tokenizer, tensor
writers, VAE) are those of scripts/make-diffusion-fixture.py.

Shapes:
  text_encoder(_2)  CLIP as in test-sd15-tiny (hidden 32); SD3's two with
                    text_projection (32 each), Flux's one without
  T5                T5EncoderModel (v1.1, gated-gelu), d_model 64, 2 layers,
                    4 heads of 16, d_ff 128, vocabulary of 96
  transformer SD3   SD3Transformer2DModel: 2 layers, 2 heads of 8,
                    joint_attention_dim 64, pooled_projection_dim 64,
                    pos_embed_max_size 16
  transformer Flux  FluxTransformer2DModel: 1 double and 1 single block,
                    2 heads of 16, axes_dims_rope [4, 6, 6], guidance_embeds
  vae               test-sd15-tiny's blocks, latent_channels 16, SD3's or
                    Flux's scaling and shift factors
A 64x64 image is an 8x8x16 latent: 16 patch tokens.
"""
import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("sd15_fixture", HERE / "make-diffusion-fixture.py")
sd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sd)
np = sd.np

FIXTURE_VERSION = 1            # bump whenever the bytes written below change
CLIP = sd.CLIP_HIDDEN
T5 = dict(d_model=64, d_kv=16, heads=4, d_ff=128, layers=2, vocab=96, buckets=32)
JOINT = T5["d_model"]
LATENT = 16


class Weights(sd.Weights):
    """sd.Weights seeded from `fixture/component`."""

    def __init__(self, fixture: str, component: str):
        super().__init__(f"../{fixture}/{component}")

    def ones(self, name, n):
        self._put(name, np.ones(n))


def vae_config(scaling, shift):
    return dict(sd.VAE, latent_channels=LATENT, scaling_factor=scaling, shift_factor=shift,
                use_quant_conv=False, use_post_quant_conv=False, force_upcast=True)


# ---- T5 and its tokenizer ------------------------------------------------------

T5_PIECES = ["<pad>", "</s>", "<unk>", "\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] \
    + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + list("0123456789") \
    + ["\u2581a", "\u2581the", "\u2581of", "\u2581in", "\u2581on", "\u2581red", "\u2581fox", "\u2581cat",
       "\u2581dog", "\u2581snow", "\u2581castle", "\u2581hill", "\u2581beach", "ing", "er", "\u2581s"]


def write_t5_tokenizer(d: Path):
    """A Unigram tokenizer.json as T5TokenizerFast saves one: words split on
    spaces with the metaspace mark, `</s>` appended."""
    def special(i, content):
        return {"id": i, "content": content, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": True}
    # Longer pieces score higher, so whole words win over letters.
    vocab = [[piece, 0.0 if i < 3 else -10.0 + len(piece)] for i, piece in enumerate(T5_PIECES)]
    metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(0, "<pad>"), special(1, "</s>"), special(2, "<unk>")],
        "normalizer": {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        "pre_tokenizer": metaspace,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
        },
        "decoder": metaspace,
        "model": {"type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": False},
    }
    d.mkdir()
    sd.dump(d / "tokenizer.json", tokenizer)
    sd.dump(d / "special_tokens_map.json", {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})
    sd.dump(d / "tokenizer_config.json", {
        "tokenizer_class": "T5Tokenizer", "model_max_length": 512, "extra_ids": 0,
        "additional_special_tokens": [], "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"})


def t5_config():
    return {
        "architectures": ["T5EncoderModel"], "d_ff": T5["d_ff"], "d_kv": T5["d_kv"],
        "d_model": T5["d_model"], "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True,
        "layer_norm_epsilon": 1e-06, "model_type": "t5", "num_decoder_layers": T5["layers"],
        "num_heads": T5["heads"], "num_layers": T5["layers"], "pad_token_id": 0,
        "relative_attention_max_distance": 128, "relative_attention_num_buckets": T5["buckets"],
        "tie_word_embeddings": False, "torch_dtype": "float32",
        "transformers_version": sd.TRANSFORMERS_VERSION, "use_cache": True, "vocab_size": T5["vocab"],
    }


def t5_weights(fixture, component):
    w = Weights(fixture, component)
    h, inner, ff = T5["d_model"], T5["heads"] * T5["d_kv"], T5["d_ff"]
    w.rand("shared.weight", T5["vocab"], h)
    for i in range(T5["layers"]):
        b = f"encoder.block.{i}.layer"
        for n in ("q", "k", "v"):
            w.linear(f"{b}.0.SelfAttention.{n}", h, inner, bias=False)
        w.linear(f"{b}.0.SelfAttention.o", inner, h, bias=False)
        if i == 0:
            w.rand(f"{b}.0.SelfAttention.relative_attention_bias.weight", T5["buckets"], T5["heads"])
        w.ones(f"{b}.0.layer_norm.weight", h)
        w.linear(f"{b}.1.DenseReluDense.wi_0", h, ff, bias=False)
        w.linear(f"{b}.1.DenseReluDense.wi_1", h, ff, bias=False)
        w.linear(f"{b}.1.DenseReluDense.wo", ff, h, bias=False)
        w.ones(f"{b}.1.layer_norm.weight", h)
    w.ones("encoder.final_layer_norm.weight", h)
    return w


# ---- CLIP ------------------------------------------------------------------------

def clip_weights(fixture, component, vocab_size, projection):
    w = Weights(fixture, component)
    norms = ("layer_norm1", "layer_norm2", "final_layer_norm")
    for name, array in sd.clip_weights(vocab_size).t.items():
        if name.rsplit(".", 1)[0].endswith(norms):
            w._put(name, array)
        else:
            w.rand(name, *array.shape)
    if projection:
        w.linear("text_projection", CLIP, CLIP, bias=False)
    return w


def clip_config(vocab_size, projection):
    bos, eos = vocab_size - 2, vocab_size - 1
    config = sd.clip_config(vocab_size, bos, eos)
    if projection:
        config = dict(config, architectures=["CLIPTextModelWithProjection"], projection_dim=CLIP)
    return config


def write_clip_tokenizer(d: Path, pad=None) -> int:
    vocab_size = sd.write_tokenizer(d)
    if pad:
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            path = d / name
            config = sd.json.loads(path.read_text(encoding="utf-8"))
            config["pad_token"] = pad
            sd.dump(path, config)
    return vocab_size


# ---- transformers ----------------------------------------------------------------

SD3 = {
    "_class_name": "SD3Transformer2DModel", "_diffusers_version": sd.DIFFUSERS_VERSION,
    "attention_head_dim": 8, "caption_projection_dim": 16, "in_channels": LATENT,
    "joint_attention_dim": JOINT, "num_attention_heads": 2, "num_layers": 2,
    "out_channels": LATENT, "patch_size": 2, "pooled_projection_dim": 2 * CLIP,
    "pos_embed_max_size": 16, "sample_size": 16,
}

FLUX = {
    "_class_name": "FluxTransformer2DModel", "_diffusers_version": sd.DIFFUSERS_VERSION,
    "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "guidance_embeds": True,
    "in_channels": 4 * LATENT, "joint_attention_dim": JOINT, "num_attention_heads": 2,
    "num_layers": 1, "num_single_layers": 1, "patch_size": 1, "pooled_projection_dim": CLIP,
}


def sd3_weights(fixture):
    c, w = SD3, Weights(fixture, "transformer")
    dim = c["attention_head_dim"] * c["num_attention_heads"]
    p = c["patch_size"]
    w.conv("pos_embed.proj", c["in_channels"], dim, p)
    w.rand("pos_embed.pos_embed", 1, c["pos_embed_max_size"] ** 2, dim)
    w.linear("time_text_embed.timestep_embedder.linear_1", 256, dim)
    w.linear("time_text_embed.timestep_embedder.linear_2", dim, dim)
    w.linear("time_text_embed.text_embedder.linear_1", c["pooled_projection_dim"], dim)
    w.linear("time_text_embed.text_embedder.linear_2", dim, dim)
    w.linear("context_embedder", c["joint_attention_dim"], dim)
    for i in range(c["num_layers"]):
        b = f"transformer_blocks.{i}"
        last = i == c["num_layers"] - 1
        w.linear(f"{b}.norm1.linear", dim, 6 * dim)
        w.linear(f"{b}.norm1_context.linear", dim, (2 if last else 6) * dim)
        for n in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj"):
            w.linear(f"{b}.attn.{n}", dim, dim)
        w.linear(f"{b}.ff.net.0.proj", dim, 4 * dim)
        w.linear(f"{b}.ff.net.2", 4 * dim, dim)
        if not last:
            w.linear(f"{b}.attn.to_add_out", dim, dim)
            w.linear(f"{b}.ff_context.net.0.proj", dim, 4 * dim)
            w.linear(f"{b}.ff_context.net.2", 4 * dim, dim)
    w.linear("norm_out.linear", dim, 2 * dim)
    w.linear("proj_out", dim, p * p * c["out_channels"])
    return w


def flux_weights(fixture):
    c, w = FLUX, Weights(fixture, "transformer")
    head = c["attention_head_dim"]
    dim = head * c["num_attention_heads"]
    w.linear("x_embedder", c["in_channels"], dim)
    w.linear("context_embedder", c["joint_attention_dim"], dim)
    for embedder, width in (("timestep_embedder", 256), ("guidance_embedder", 256),
                            ("text_embedder", c["pooled_projection_dim"])):
        w.linear(f"time_text_embed.{embedder}.linear_1", width, dim)
        w.linear(f"time_text_embed.{embedder}.linear_2", dim, dim)
    for i in range(c["num_layers"]):
        b = f"transformer_blocks.{i}"
        w.linear(f"{b}.norm1.linear", dim, 6 * dim)
        w.linear(f"{b}.norm1_context.linear", dim, 6 * dim)
        for n in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            w.linear(f"{b}.attn.{n}", dim, dim)
        for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            w.ones(f"{b}.attn.{n}.weight", head)
        for ff in ("ff", "ff_context"):
            w.linear(f"{b}.{ff}.net.0.proj", dim, 4 * dim)
            w.linear(f"{b}.{ff}.net.2", 4 * dim, dim)
    for i in range(c["num_single_layers"]):
        b = f"single_transformer_blocks.{i}"
        w.linear(f"{b}.norm.linear", dim, 3 * dim)
        w.linear(f"{b}.proj_mlp", dim, 4 * dim)
        w.linear(f"{b}.proj_out", 5 * dim, dim)
        for n in ("to_q", "to_k", "to_v"):
            w.linear(f"{b}.attn.{n}", dim, dim)
        for n in ("norm_q", "norm_k"):
            w.ones(f"{b}.attn.{n}.weight", head)
    w.linear("norm_out.linear", dim, 2 * dim)
    w.linear("proj_out", dim, c["in_channels"])
    return w


# ---- the two folders ---------------------------------------------------------------

def save(d, sub, config, weights, fname):
    (d / sub).mkdir()
    sd.dump(d / sub / "config.json", config)
    weights.save(d / sub / fname)
    print(f"  {sub}: {len(weights.t)} tensors, {weights.n_params():,} parameters")


def make_sd3(d: Path):
    name = "test-sd3-tiny"
    d.mkdir()
    sd.dump(d / "model_index.json", {
        "_class_name": "StableDiffusion3Pipeline", "_diffusers_version": sd.DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "SD3Transformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]})
    vocab_size = write_clip_tokenizer(d / "tokenizer")
    write_clip_tokenizer(d / "tokenizer_2", pad="!")
    write_t5_tokenizer(d / "tokenizer_3")
    (d / "scheduler").mkdir()
    sd.dump(d / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": sd.DIFFUSERS_VERSION,
        "num_train_timesteps": 1000, "shift": 3.0})
    save(d, "text_encoder", clip_config(vocab_size, True), clip_weights(name, "text_encoder", vocab_size, True),
         "model.safetensors")
    save(d, "text_encoder_2", dict(clip_config(vocab_size, True), hidden_act="gelu"),
         clip_weights(name, "text_encoder_2", vocab_size, True), "model.safetensors")
    save(d, "text_encoder_3", t5_config(), t5_weights(name, "text_encoder_3"), "model.safetensors")
    save(d, "transformer", SD3, sd3_weights(name), "diffusion_pytorch_model.safetensors")
    vae = vae_config(1.5305, 0.0609)
    save(d, "vae", vae, sd.vae_weights(vae, Weights(name, "vae")), "diffusion_pytorch_model.safetensors")
    (d / sd.STAMP).write_text(f"{FIXTURE_VERSION}\n")


def make_flux(d: Path):
    name = "test-flux-tiny"
    d.mkdir()
    sd.dump(d / "model_index.json", {
        "_class_name": "FluxPipeline", "_diffusers_version": sd.DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"]})
    vocab_size = write_clip_tokenizer(d / "tokenizer")
    write_t5_tokenizer(d / "tokenizer_2")
    (d / "scheduler").mkdir()
    sd.dump(d / "scheduler" / "scheduler_config.json", {
        "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": sd.DIFFUSERS_VERSION,
        "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
        "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True})
    save(d, "text_encoder", clip_config(vocab_size, False), clip_weights(name, "text_encoder", vocab_size, False),
         "model.safetensors")
    save(d, "text_encoder_2", t5_config(), t5_weights(name, "text_encoder_2"), "model.safetensors")
    save(d, "transformer", FLUX, flux_weights(name), "diffusion_pytorch_model.safetensors")
    vae = vae_config(0.3611, 0.1159)
    save(d, "vae", vae, sd.vae_weights(vae, Weights(name, "vae")), "diffusion_pytorch_model.safetensors")
    (d / sd.STAMP).write_text(f"{FIXTURE_VERSION}\n")


def main() -> int:
    ap = argparse.ArgumentParser(description="write llmlab's tiny random-weight SD3 and Flux pipelines")
    ap.add_argument("models_dir", type=Path)
    ap.add_argument("--force", action="store_true", help="rewrite even when up to date")
    args = ap.parse_args()
    for name, make in (("test-sd3-tiny", make_sd3), ("test-flux-tiny", make_flux)):
        sd.write_fixture(args.models_dir, name, FIXTURE_VERSION, make, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
