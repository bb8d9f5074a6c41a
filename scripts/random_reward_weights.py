"""Write RANDOM full-size reward checkpoints in the official formats, for offline end-to-end checks of the SD
suite where no weights can be downloaded:

  OUT/HPS_v2_compressed.pt     {"state_dict": ...} with open_clip ViT-H-14's 686 names and shapes (float16)
  OUT/ImageReward.pt           ImageReward v1.0's 625 names and shapes (float16)
  OUT/bert-base-uncased/       a WordPiece tokenizer folder with bert-base-uncased's size (30,522 tokens;
                               the words are synthetic)

Names and shapes come from tests/golden/full_keys.json.gz (recorded from the official models); values follow
the golden files' seeded rule. Then, e.g.:

  BENCH_HPSV2=OUT/HPS_v2_compressed.pt python -m bench run --backbone sd-v1-4-random-128 --reward hpsv2 ...
  BENCH_IMAGEREWARD=OUT/ImageReward.pt BENCH_BERT_TOKENIZER=OUT/bert-base-uncased python -m bench run ...

Usage: python scripts/random_reward_weights.py OUT
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _rule():
    spec = importlib.util.spec_from_file_location("official", ROOT / "scripts" / "official_rewards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.rule


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    rule = _rule()
    full = json.load(gzip.open(ROOT / "tests" / "golden" / "full_keys.json.gz", "rt"))
    hps = {k: rule(k, tuple(s), 3, i).half() for i, (k, s) in enumerate(full["hpsv2_vit_h_14"])}
    torch.save({"state_dict": hps}, out / "HPS_v2_compressed.pt")
    del hps
    ir = {k: rule(k, tuple(s), 4, i).half() for i, (k, s) in enumerate(full["imagereward_v1"])}
    torch.save(ir, out / "ImageReward.pt")
    del ir
    from transformers import BertTokenizer

    specials = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = ["a", "photo", "of", "cat", "dog", "horse", "the", "on", "in", "and"]
    vocab = specials + words + [f"w{i}" for i in range(30522 - len(specials) - len(words))]
    tok = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=512)
    tok.save_pretrained(str(out / "bert-base-uncased"))
    (out / "bert-base-uncased" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    print(f"random reward weights in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "random-weights")))
