#!/usr/bin/env python3
"""Write tiny random-weight vision projector (mmproj) GGUF fixtures for llmlab's
vision tests. The weights are noise, so the "descriptions" are nonsense; the
files exist to drive llama.cpp's multimodal library (mtmd / clip.cpp, b11434)
end to end: load, preprocess, encode an image, decode the embeddings.

Usage:   python3 scripts/make-vision-fixtures.py <models_dir> [--with-qwen2vl] [--force]
Needs:   pip install -r tests/vision-requirements.txt   (gguf, numpy)

Writes into <models_dir> (only when missing or written by another FIXTURE_VERSION;
each file carries the version in its metadata key `llmlab.fixture_version`):
  test-mmproj-mlp-896.gguf     LLaVA projector ("mlp") for qwen2.5-coder-0.5b (n_embd 896).
                               Image 48x48, patch 8 -> 6x6 = 36 image tokens per image.
  test-mmproj-gemma3-640.gguf  Gemma 3 projector ("gemma3") for gemma-3-270m (n_embd 640).
                               Image 64x64, patch 4 -> 16x16 patches, 4x4 avg-pool -> 16 tokens.
                               mtmd_decode_use_non_causal() is true for this projector.
  --with-qwen2vl (optional M-RoPE pair):
  test-mmproj-qwen2vl-896.gguf ("qwen2vl_merger") patch 14, 2x2 merge: one token per 28x28 px;
                               mtmd resizes to keep 8..4096 tokens (a 56x56 image -> 9 tokens).
  test-qwen2vl-0.5b.gguf       qwen2.5-coder-0.5b relabelled as architecture qwen2vl (M-RoPE).
"""
import argparse
import os
import struct
import sys
import zlib
from pathlib import Path

try:
    import numpy as np
    import gguf
except ImportError as e:
    sys.exit(f"{e}: run `python3 -m pip install -r tests/vision-requirements.txt` first")

FIXTURE_VERSION = 1          # bump whenever the bytes written below change
VERSION_KEY = "llmlab.fixture_version"
QWEN_TEXT = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
# Qwen2-VL uses mrope_section [16, 24, 24] for head_dim 128; Qwen2.5-0.5B has
# head_dim 64, so halve it (the sections must sum to head_dim / 2).
QWEN2VL_ROPE_SECTIONS = [8, 12, 12, 0]


def fixture_name(path: Path) -> str:
    return path.name.removesuffix(".tmp")    # written as NAME.tmp, then renamed


class Proj:
    """Collects tensors for one mmproj file; numpy shapes are ggml's ne reversed."""

    def __init__(self, name: str):
        # one independent, fixed stream per fixture: same script -> same bytes
        self.rng = np.random.default_rng(zlib.crc32(name.encode()))
        self.tensors: dict[str, np.ndarray] = {}

    def mat(self, name, *shape):   # weight matrices / conv kernels: F16 like real mmproj files
        self.tensors[name] = (self.rng.standard_normal(shape) * 0.02).astype(np.float16)

    def vec(self, name, n, fill=None):  # norms and biases: F32
        v = np.full(n, fill, np.float32) if fill is not None else self.rng.standard_normal(n) * 0.02
        self.tensors[name] = np.asarray(v, np.float32)

    def pos(self, name, n_pos, n_embd):  # learned position embeddings: F32
        self.tensors[name] = (self.rng.standard_normal((n_pos, n_embd)) * 0.02).astype(np.float32)

    def norm(self, prefix, n):     # LayerNorm weight=1, bias=0 (optional in clip, kept for realism)
        self.vec(prefix + ".weight", n, 1.0)
        self.vec(prefix + ".bias", n, 0.0)

    def vit_blocks(self, n_layer, n_embd, n_ff):
        # load_tensors(): attn_out.weight, ffn_up.weight, ffn_down.weight are required;
        # q/k/v are "optional" but every graph (llava, siglip, qwen2vl) multiplies by them,
        # and qwen2vl adds q/k/v biases unconditionally.
        for il in range(n_layer):
            b = f"v.blk.{il}."
            for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
                self.mat(b + t + ".weight", n_embd, n_embd)
                self.vec(b + t + ".bias", n_embd)
            self.norm(b + "ln1", n_embd)
            self.norm(b + "ln2", n_embd)
            # ffn_up ne=[n_embd, n_ff], ffn_down ne=[n_ff, n_embd]; n_ff != n_embd keeps
            # clip's legacy "ffn up/down swapped" heuristic from firing.
            self.mat(b + "ffn_up.weight", n_ff, n_embd)
            self.vec(b + "ffn_up.bias", n_ff)
            self.mat(b + "ffn_down.weight", n_embd, n_ff)
            self.vec(b + "ffn_down.bias", n_embd)


def write_mmproj(path: Path, p: Proj, *, proj_type, image_size, patch, n_embd, n_ff,
                 n_layer, n_head, proj_dim, eps, mean, std, use_gelu, extra=()):
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_uint32(VERSION_KEY, FIXTURE_VERSION)
    w.add_string("general.name", fixture_name(path).removesuffix(".gguf"))
    w.add_string("general.description", "llmlab test fixture: random weights, not a real model")
    w.add_uint32("general.file_type", 1)                 # mostly F16
    # clip_model_loader ctor: without has_vision_encoder, load_hparams asserts (abort)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", proj_type)       # must be a name in PROJECTOR_TYPE_NAMES
    # load_hparams(): required u32/f32 keys. Types matter: gguf_get_val_u32 asserts the
    # stored type is UINT32 (an INT32 here aborts the process, it does not throw).
    w.add_uint32("clip.vision.embedding_length", n_embd)
    w.add_uint32("clip.vision.feed_forward_length", n_ff)
    w.add_uint32("clip.vision.block_count", n_layer)
    w.add_uint32("clip.vision.attention.head_count", n_head)
    w.add_uint32("clip.vision.projection_dim", proj_dim)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", eps)
    w.add_uint32("clip.vision.image_size", image_size)
    w.add_uint32("clip.vision.patch_size", patch)
    # read as optional, but load_hparams throws unless both hold >= 3 FLOAT32 values
    w.add_array("clip.vision.image_mean", [float(x) for x in mean])
    w.add_array("clip.vision.image_std", [float(x) for x in std])
    w.add_bool("clip.use_gelu", use_gelu)                # false -> quick-gelu (CLIP, Qwen2-VL)
    for key, val in extra:
        w.add_uint32(key, val)
    for name, t in p.tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def make_mlp_896(path: Path):
    # LLaVA-1.5 layout (clip_graph_llava). The llava graph stops at the second-to-last
    # block, so 2 blocks means 1 block is evaluated. Position embeddings are required
    # by that graph (ggml_get_rows on them), one row per patch (no class token).
    size, patch, n_embd, n_ff, n_layer, n_head, out = 48, 8, 64, 128, 2, 4, 896
    n_pos = (size // patch) ** 2
    p = Proj(fixture_name(path))
    p.mat("v.patch_embd.weight", n_embd, 3, patch, patch)   # conv2d kernel ne=[p, p, 3, n_embd]
    p.vec("v.patch_embd.bias", n_embd)
    p.pos("v.position_embd.weight", n_pos, n_embd)
    p.norm("v.pre_ln", n_embd)
    p.vit_blocks(n_layer, n_embd, n_ff)
    # PROJECTOR_TYPE_MLP: mm.0 -> gelu -> mm.2; clip_n_mmproj_embd = mm.2.weight ne[1]
    # (must equal the text model's n_embd or mtmd_init_from_file refuses the pair).
    p.mat("mm.0.weight", out, n_embd)
    p.vec("mm.0.bias", out)
    p.mat("mm.2.weight", out, out)
    p.vec("mm.2.bias", out)
    write_mmproj(path, p, proj_type="mlp", image_size=size, patch=patch, n_embd=n_embd,
                 n_ff=n_ff, n_layer=n_layer, n_head=n_head, proj_dim=out, eps=1e-5,
                 mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711), use_gelu=False)


def make_gemma3_640(path: Path):
    # SigLIP ViT (clip_graph_siglip) + Gemma 3 head: avg-pool by n_merge (default 4,
    # read from clip.vision.projector.scale_factor if present), RMS norm with
    # mm.soft_emb_norm.weight, then mm.input_projection.weight (both required).
    size, patch, n_embd, n_ff, n_layer, n_head, out, merge = 64, 4, 64, 128, 2, 4, 640, 4
    n_pos = (size // patch) ** 2
    p = Proj(fixture_name(path))
    p.mat("v.patch_embd.weight", n_embd, 3, patch, patch)
    p.vec("v.patch_embd.bias", n_embd)
    p.pos("v.position_embd.weight", n_pos, n_embd)          # build_vit adds it to every patch
    p.vit_blocks(n_layer, n_embd, n_ff)
    p.norm("v.post_ln", n_embd)
    p.vec("mm.soft_emb_norm.weight", n_embd, 1.0)
    # ne=[640, n_embd]: clip_n_mmproj_embd for gemma3 is mm.input_projection.weight ne[0]
    p.mat("mm.input_projection.weight", n_embd, out)
    write_mmproj(path, p, proj_type="gemma3", image_size=size, patch=patch, n_embd=n_embd,
                 n_ff=n_ff, n_layer=n_layer, n_head=n_head, proj_dim=out, eps=1e-6,
                 mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), use_gelu=True,
                 extra=[("clip.vision.projector.scale_factor", merge)])


def make_qwen2vl_896(path: Path):
    # clip_graph_qwen2vl: two conv kernels (temporal patch of 2 frames, both used for a
    # still image), no patch bias / class token (asserted), 2D M-RoPE in every block
    # (d_head = 16 splits into 4 sections of 4), 2x2 patch merge -> mm.0 -> gelu -> mm.2.
    size, patch, n_embd, n_ff, n_layer, n_head, out = 56, 14, 64, 128, 2, 4, 896
    p = Proj(fixture_name(path))
    p.mat("v.patch_embd.weight", n_embd, 3, patch, patch)
    p.mat("v.patch_embd.weight.1", n_embd, 3, patch, patch)
    p.vit_blocks(n_layer, n_embd, n_ff)
    p.norm("v.post_ln", n_embd)                              # merger ln_q
    p.mat("mm.0.weight", 4 * n_embd, 4 * n_embd)
    p.vec("mm.0.bias", 4 * n_embd)
    p.mat("mm.2.weight", out, 4 * n_embd)
    p.vec("mm.2.bias", out)                                  # clip_n_mmproj_embd = mm.2.bias ne[0]
    # image_size is unused by the dynamic-size preprocessor but is a required key.
    write_mmproj(path, p, proj_type="qwen2vl_merger", image_size=size, patch=patch,
                 n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, n_head=n_head, proj_dim=out,
                 eps=1e-6, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711), use_gelu=False,
                 extra=[("clip.vision.spatial_merge_size", 2)])


def make_qwen2vl_text(path: Path, src: Path):
    # Same tensors, relabelled: general.architecture=qwen2vl, qwen2.* -> qwen2vl.*, plus
    # qwen2vl.rope.dimension_sections (llama_model_qwen2vl::load_arch_hparams requires it;
    # INT32 array of 4). The qwen2vl arch reports LLAMA_ROPE_TYPE_MROPE, so mtmd switches
    # to M-RoPE positions (4 per token) for every chunk.
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(path), "qwen2vl")
    w.add_uint32(VERSION_KEY, FIXTURE_VERSION)
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        name = "qwen2vl." + f.name[len("qwen2."):] if f.name.startswith("qwen2.") else f.name
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub_type=sub)
    w.add_array("qwen2vl.rope.dimension_sections", QWEN2VL_ROPE_SECTIONS)
    for t in r.tensors:
        w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for t in r.tensors:
        w.write_tensor_data(t.data, tensor_endianess=r.endianess)
    w.close()


def up_to_date(path: Path) -> bool:
    """True when `path` is a GGUF whose llmlab.fixture_version equals FIXTURE_VERSION.
    Reads only the header: GGUFReader would parse the 490 MB copy's whole vocabulary.
    The version is always the key right after general.architecture."""
    try:
        with open(path, "rb") as f:
            magic, _ver, _n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
            if magic != b"GGUF":
                return False
            for _ in range(min(n_kv, 2)):
                (klen,) = struct.unpack("<Q", f.read(8))
                key = f.read(klen).decode()
                (vtype,) = struct.unpack("<I", f.read(4))
                if vtype == gguf.GGUFValueType.STRING:
                    (vlen,) = struct.unpack("<Q", f.read(8))
                    f.seek(vlen, os.SEEK_CUR)
                elif key == VERSION_KEY and vtype == gguf.GGUFValueType.UINT32:
                    return struct.unpack("<I", f.read(4))[0] == FIXTURE_VERSION
                else:
                    return False
    except (OSError, struct.error, UnicodeDecodeError):    # missing / truncated: rewrite
        return False
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description="write llmlab's random-weight mmproj fixtures")
    ap.add_argument("models_dir", type=Path)
    ap.add_argument("--with-qwen2vl", action="store_true",
                    help="also write the M-RoPE pair (copies the 0.5B text model, ~490 MB)")
    ap.add_argument("--force", action="store_true", help="rewrite even when up to date")
    args = ap.parse_args()
    d = args.models_dir
    d.mkdir(parents=True, exist_ok=True)

    jobs = [("test-mmproj-mlp-896.gguf", make_mlp_896),
            ("test-mmproj-gemma3-640.gguf", make_gemma3_640)]
    if args.with_qwen2vl:
        src = d / QWEN_TEXT
        if not src.is_file():
            print(f"error: {src} is missing (needed for test-qwen2vl-0.5b.gguf)", file=sys.stderr)
            return 1
        jobs += [("test-mmproj-qwen2vl-896.gguf", make_qwen2vl_896),
                 ("test-qwen2vl-0.5b.gguf", lambda p: make_qwen2vl_text(p, src))]

    for name, make in jobs:
        out = d / name
        if not args.force and up_to_date(out):
            print(f"up to date: {out}")
            continue
        tmp = out.with_name(out.name + ".tmp")               # never leave a half-written fixture
        make(tmp)
        os.replace(tmp, out)
        print(f"wrote: {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
