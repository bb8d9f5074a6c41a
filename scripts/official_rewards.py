"""The OFFICIAL HPSv2 and ImageReward scoring code on seeded random-weight models, for the golden files that
tests/test_official_rewards.py compares the native loaders against.

Runs only in the side environment built by scripts/check_official_rewards.sh (it imports hpsv2, open_clip,
ImageReward and torchvision, which the project's environment cannot hold). Writes tests/golden/:
- hpsv2.json / imagereward.json: a reduced architecture, its parameter names and shapes, the seed of the
  shared weight rule, the inputs (seeded uint8 images, prompts, a synthetic BERT vocabulary) and the
  official scores;
- clip_tokens.json: HPSv2's own tokenizer (open_clip's, with its ftfy / html cleaning) on prompts that are
  not plain ASCII, for the native tokenizer's text-cleaning test;
- full_keys.json.gz: the parameter names and shapes of the FULL-size models (open_clip ViT-H-14, ImageReward
  v1.0), built on the meta device, for the exact key-mapping test.

The weight rule both sides share (`fill`): parameters in sorted name order, the i-th from
z = torch.randn(shape, generator=torch.Generator().manual_seed(seed * 100_003 + i)): tensors of 2+ dims
z / sqrt(fan_in) (fan_in = the product of all dims but the first), normalisation gains 1 + 0.02 z, every
other 1-d tensor 0.02 z, a logit scale log(100). Scores then depend on the image and the prompt.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch


def define_torchvision_ops():
    """torchvision from the index is a CUDA build: its compiled ops do not load on this CPU machine. Declaring
    their schemas lets its Python parts import (nothing here runs those ops)."""
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return lib


def rule(name: str, shape: tuple, seed: int, i: int) -> torch.Tensor:
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed * 100_003 + i))
    if name.endswith("logit_scale"):
        return torch.full(shape, 4.605170185988092)
    if len(shape) >= 2:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        return z / fan_in ** 0.5
    leaf = name.rsplit(".", 2)
    if name.endswith(".weight") and any(t in leaf[-2].lower() for t in ("norm", "ln_")):
        return 1.0 + 0.02 * z
    return 0.02 * z


def fill(model: torch.nn.Module, seed: int) -> list[tuple[str, list[int]]]:
    """Overwrite every parameter and persistent buffer by the shared rule; return (name, shape) in order."""
    state = model.state_dict()
    names = sorted(k for k in state if not k.endswith(("attn_mask", "position_ids")))
    new = {name: rule(name, tuple(state[name].shape), seed, i) for i, name in enumerate(names)}
    model.load_state_dict(new, strict=False)
    return [(n, list(state[n].shape)) for n in names]


def images(seed: int, n: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


CASES = [dict(seed=11, n=3, h=40, w=60), dict(seed=12, n=2, h=32, w=32)]  # 40x60: an odd padding (37 | 38)
PROMPTS = ["a photo of a cat", "two red apples on a wooden table"]


# ------------------------------------------------------------------------------ HPSv2
HPS_ARCH = dict(embed_dim=32, vision=dict(image_size=224, layers=2, width=64, head_width=32, patch_size=32,
                                          mlp_ratio=4.0),
                text=dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2))


def hpsv2_golden() -> dict:
    from PIL import Image

    from hpsv2.src.open_clip import get_tokenizer
    from hpsv2.src.open_clip.model import CLIP
    from hpsv2.src.open_clip.transform import image_transform

    torch.manual_seed(0)
    model = CLIP(embed_dim=HPS_ARCH["embed_dim"], vision_cfg=HPS_ARCH["vision"], text_cfg=HPS_ARCH["text"],
                 output_dict=True).eval()
    keys = fill(model, seed=7)
    # HPSv2's eval transform with light_augmentation=True (create_model_and_transforms)
    preprocess = image_transform(model.visual.image_size, is_train=False, resize_longest_max=True)
    tokenizer = get_tokenizer("ViT-H-14")
    cases = []
    for case in CASES:
        arr = images(**case)
        scores = []
        for k, a in enumerate(arr):
            prompt = PROMPTS[k % len(PROMPTS)]
            with torch.no_grad():  # hpsv2.img_score.score, minus its CUDA autocast (fp32 on this CPU)
                out = model(preprocess(Image.fromarray(a)).unsqueeze(0), tokenizer([prompt]))
                scores.append(float(torch.diagonal(out["image_features"] @ out["text_features"].T)[0]))
        cases.append({**case, "prompts": [PROMPTS[k % len(PROMPTS)] for k in range(case["n"])], "scores": scores})
    ids = tokenizer(PROMPTS)[:, :12].tolist()
    return {"arch": HPS_ARCH, "seed": 7, "keys": keys, "cases": cases, "token_ids": ids}


# ------------------------------------------------------------------------------ ImageReward
IR_ARCH = dict(vision=dict(img_size=224, patch_size=16, embed_dim=64, depth=2, num_heads=2),
               text=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                         max_position_embeddings=64))
WORDS = ["a", "photo", "of", "cat", "two", "red", "apples", "on", "wooden", "table", "dog", "the"]


def synthetic_vocab() -> list[str]:
    """A tiny BERT vocabulary (bert-base-uncased cannot be downloaded here); BLIP adds [DEC] and [ENC]."""
    return ["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def imagereward_golden(tmp: Path) -> dict:
    from PIL import Image
    from transformers import BertTokenizer

    import ImageReward  # noqa: F401  (the package re-exports the class under its module's name)
    from ImageReward.models.BLIP.med import BertConfig, BertModel
    from ImageReward.models.BLIP.vit import VisionTransformer

    ir_module = sys.modules["ImageReward.ImageReward"]

    vocab = synthetic_vocab()
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(str(tmp / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # as BLIP's init_tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tokenizer.enc_token_id = tokenizer.additional_special_tokens_ids[0]
    torch.manual_seed(0)
    visual = VisionTransformer(**IR_ARCH["vision"])
    cfg = BertConfig(vocab_size=len(tokenizer), **IR_ARCH["text"])
    cfg.encoder_width = IR_ARCH["vision"]["embed_dim"]
    cfg.add_cross_attention = True
    text = BertModel(config=cfg, add_pooling_layer=False)
    # the official ImageReward object, with reduced BLIP parts: its own `score` runs unchanged
    model = ir_module.ImageReward.__new__(ir_module.ImageReward)
    torch.nn.Module.__init__(model)
    model.device = "cpu"
    model.blip = torch.nn.Module()
    model.blip.visual_encoder, model.blip.text_encoder = visual, text
    model.blip.tokenizer = tokenizer
    model.preprocess = ir_module._transform(224)
    model.mlp = ir_module.MLP(IR_ARCH["text"]["hidden_size"])
    model.mean, model.std = 0.16717362830052426, 1.0333394966054072
    model.eval()
    keys = fill(model, seed=9)
    cases = []
    for case in CASES:
        arr = images(**case)
        scores = [model.score(PROMPTS[k % len(PROMPTS)], Image.fromarray(a)) for k, a in enumerate(arr)]
        cases.append({**case, "prompts": [PROMPTS[k % len(PROMPTS)] for k in range(case["n"])], "scores": scores})
    ids = tokenizer(PROMPTS, padding="max_length", truncation=True, max_length=35).input_ids
    return {"arch": IR_ARCH, "seed": 9, "keys": keys, "vocab": vocab, "cases": cases, "token_ids": ids,
            "mean": model.mean, "std": model.std}


# ------------------------------------------------------------------------------ full-size names and shapes
MED_CONFIG = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
              "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
              "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "type_vocab_size": 2,
              "vocab_size": 30524, "encoder_width": 768, "add_cross_attention": True}
"""BLIP's med_config.json (bert-base with cross-attention, [DEC]/[ENC] added), as ImageReward v1.0 ships."""


def full_keys(tmp: Path) -> dict:
    import ImageReward  # noqa: F401
    from ImageReward.models.BLIP import blip_pretrain
    from hpsv2.src.open_clip.factory import get_model_config
    from hpsv2.src.open_clip.model import CLIP

    cfg = get_model_config("ViT-H-14")
    with torch.device("meta"):
        hps = CLIP(**cfg)
    (tmp / "med_config.json").write_text(json.dumps(MED_CONFIG))
    # no bert-base-uncased here: the tokenizer is not part of the state dict
    blip_pretrain.init_tokenizer = lambda: types.SimpleNamespace(__len__=lambda self: 30524)
    ir_module = sys.modules["ImageReward.ImageReward"]
    ir = ir_module.ImageReward(med_config=str(tmp / "med_config.json"))  # on the CPU: its ViT calls .item()
    return {"hpsv2_vit_h_14": [(k, list(v.shape)) for k, v in hps.state_dict().items()],
            "imagereward_v1": [(k, list(v.shape)) for k, v in ir.state_dict().items()]}


NON_ASCII_PROMPTS = [
    "a photo of a cat\u2019s \u201cbest\u201d hat",      # curly quotes
    "salt &amp; pepper on a plate",                          # an HTML entity
    "&lt;b&gt;bold&lt;/b&gt; dog",                           # entities that unescape to markup
    "\ufb01sh and chips",                                   # the fi ligature
    "\uff23\uff21\uff34 in a hat",                          # full-width letters
    "caf\u00c3\u00a9 at night",                              # mojibake (UTF-8 read as Latin-1)
    "cafe\u0301 latte art",                                 # a combining accent (NFC)
    "  many\t spaces \n and\u00a0nbsp  ",                    # whitespace of every kind
    "UPPER Case MiXeD",
    "\u00fcber-cool na\u00efve r\u00e9sum\u00e9",
]


def clip_tokens() -> dict:
    from hpsv2.src.open_clip import get_tokenizer

    tokenizer = get_tokenizer("ViT-H-14")
    return {"prompts": NON_ASCII_PROMPTS, "input_ids": tokenizer(NON_ASCII_PROMPTS).tolist()}


def main() -> int:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("tests/golden"))
    args = ap.parse_args()
    ops = define_torchvision_ops()  # keep it alive: a collected Library takes its definitions with it
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (args.out / "hpsv2.json").write_text(json.dumps(hpsv2_golden()) + "\n")
        print("hpsv2.json written", file=sys.stderr)
        (args.out / "imagereward.json").write_text(json.dumps(imagereward_golden(tmp)) + "\n")
        print("imagereward.json written", file=sys.stderr)
        (args.out / "clip_tokens.json").write_text(json.dumps(clip_tokens(), ensure_ascii=True) + "\n")
        print("clip_tokens.json written", file=sys.stderr)
        with gzip.open(args.out / "full_keys.json.gz", "wt") as f:
            json.dump(full_keys(tmp), f)
        print("full_keys.json.gz written", file=sys.stderr)
    del ops
    return 0


if __name__ == "__main__":
    sys.exit(main())
