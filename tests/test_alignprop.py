"""AlignProp: truncated backpropagation, the loss, differentiable preprocessing."""

import types

import numpy as np
import pytest
import torch

from bench.spec import resolve_hparams


def make_alignprop(backbone, k_min=1, k_max=None, checkpointing=True, lr=1e-3):
    from methods.alignprop import AlignProp

    T = len(backbone.timesteps)
    hp = dict(resolve_hparams("alignprop", {}, T))
    hp.update(gradient_checkpointing=checkpointing, k_min=k_min, k_max=k_max or T, lr=lr)
    ctx = types.SimpleNamespace(
        hp=hp, backbone=backbone, world_size=1, rng=np.random.default_rng(0),
        spec=types.SimpleNamespace(num_steps=T, samples_per_epoch=8, train_batch_size=4),
    )
    return AlignProp(ctx)


def probe_steps(backbone):
    """Multiply each step's noise prediction by a probe scalar (1.0): a probe's
    gradient is non-zero iff the loss depends on that step's UNet call."""
    T = len(backbone.timesteps)
    probes = torch.ones(T, requires_grad=True)
    index = {int(t): i for i, t in enumerate(backbone.timesteps)}
    orig = backbone.predict_noise

    def predict(latents, t, cond, uncond):
        return orig(latents, t, cond, uncond) * probes[index[int(torch.as_tensor(t).flatten()[0])]]
    backbone.predict_noise = predict
    return probes


@pytest.mark.parametrize("k", [1, 3])
def test_gradients_flow_through_the_last_k_steps_only(backbone, k):
    ap = make_alignprop(backbone)
    probes = probe_steps(backbone)
    T = len(backbone.timesteps)
    images = ap.sample_with_grad(["cat", "dog"], k, generator=torch.Generator().manual_seed(0))
    images.mean().backward()
    got = (probes.grad.abs() > 0).tolist()
    assert got == [False] * (T - k) + [True] * k
    lora = [p for p in backbone.trainable_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert lora, "no gradient reached the LoRA weights"


def test_checkpointing_gives_the_same_gradients(backbone):
    grads = []
    for ckpt in (True, False):
        ap = make_alignprop(backbone, checkpointing=ckpt)
        for p in backbone.trainable_parameters():
            p.grad = None
        images = ap.sample_with_grad(["cat", "fish"], 2, generator=torch.Generator().manual_seed(3))
        images.pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in backbone.trainable_parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7) and grads[0].abs().sum() > 0


def test_k_is_drawn_once_per_batch_uniformly(backbone):
    ap = make_alignprop(backbone)
    T = len(backbone.timesteps)
    draws = [ap.draw_k() for _ in range(5000)]
    counts = np.bincount(draws, minlength=T + 1)
    assert counts[0] == 0 and set(np.nonzero(counts)[0]) == set(range(1, T + 1))
    assert np.allclose(counts[1:] / len(draws), 1 / T, atol=0.03)
    ap1 = make_alignprop(backbone, k_min=T, k_max=T)
    assert {ap1.draw_k() for _ in range(20)} == {T}


def test_loss_is_the_reference_aesthetic_loss(backbone):
    ap = make_alignprop(backbone)
    # A0: |r - 10| summed over the batch / batch size * 0.01
    r = torch.tensor([6.0, 7.0, 8.5])
    assert ap.loss(r).item() == pytest.approx(0.01 * (4 + 3 + 1.5) / 3)


def test_differentiable_preprocessing_matches_the_scoring_path():
    from metrics.aesthetic import AestheticHead, AestheticReward, tiny_clip_config

    from transformers import CLIPModel

    torch.manual_seed(0)
    clip = CLIPModel(tiny_clip_config(image_size=24))  # 40x40 images are resized and cropped to 24
    reward = AestheticReward(clip, AestheticHead(clip.config.projection_dim))
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(6, 3, 40, 48, generator=g) * 255).round() / 255  # already on the uint8 grid
    ref = reward.score(images)
    x = images.clone().requires_grad_(True)
    diff = reward.score_differentiable(x)
    assert (diff.detach() - ref).abs().max().item() < 1e-3
    diff.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_an_update_raises_the_reward_on_the_same_noise(backbone):
    """One AlignProp step on brightness makes the same-noise images brighter."""
    ap = make_alignprop(backbone, lr=3e-2)
    prompts = ["cat", "dog", "fish", "cow"]

    def brightness():
        return ap.sample_with_grad(prompts, 3, generator=torch.Generator().manual_seed(5)).mean()
    before = brightness()
    ap.optimizer.zero_grad()
    ap.loss(ap.sample_with_grad(prompts, 3, generator=torch.Generator().manual_seed(5)).mean(dim=(1, 2, 3))).backward()
    ap.optimizer.step()
    with torch.no_grad():
        after = brightness()
    assert after.item() > before.item()
