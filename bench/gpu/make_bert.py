"""Random weights in a BERT sentence encoder's shape (all-MiniLM-L6-v2's
config and tokenizer, carried over without its weights), saved as a
sentence-transformers folder, for the GPU embedding benchmark.

    python make_bert.py OUT_DIR SOURCE_DIR
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel

out, source = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
model = BertModel(BertConfig.from_pretrained(source), add_pooling_layer=False)
tmp = out.with_name(out.name + ".partial")
shutil.rmtree(tmp, ignore_errors=True)
model.save_pretrained(tmp, safe_serialization=True)
AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
# sentence-transformers' own description of the pipeline: mean pooling,
# then normalisation, as the published model.
for name in ("modules.json", "sentence_bert_config.json", "1_Pooling", "2_Normalize"):
    path = source / name
    if path.is_dir():
        shutil.copytree(path, tmp / name)
    elif path.is_file():
        shutil.copy(path, tmp / name)
shutil.rmtree(out, ignore_errors=True)
tmp.rename(out)
print(f"made {out}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
