"""LoRA checkpoints: saved alone (no base_layer keys), reloaded exactly."""

import json

import pytest
import torch
from safetensors import safe_open

from bench.train.backbone import build_backbone
from bench.errors import BenchError


def _eps(bb, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    cond, uncond = bb.encode_prompts(["cat", "dog"])
    with torch.no_grad():
        return bb.predict_noise(x, bb.timesteps[1], cond, uncond)


def test_lora_round_trip(backbone, tiny_dir, tmp_path):
    with torch.no_grad():
        for p in backbone.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "lora.safetensors"
    backbone.save_lora(path)
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["bench"])  # one key: the file's bytes do not depend on a hash map's order
        assert meta["rank"] == 4 and meta["format"] == "bench-lora"
    assert keys and all("lora_A" in k or "lora_B" in k for k in keys)
    assert not any("base_layer" in k for k in keys)
    # one key per LoRA matrix: 8 attention modules x 4 projections x (A, B) in the tiny UNet
    assert len(keys) == len(backbone.trainable_parameters()) == 64
    assert sum("lora_A" in k for k in keys) == 32

    fresh = build_backbone(tiny_dir, num_steps=5, guidance_scale=5.0)
    before = _eps(fresh)  # no LoRA yet: the pretrained model
    fresh.load_lora(path)  # adds the adapter with the saved rank, then loads
    torch.testing.assert_close(_eps(fresh), _eps(backbone), rtol=0, atol=0)
    assert (before - _eps(backbone)).abs().max() > 1e-4  # the perturbation mattered
    # the base weights are untouched by loading
    for (n1, p1), (n2, p2) in zip(fresh.unet.named_parameters(), backbone.unet.named_parameters()):
        if "lora_" not in n1:
            torch.testing.assert_close(p1, p2, rtol=0, atol=0)


def test_zero_lora_is_the_pretrained_model(tiny_dir, backbone):
    plain = build_backbone(tiny_dir, num_steps=5, guidance_scale=5.0)
    torch.testing.assert_close(_eps(plain), _eps(backbone), rtol=0, atol=1e-6)  # B = 0 at init


def test_refuses_foreign_files(tmp_path, backbone):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(BenchError, match="not a bench LoRA"):
        backbone.load_lora(tmp_path / "other.safetensors")
