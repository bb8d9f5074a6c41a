"""Rewards: JPEG sizes by the reference recipe, and the aesthetic predictor on a
tiny random CLIPModel + LAION-shaped head, loaded from disk."""

import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from bench.errors import BenchError
from metrics.aesthetic import AestheticHead, load_aesthetic_from, load_head, write_tiny_random_aesthetic
from metrics.jpeg import JpegCompressibility, JpegIncompressibility


def test_jpeg_size_reference_recipe():
    torch.manual_seed(0)
    images = torch.rand(3, 3, 32, 32)
    images[1] = 0.5  # flat image compresses well
    expected = []
    for img in images:
        arr = (img * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=95)
        expected.append(len(buf.getvalue()) / 1000)
    inc = JpegIncompressibility().score(images, ["a"] * 3)
    np.testing.assert_allclose(inc.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(JpegCompressibility().score(images, ["a"] * 3).numpy(), -np.array(expected), rtol=1e-6)
    assert inc[1] < inc[0] - 0.5  # flat image is much smaller


@pytest.fixture(scope="module")
def tiny_aesthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aes")
    clip_dir, head_path = write_tiny_random_aesthetic(folder, seed=3)
    return clip_dir, head_path, load_aesthetic_from(clip_dir, head_path)


def test_head_matches_laion_state_dict_names():
    keys = set(AestheticHead(768).state_dict())
    assert keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    assert AestheticHead(768).layers[0].weight.shape == (1024, 768)


def test_aesthetic_score_equals_manual_pipeline(tiny_aesthetic):
    from transformers import CLIPImageProcessorPil

    _, _, reward = tiny_aesthetic
    torch.manual_seed(1)
    images = torch.rand(4, 3, 32, 32)
    # independent route: transformers' own (PIL) CLIP processor on uint8 images + get_image_features
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    uint8 = [Image.fromarray((im * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()) for im in images]
    pixels = proc(images=uint8, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = reward.clip.get_image_features(pixel_values=pixels).pooler_output
        feats = feats / feats.norm(dim=-1, keepdim=True)
        expected = reward.head(feats).squeeze(-1)
    got = reward.score(images, ["cat"] * 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert got.std() > 0  # different images, different scores
    # the image encoder hands the TDPO critic exactly the features the head sees
    torch.testing.assert_close(reward.head(reward.image_encoder()(images)).squeeze(-1), expected, rtol=1e-4, atol=1e-4)


def test_differentiable_path_matches_and_has_gradients(tiny_aesthetic):
    _, _, reward = tiny_aesthetic
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    s = reward.score_differentiable(images, ["a", "b"])
    s.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    # same size, no resize: differs from the reference path only by uint8 rounding
    torch.testing.assert_close(s.detach(), reward.score(images.detach(), ["a", "b"]), rtol=0, atol=2e-2)


def test_official_pth_head_loads_with_weights_only(tmp_path):
    head = AestheticHead(32)
    torch.save(head.state_dict(), tmp_path / "head.pth")
    loaded = load_head(tmp_path / "head.pth", 32)
    x = torch.randn(3, 32)
    torch.testing.assert_close(loaded.eval()(x), head.eval()(x))
    with pytest.raises(BenchError, match="not a LAION-shaped"):
        load_head(tmp_path / "head.pth", 48)


def test_missing_weights_give_one_line_errors(tmp_path, monkeypatch):
    from bench.spec.weights import aesthetic_paths

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("BENCH_AESTHETIC_CLIP", raising=False)
    with pytest.raises(BenchError, match="openai/clip-vit-large-patch14.*not available offline"):
        aesthetic_paths("sd")
    (tmp_path / "clip").mkdir()
    monkeypatch.setenv("BENCH_AESTHETIC_CLIP", str(tmp_path / "clip"))
    monkeypatch.setenv("BENCH_AESTHETIC_HEAD", str(tmp_path / "nope.pth"))
    with pytest.raises(BenchError, match="aesthetic head weights not found at .*nope.pth") as e:
        aesthetic_paths("sd")
    assert "\n" not in str(e.value)
