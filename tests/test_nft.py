"""DiffusionNFT ported to epsilon prediction (methods/nft.py), against the facts in
../shared/reference/grpo-nft-facts.md, on tiny tensors with hand-computed values."""

import math

import numpy as np
import pytest
import torch

from methods.nft import (adaptive_loss, implicit_predictions, nft_r, nft_row_loss, soft_update, velocity_penalty,
                         x0_from_eps)

HP = {"nft_beta": 1.0, "loss_weight": 5.0, "ref_coef": 1e-4}


def test_r_is_the_same_prompt_advantage_over_the_global_std():
    # prompt a: 1, 3 (mean 2); prompt b: 2, 2 (mean 2); global std (ddof 0) of [1, 3, 2, 2] = sqrt(0.5)
    r = nft_r(["a", "a", "b", "b"], [1.0, 3.0, 2.0, 2.0], adv_clip=5.0, std_eps=1e-4)
    a = 1 / (math.sqrt(0.5) + 1e-4)
    np.testing.assert_allclose(r, [0.5 - a / 10, 0.5 + a / 10, 0.5, 0.5], rtol=0, atol=1e-12)
    # an unbiased std would give 0.5 + 1 / sqrt(2/3) / 10 = 0.6225 for the second image, a per-prompt std 0 for b
    assert abs(r[1] - 0.6225) > 0.01
    # past |A| = 5 the clip maps to exactly 0 and 1: prompt p: 0, 10 (A = +-5 / 0.995), 98 images of prompt q at 0
    r = nft_r(["p", "p"] + ["q"] * 98, [0.0, 10.0] + [0.0] * 98)
    assert r[0] == 0.0 and r[1] == 1.0 and np.all(r[2:] == 0.5)


def test_x0_estimate_inverts_the_forward_noising():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    abar = torch.tensor([0.9, 0.3, 0.01])
    a = abar.reshape(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    torch.testing.assert_close(x0_from_eps(x_t, eps, abar), x0, rtol=1e-5, atol=1e-5)
    # by hand: abar 0.25, x_t 1, eps 1: (1 - sqrt(0.75)) / 0.5
    assert x0_from_eps(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([0.25])).item() == \
        pytest.approx((1 - math.sqrt(0.75)) / 0.5)


@pytest.mark.parametrize("beta", [1.0, 0.1])
def test_implicit_targets_are_the_same_mix_in_x0_space(beta):
    """x0hat(eps+-) equals the same beta-mix of x0hat(eps_theta) and x0hat(eps_old) (the port's identity)."""
    g = torch.Generator().manual_seed(1)
    x_t, th, old = (torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    abar = torch.tensor([0.7, 0.05], dtype=torch.float64)
    pos, neg = implicit_predictions(th, old, beta)
    torch.testing.assert_close(pos, beta * th + (1 - beta) * old)
    torch.testing.assert_close(neg, (1 + beta) * old - beta * th)
    x_th, x_old = x0_from_eps(x_t, th, abar), x0_from_eps(x_t, old, abar)
    torch.testing.assert_close(x0_from_eps(x_t, pos, abar), beta * x_th + (1 - beta) * x_old)
    torch.testing.assert_close(x0_from_eps(x_t, neg, abar), (1 + beta) * x_old - beta * x_th)


def test_adaptive_weight_by_hand_and_its_stop_gradient():
    x0_hat = torch.tensor([[1.0, -3.0]], requires_grad=True)
    loss = adaptive_loss(x0_hat, torch.zeros(1, 2))
    assert loss.item() == pytest.approx(5.0 / 2.0)  # mean square 5 over mean |.| 2
    loss.sum().backward()
    # the weight is a constant: d/dx of mean(x^2) / 2 = 2 x / (2 * 2)
    torch.testing.assert_close(x0_hat.grad, torch.tensor([[0.5, -1.5]]))
    # the weight's floor: errors 1e-7 and 0 -> (1e-14 / 2) / 1e-5
    assert adaptive_loss(torch.tensor([[1e-7, 0.0]]), torch.zeros(1, 2)).item() == pytest.approx(5e-10)


def test_old_policy_soft_update_by_hand():
    old, cur = [torch.zeros(2)], [torch.ones(2)]
    assert soft_update(old, cur, k=1, per_update=1e-3, most=0.5) == pytest.approx(1e-3)
    torch.testing.assert_close(old[0], torch.full((2,), 0.999))  # 0.001 * 0 + 0.999 * 1
    assert soft_update(old, [torch.full((2,), 3.0)], k=600, per_update=1e-3, most=0.5) == 0.5
    torch.testing.assert_close(old[0], torch.full((2,), 0.5 * 0.999 + 0.5 * 3.0))


def test_one_row_loss_and_gradient_by_hand():
    """abar 0.25 (sqrt 0.5, sqrt(1 - abar) = s): x_t = (0.5, 0.5), x0 = (1, 0), eps_old = 0, eps_theta = (1, -1),
    eps_ref = (0.5, 0.5), r = 0.75, beta 1: eps+ = eps_theta, eps- = -eps_theta."""
    s = math.sqrt(0.75)
    th = torch.tensor([[1.0, -1.0]], requires_grad=True)
    rows, parts = nft_row_loss(th, torch.zeros(1, 2), torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]]),
                               torch.tensor([[1.0, 0.0]]), torch.tensor([0.25]), torch.tensor([0.75]), HP)
    # x0hat(e) = (0.5 - s e) / 0.5; errors against x0
    e_pos = [(0.5 - s) / 0.5 - 1, (0.5 + s) / 0.5]
    e_neg = [(0.5 + s) / 0.5 - 1, (0.5 - s) / 0.5]
    w_pos, w_neg = sum(map(abs, e_pos)) / 2, sum(map(abs, e_neg)) / 2
    l_pos, l_neg = sum(e * e for e in e_pos) / 2 / w_pos, sum(e * e for e in e_neg) / 2 / w_neg
    w2 = (1 + math.sqrt(3)) ** 2  # 1 / (1 - t)^2 at abar 0.25: v-differences are eps-differences x (1 + sqrt(3))
    ref = 1e-4 * w2 * ((1 - 0.5) ** 2 + (-1 - 0.5) ** 2) / 2
    assert parts["loss_pos"].item() == pytest.approx(l_pos) and parts["loss_neg"].item() == pytest.approx(l_neg)
    assert rows.item() == pytest.approx(5 * (0.75 * l_pos + 0.25 * l_neg) + ref)
    rows.sum().backward()
    # d x0hat(eps+) / d eps_theta = -s / 0.5; d x0hat(eps-) / d eps_theta = +s / 0.5 (eps- = 2 eps_old - eps_theta)
    want = [5 * (0.75 * 2 * ep / 2 / w_pos * (-s / 0.5) + 0.25 * 2 * en / 2 / w_neg * (s / 0.5)) + 1e-4 * w2 * (t - 0.5)
            for ep, en, t in zip(e_pos, e_neg, (1.0, -1.0))]
    torch.testing.assert_close(th.grad, torch.tensor([want]), rtol=1e-5, atol=1e-6)


def test_the_rule_gives_updates_that_wait_for_their_data():
    """One update per 1152 / m images: at m = 24 and 8 images an epoch, one update per 48 images (the run's
    count after q queries is round(q / 48), half up); a plain method would get at least one per epoch."""
    from bench.spec.scale import updates_this_epoch

    per_query = 24 / 1152
    counts = [updates_this_epoch(8 * e, 8, per_query, least=0) for e in range(9)]
    # round(8/48 .. 72/48) = 0, 0, 1 (0.5 rounds up), 1, 1, 1, 1, 1, 2
    assert counts == [0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert [updates_this_epoch(8 * e, 8, per_query) for e in range(2)] == [1, 1]


def test_a_short_run_trains_on_what_waited_and_not_on_log_probs(tmp_path):
    """A run of 6 epochs of 8 at m = 72 (one update per 16 images): updates in epochs 1, 3 and 5 on 8, 16 and
    16 images; the deterministic rollouts have no log-probs (NaN, never used) and the weights move."""
    import json

    from bench.train.runner import train_run
    from tests.helpers import make_spec, register_counting_reward

    register_counting_reward()
    spec = make_spec("diffusion-nft", num_steps=3, samples_per_epoch=8, budget=48, multiplier=72.0,
                     overrides={"lr": "1e-2", "images_per_prompt": "4"})
    assert spec.hp["levels_per_sample"] == 2  # int(0.99 x 3)
    train_run(spec, tmp_path, progress=False)
    run = tmp_path / "runs" / spec.run_name
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    by = lambda m: [r["value"] for r in rows if r["metric"] == m]  # noqa: E731
    assert by("updates_this_epoch") == [1, 0, 1, 0, 1, 0]
    assert by("waiting_images") == [0, 8, 0, 8, 0, 8]
    assert by("update_images") == [8, 16, 16]
    assert all(0 <= v <= 1 for v in by("r_mean")) and by("old_decay") == pytest.approx([1e-3, 2e-3, 3e-3])
    ckpt = [json.loads(x) for x in (run / "checkpoints.jsonl").read_text().splitlines()]
    assert ckpt[-1]["gradient_updates"] == 3
    # compute by hand: 48 rollouts at guidance 1 (one pass) x T=3 = 144 forward rows; training 40 images x 2
    # levels = 80 rows, each theta forward+backward, old and base forward, at train guidance 1: 240 and 80
    assert (ckpt[-1]["unet_forward"], ckpt[-1]["unet_backward"]) == (144 + 240, 80)
    from bench.perf import sampling_rows_per_image

    assert sampling_rows_per_image(spec) == 3  # what the FLOP floor charges a rollout image (not 2 T)
    assert sampling_rows_per_image(make_spec("ddpo-2", num_steps=3, samples_per_epoch=8, budget=8)) == 6
    from safetensors.torch import load_file

    lora = load_file(str(run / ckpt[-1]["path"]))
    assert any(("lora_B" in k) and v.abs().max() > 0 for k, v in lora.items())  # B starts at zero


def test_in_all_with_the_guidance_decided_on_the_development_reward():
    """The declared rule chose g = 1 (README): both guidances stay the recipe's, and the method is in 'all'."""
    from bench.spec.catalog import methods
    from bench.spec.runspec import parse_methods

    every = parse_methods("all")
    assert every == methods.names() and "diffusion-nft" in every and len(every) == 15
    hp = methods.get("diffusion-nft").meta["hparams"]
    assert hp["rollout_guidance"] == 1.0 and hp["train_guidance"] == 1.0


def test_the_base_penalty_is_the_sources_velocity_form_on_identical_tensors():
    """The source penalises mean (v_theta - v_ref)^2 with the flow-matching velocity v = eps - x0. On the same
    random states, predictions and levels (abar from 0.999 to 0.005, the toy and SD grids' range), the port equals
    that formula with x0hat from each prediction, and the per-level weight is 1 / (1 - t)^2 for
    t = sqrt(1 - abar) / (sqrt(abar) + sqrt(1 - abar)), not 1 (the former eps-form penalty)."""
    g = torch.Generator().manual_seed(0)
    abar = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.0126, 0.005], dtype=torch.float64)
    x_t, e_th, e_ref = (torch.randn(6, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    v = [e - x0_from_eps(x_t, e, abar) for e in (e_th, e_ref)]
    want = (v[0] - v[1]).flatten(1).square().mean(1)
    torch.testing.assert_close(velocity_penalty(e_th, e_ref, abar), want, rtol=1e-12, atol=0)
    t = (1 - abar).sqrt() / (abar.sqrt() + (1 - abar).sqrt())
    eps_form = (e_th - e_ref).flatten(1).square().mean(1)
    torch.testing.assert_close(want / eps_form, 1 / (1 - t) ** 2, rtol=1e-10, atol=0)
    assert (want / eps_form)[0] < 1.1 and (want / eps_form)[4] > 80  # the toy grid's ends: about 1.08 and 88


def test_r_maps_like_the_sources_formula_at_any_advantage_clip():
    """r = 1/2 + 1/2 clip(A / c, -1, 1): at c = 2 an advantage beyond the clip maps to 0 or 1 exactly (the old
    hard-coded /10 gave 0.3 and 0.7), and inside it A / (2c) + 1/2."""
    r = nft_r(["a", "a", "b", "b"], [1.0, 3.0, 2.0, 2.0], adv_clip=2.0, std_eps=0.0)  # A = -1/0.707.., +1.414
    a = 1 / np.std([1.0, 3.0, 2.0, 2.0])
    np.testing.assert_allclose(r, [0.5 - a / 4, 0.5 + a / 4, 0.5, 0.5], rtol=0, atol=1e-12)
    r = nft_r(["p", "p"] + ["q"] * 98, [0.0, 10.0] + [0.0] * 98, adv_clip=2.0)
    assert r[0] == 0.0 and r[1] == 1.0
