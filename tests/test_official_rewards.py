"""Native HPSv2 and ImageReward against the official code's golden files (scripts/check_official_rewards.sh
wrote tests/golden/ from the official packages in a side environment), and the full-size key mappings."""

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden"
spec = importlib.util.spec_from_file_location("official", Path(__file__).parent.parent / "scripts" / "official_rewards.py")
official = importlib.util.module_from_spec(spec)
spec.loader.exec_module(official)  # only its weight rule and inputs: it imports nothing official at the top


def _state(golden):
    return {name: official.rule(name, tuple(shape), golden["seed"], i) for i, (name, shape) in enumerate(golden["keys"])}


def _images(case):
    arr = official.images(case["seed"], case["n"], case["h"], case["w"])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def test_hpsv2_scores_equal_the_official_code():
    from metrics.clip_bpe import clip_tokenizer
    from metrics.hpsv2 import HPSv2Reward, load_clip_from_open_clip

    g = json.loads((GOLDEN / "hpsv2.json").read_text())
    v, t = g["arch"]["vision"], g["arch"]["text"]
    arch = dict(vision=dict(hidden_size=v["width"], num_hidden_layers=v["layers"],
                            num_attention_heads=v["width"] // v["head_width"],
                            intermediate_size=int(v["width"] * v["mlp_ratio"]), patch_size=v["patch_size"],
                            image_size=v["image_size"]),
                text=dict(hidden_size=t["width"], num_hidden_layers=t["layers"], num_attention_heads=t["heads"],
                          intermediate_size=4 * t["width"], max_position_embeddings=t["context_length"],
                          vocab_size=t["vocab_size"]),
                projection_dim=g["arch"]["embed_dim"])
    reward = HPSv2Reward(load_clip_from_open_clip(_state(g), arch), clip_tokenizer())
    for case in g["cases"]:  # a 40x60 batch (resize of the longer side and zero padding) and a square one
        got = reward.score(_images(case), case["prompts"])
        np.testing.assert_allclose(got.numpy(), case["scores"], atol=1e-5, rtol=0)
        diff = reward.score_differentiable(_images(case), case["prompts"])  # the same images are on the uint8 grid
        np.testing.assert_allclose(diff.detach().numpy(), case["scores"], atol=1e-5, rtol=0)
    tok = clip_tokenizer()
    for ids, prompt in zip(g["token_ids"], official.PROMPTS):
        ours = tok(prompt).input_ids
        assert ours == ids[:len(ours)]  # open_clip pads with 0 after the end of text, transformers with 49407


def test_imagereward_scores_equal_the_official_code():
    from metrics.imagereward import blip_tokenizer, build

    g = json.loads((GOLDEN / "imagereward.json").read_text())
    v, t = g["arch"]["vision"], g["arch"]["text"]
    tok = blip_tokenizer(g["vocab"])
    model = build(_state(g), tok,
                  vision_cfg=dict(hidden_size=v["embed_dim"], num_hidden_layers=v["depth"],
                                  num_attention_heads=v["num_heads"], intermediate_size=4 * v["embed_dim"],
                                  patch_size=v["patch_size"], image_size=v["img_size"]),
                  text_cfg=dict(vocab_size=len(tok), **t))
    for case in g["cases"]:  # a 40x60 batch (shorter-side resize, centre crop) and a square one
        got = model.score(_images(case), case["prompts"])
        np.testing.assert_allclose(got.numpy(), case["scores"], atol=1e-5, rtol=0)
    assert tok(official.PROMPTS, padding="max_length", truncation=True, max_length=35).input_ids == g["token_ids"]
    # ReFL's differentiable path resizes the float tensor: close to the PIL path, and it has gradients
    x = _images(g["cases"][1]).requires_grad_(True)
    r = model.score_differentiable(x, g["cases"][1]["prompts"])
    np.testing.assert_allclose(r.detach().numpy(), g["cases"][1]["scores"], atol=5e-2)
    r.sum().backward()
    assert x.grad.abs().sum() > 0


def test_full_size_key_mappings_are_exact():
    """The real checkpoints' 686 (HPSv2 ViT-H-14) and 625 (ImageReward v1.0) names and shapes, recorded from
    the official models, map onto the transformers models with nothing missing, extra or mis-shaped."""
    from transformers import CLIPModel

    from metrics.aesthetic import AestheticHead
    from metrics.hpsv2 import VIT_H_14, clip_config, map_open_clip_state
    from metrics.imagereward import blip_models, map_imagereward_state

    full = json.load(gzip.open(GOLDEN / "full_keys.json.gz", "rt"))
    assert len(full["hpsv2_vit_h_14"]) == 686 and len(full["imagereward_v1"]) == 625
    meta = {k: torch.empty(s, device="meta") for k, s in full["hpsv2_vit_h_14"]}
    mapped = map_open_clip_state(meta)
    with torch.device("meta"):
        own = CLIPModel(clip_config(VIT_H_14)).state_dict()
    own = {k: v for k, v in own.items() if not k.endswith("position_ids")}
    assert set(mapped) == set(own)
    assert all(tuple(mapped[k].shape) == tuple(own[k].shape) for k in own)
    assert sum(v.numel() for v in mapped.values()) == pytest.approx(986.1e6, rel=1e-3)

    meta = {k: torch.empty(s, device="meta") for k, s in full["imagereward_v1"]}
    vision, text, head = map_imagereward_state(meta)
    with torch.device("meta"):
        v_model, t_model = blip_models()
        h_model = AestheticHead(768)
    for mine, model in ((vision, v_model), (text, t_model), (head, h_model)):
        own = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        assert set(mine) == set(own), (sorted(set(mine) ^ set(own))[:5])
        assert all(tuple(mine[k].shape) == tuple(own[k].shape) for k in own)


def test_unknown_checkpoint_keys_are_refused():
    from bench.errors import BenchError
    from metrics.hpsv2 import map_open_clip_state
    from metrics.imagereward import map_imagereward_state

    with pytest.raises(BenchError, match="no transformers counterpart"):
        map_open_clip_state({"visual.transformer.resblocks.0.ls_1.gamma": torch.zeros(2)})  # layer scale
    with pytest.raises(BenchError, match="no transformers counterpart"):
        map_imagereward_state({"blip.itm_head.weight": torch.zeros(2)})
