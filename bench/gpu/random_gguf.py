"""Random-weight GGUF models of real shapes, for speed figures only (the
weights are noise, the text they write is noise).

    python random_gguf.py SHAPE OUT.gguf GGUF_PY_DIR

SHAPE is llama3-8b (Llama-3-8B: 32 layers, 4096 wide, GQA 32/8, 14336 FFN,
128256 tokens) or qwen2.5-0.5b (Qwen2.5-0.5B: 24 layers, 896 wide, GQA 14/2,
4864 FFN, 151936 tokens, q/k/v biases; its output matrix written apart
from the embeddings, which costs a decoded token the same as tying them). Weights are written as
Q8_0 blocks of random bytes (fast to make); `llama-quantize` then makes the
Q4_K_M mix of tensor types that the published files have.

The vocabulary is a SentencePiece-style one of made-up pieces, plus byte
pieces and the pieces of " hello" (the word `llmlab bench` repeats), so that
a benchmark prompt of N words is about N tokens on both servers.
"""

import sys

import numpy as np

SHAPES = {
    "llama3-8b": dict(arch="llama", vocab=128256, width=4096, layers=32, ffn=14336, heads=32, kv_heads=8,
                      rope_theta=500000.0, context=8192, qkv_bias=False),
    "qwen2.5-0.5b": dict(arch="qwen2", vocab=151936, width=896, layers=24, ffn=4864, heads=14, kv_heads=2,
                         rope_theta=1000000.0, context=32768, qkv_bias=True),
}
WORD_PIECES = ["\u2581", "h", "e", "l", "o", "\u2581h", "\u2581he", "\u2581hel", "\u2581hell", "\u2581hello"]
# Ids below: special, byte and word pieces; from here on, made-up pieces.
FIRST_PLAIN_PIECE = 3 + 256 + len(WORD_PIECES)


def main() -> None:
    shape_name, out, gguf_py = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, gguf_py)
    try:
        import yaml  # noqa: F401  (gguf's metadata module imports it; unused here)
    except ImportError:
        import types
        sys.modules["yaml"] = types.ModuleType("yaml")
    import gguf

    s = SHAPES[shape_name]
    rng = np.random.default_rng(0)
    head_dim = s["width"] // s["heads"]
    kv_width = head_dim * s["kv_heads"]

    def q8_0(rows: int, cols: int) -> np.ndarray:
        # One random row of blocks repeated: rows of noise cost the same to
        # multiply as rows of trained weights, and this is quick to make.
        blocks = np.zeros((cols // 32, 34), np.uint8)
        blocks[:, 0:2] = np.frombuffer(np.float16(0.0001).tobytes(), np.uint8)
        blocks[:, 2:] = rng.integers(0, 256, (cols // 32, 32), dtype=np.uint8)
        row = blocks.reshape(-1)
        return np.broadcast_to(row, (rows, row.size)).copy()

    def q8_0_vocab(rows: int, cols: int) -> np.ndarray:
        # The output matrix. Token rows differ (logits must, or greedy
        # decoding picks the first id for ever), and the rows of the special
        # and byte tokens are zero: their logit is 0 while the largest of the random ones
        # is positive, so greedy decoding writes plain pieces, never a
        # control token or half a UTF-8 character that a server would hold
        # back, and every output token is a streamed chunk on both servers.
        blocks = np.zeros((rows, cols // 32, 34), np.uint8)
        blocks[:, :, 0:2] = np.frombuffer(np.float16(0.0001).tobytes(), np.uint8)
        blocks[:, :, 2:] = rng.integers(0, 256, (rows, cols // 32, 32), dtype=np.uint8)
        blocks[:FIRST_PLAIN_PIECE] = 0
        return blocks.reshape(rows, -1)

    w = gguf.GGUFWriter(out, s["arch"])
    w.add_name(f"random-{shape_name}")
    w.add_context_length(s["context"])
    w.add_embedding_length(s["width"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)

    tokens, kinds, scores = [], [], []
    for i in range(s["vocab"]):
        if i == 0:
            tokens.append(b"<unk>"); kinds.append(2)
        elif i == 1:
            tokens.append(b"<s>"); kinds.append(3)
        elif i == 2:
            tokens.append(b"</s>"); kinds.append(3)
        elif i < 3 + 256:
            tokens.append(f"<0x{i - 3:02X}>".encode()); kinds.append(6)
        elif i < 3 + 256 + len(WORD_PIECES):
            tokens.append(WORD_PIECES[i - 259].encode()); kinds.append(1)
        else:
            tokens.append(f"\u2581p{i}".encode()); kinds.append(1)
        scores.append(float(len(tokens[-1])) if 259 <= i < 259 + len(WORD_PIECES) else 0.0)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(kinds)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    Q8 = gguf.GGMLQuantizationType.Q8_0
    ones = lambda n: np.ones(n, np.float32)
    w.add_tensor("token_embd.weight", q8_0(s["vocab"], s["width"]), raw_dtype=Q8)
    w.add_tensor("output_norm.weight", ones(s["width"]))
    # Even for a model that ties its output to its embeddings: decoding
    # reads one matrix of the same shape either way, and this one has the
    # zero rows that keep greedy decoding on plain pieces.
    w.add_tensor("output.weight", q8_0_vocab(s["vocab"], s["width"]), raw_dtype=Q8)
    for layer in range(s["layers"]):
        p = f"blk.{layer}."
        w.add_tensor(p + "attn_norm.weight", ones(s["width"]))
        w.add_tensor(p + "ffn_norm.weight", ones(s["width"]))
        w.add_tensor(p + "attn_q.weight", q8_0(s["width"], s["width"]), raw_dtype=Q8)
        w.add_tensor(p + "attn_k.weight", q8_0(kv_width, s["width"]), raw_dtype=Q8)
        w.add_tensor(p + "attn_v.weight", q8_0(kv_width, s["width"]), raw_dtype=Q8)
        w.add_tensor(p + "attn_output.weight", q8_0(s["width"], s["width"]), raw_dtype=Q8)
        if s["qkv_bias"]:
            w.add_tensor(p + "attn_q.bias", np.zeros(s["width"], np.float32))
            w.add_tensor(p + "attn_k.bias", np.zeros(kv_width, np.float32))
            w.add_tensor(p + "attn_v.bias", np.zeros(kv_width, np.float32))
        w.add_tensor(p + "ffn_gate.weight", q8_0(s["ffn"], s["width"]), raw_dtype=Q8)
        w.add_tensor(p + "ffn_up.weight", q8_0(s["ffn"], s["width"]), raw_dtype=Q8)
        w.add_tensor(p + "ffn_down.weight", q8_0(s["width"], s["ffn"]), raw_dtype=Q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out} ({shape_name}, Q8_0)")


if __name__ == "__main__":
    main()
