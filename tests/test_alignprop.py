"""AlignProp: truncated backpropagation, the loss, differentiable preprocessing."""

import types

import numpy as np
import pytest
import torch

from tests.helpers import make_spec


def make_alignprop(backbone, k_min=1, checkpointing=True, lr=1e-3, k_group=8, reward_name="aesthetic"):
    from methods.alignprop import AlignProp

    T = len(backbone.timesteps)
    hp = dict(make_spec("alignprop", num_steps=T, samples_per_epoch=8, budget=8).hp)
    hp.update(gradient_checkpointing=checkpointing, k_min=k_min, lr=lr, k_group=k_group)
    ctx = types.SimpleNamespace(
        hp=hp, backbone=backbone, world_size=1, rng=np.random.default_rng(0),
        spec=types.SimpleNamespace(num_steps=T, samples_per_epoch=8, train_batch_size=4),
        reward=types.SimpleNamespace(name=reward_name),
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


def test_k_is_drawn_once_per_group_uniformly(backbone):
    ap = make_alignprop(backbone, k_group=4)
    T = len(backbone.timesteps)
    k = ap.draw_k(10)  # groups of 4, 4 and 2 chains
    assert len(set(k[:4].tolist())) == len(set(k[4:8].tolist())) == len(set(k[8:].tolist())) == 1
    draws = np.concatenate([ap.draw_k(4)[:1].numpy() for _ in range(5000)])
    counts = np.bincount(draws, minlength=T + 1)
    assert counts[0] == 0 and set(np.nonzero(counts)[0]) == set(range(1, T + 1))
    assert np.allclose(counts[1:] / len(draws), 1 / T, atol=0.03)
    ap1 = make_alignprop(backbone, k_min=T)
    assert set(ap1.draw_k(20).tolist()) == {T}


def test_loss_is_alignprops_absolute_loss(backbone):
    ap = make_alignprop(backbone)
    assert ap.target == 10.0  # the aesthetic reward's registered max_score
    # A0/A1: |r - 10| averaged over the batch * 0.01; above the target it pulls back down
    r = torch.tensor([6.0, 7.0, 8.5, 10.5], requires_grad=True)
    loss = ap.loss(r)
    assert loss.item() == pytest.approx(0.01 * (4 + 3 + 1.5 + 0.5) / 4)
    loss.backward()
    torch.testing.assert_close(r.grad, torch.tensor([-1.0, -1.0, -1.0, 1.0]) * 0.01 / 4)
    # TRL's linear form keeps pushing up past the target
    from methods.alignprop import alignprop_loss
    r2 = r.detach().clone().requires_grad_(True)
    alignprop_loss(r2, 0.01, 10.0, "linear").backward()
    torch.testing.assert_close(r2.grad, torch.full((4,), -0.01 / 4))
    # a reward without a max_score falls back to the linear form
    assert make_alignprop(backbone, reward_name="test-counting-unregistered").form == "linear"


def test_fused_chains_have_the_gradient_of_separate_groups(backbone):
    """Two K-groups sampled in one batched chain (per-chain K) give the gradient of sampling
    each group on its own (per-chain generators make the noise independent of the batch)."""
    ap = make_alignprop(backbone)
    params = backbone.trainable_parameters()
    with torch.no_grad():
        for p in params:  # move LoRA off zero so every step's call matters
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.05)
    prompts = ["cat", "dog", "fish", "cow"]
    k = torch.tensor([1, 1, 3, 3])

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(4)]

    def loss_of(images):
        return images.pow(2).mean(dim=(1, 2, 3))
    fused = torch.autograd.grad(loss_of(ap.sample_with_grad(prompts, k, generator=gens())).mean(), params)
    g = gens()
    part1 = loss_of(ap.sample_with_grad(prompts[:2], k[:2], generator=g[:2])).mean() / 2
    part2 = loss_of(ap.sample_with_grad(prompts[2:], k[2:], generator=g[2:])).mean() / 2
    separate = torch.autograd.grad(part1 + part2, params)
    scale = max(float(a.abs().max()) for a in separate)
    assert scale > 0
    for a, b in zip(fused, separate):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * scale)


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
