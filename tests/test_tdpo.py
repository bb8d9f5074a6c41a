"""TDPO / TDPO-R: temporal rewards, losses, neuron states and resets, loop shape, variants end to end."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from bench.train import neurons
from methods.ddpo import ppo_clipped_loss
from methods.tdpo import KLController, TemporalCritic, clipped_value_loss, kl_penalty, reset_period, temporal_rewards
from tests.conftest import run_main
from tests.helpers import register_counting_reward

TDPO_VARIANTS = ["tdpo", "tdpo-r", "tdpo-kl", "tdpo-reset-all", "tdpo-reset-dormant", "tdpo-r-leaky",
                 "tdpo-policy-reset-dormant", "tdpo-policy-reset-active"]


# ------------------------------------------------------------------ temporal rewards and losses
def test_temporal_rewards_hand_built_batch():
    norm = np.array([1.0, -1.0])
    residuals = np.array([[0.5, 0.2], [0.0, -0.4]])
    returns, temporal = temporal_rewards(norm, residuals, normalize=False)
    # gamma = 1 and no penalty: every step's return is the normalised final reward
    assert returns.tolist() == [[1.0, 1.0], [-1.0, -1.0]]
    np.testing.assert_allclose(temporal, [[0.5, 0.8], [-1.0, -0.6]])
    _, z = temporal_rewards(norm, residuals)
    # global z-score over all 4 values: mean -0.075, population std sqrt(2.2275 / 4)
    np.testing.assert_allclose(z, (np.array([[0.5, 0.8], [-1.0, -0.6]]) + 0.075) / (math.sqrt(2.2275 / 4) + 1e-8))


def test_temporal_rewards_with_step_penalty_and_discount():
    norm = np.array([2.0])
    penalty = np.array([[-0.1, -0.2, -0.3]])
    returns, temporal = temporal_rewards(norm, np.zeros((1, 3)), penalty, gamma=0.5, normalize=False)
    # last step: 2 - 0.3 = 1.7; middle: -0.2 + 0.5*1.7 = 0.65; first: -0.1 + 0.5*0.65 = 0.225
    np.testing.assert_allclose(returns, [[0.225, 0.65, 1.7]])
    np.testing.assert_allclose(temporal, returns)


def test_kl_penalty_types_and_controller():
    lp, ref = np.array([[0.3, -0.2]]), np.array([[0.1, 0.1]])
    np.testing.assert_allclose(kl_penalty(lp, ref, "clip"), [[0.2, 0.0]])
    np.testing.assert_allclose(kl_penalty(lp, ref, "kl"), [[0.2, -0.3]])
    np.testing.assert_allclose(kl_penalty(lp, ref, "square"), [[0.02, 0.045]])
    np.testing.assert_allclose(kl_penalty(lp, ref, "approx"), [[math.exp(0.2) - 1.2, math.exp(-0.3) - 0.7]])
    fixed = KLController(0.2)
    fixed.update(5.0, 100)
    assert fixed.value == 0.2
    adaptive = KLController(0.2, target=1.0, horizon=1000)
    adaptive.update(2.0, 100)  # error clipped to +0.2: 0.2 * (1 + 0.2 * 100 / 1000)
    assert adaptive.value == pytest.approx(0.204)


def test_policy_loss_hand_computed():
    logp = torch.log(torch.tensor([1.5, 0.5]))
    old = torch.zeros(2)
    adv = torch.tensor([2.0, -1.0])
    loss, _, clipfrac = ppo_clipped_loss(logp, old, adv, clip_range=0.1, adv_clip_max=math.inf)
    # sample 1: max(-2*1.5, -2*1.1) = -2.2; sample 2: max(1*0.5, 1*0.9) = 0.9
    assert loss.item() == pytest.approx((-2.2 + 0.9) / 2)
    assert clipfrac.item() == 1.0
    # TDPO does not clip advantages: a large advantage passes through unchanged
    big, _, _ = ppo_clipped_loss(torch.zeros(1), torch.zeros(1), torch.tensor([50.0]), 0.1, math.inf)
    assert big.item() == pytest.approx(-50.0)


def test_tdpo_logs_the_reference_approx_kl_and_clipfrac():
    from methods.tdpo import tdpo_policy_loss

    logp = torch.log(torch.tensor([1.5, 0.5, 1.05]))
    adv = torch.tensor([2.0, -1.0, 1.0])
    loss, kl, clipfrac = tdpo_policy_loss(logp, torch.zeros(3), adv, clip_range=0.1)
    # losses: max(-3, -2.2) = -2.2; max(0.5, 0.9) = 0.9; max(-1.05, -1.05) = -1.05 (inside the clip)
    assert loss.item() == pytest.approx((-2.2 + 0.9 - 1.05) / 3)
    # approx_kl = mean((r - 1) - log r): the reference's k3 estimator, not DDPO's 0.5 * mean(log r ^ 2)
    expected = sum((r - 1) - math.log(r) for r in (1.5, 0.5, 1.05)) / 3
    assert kl.item() == pytest.approx(expected, rel=1e-5)
    assert kl.item() != pytest.approx(0.5 * sum(math.log(r) ** 2 for r in (1.5, 0.5, 1.05)) / 3, rel=1e-3)
    # clipfrac: rows whose clipped loss is the larger (the first two), not |ratio - 1| > eps (which counts 2 too
    # here, but would count a row with A = 0 or the unclipped side binding)
    assert clipfrac.item() == pytest.approx(2 / 3)
    _, _, cf = tdpo_policy_loss(torch.log(torch.tensor([1.5])), torch.zeros(1), torch.tensor([-1.0]), 0.1)
    assert cf.item() == 0.0  # ratio outside the clip range, but the unclipped loss is the larger one


def test_value_loss_hand_computed():
    value, old, target = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.1]), torch.tensor([2.0, 0.05])
    loss, frac = clipped_value_loss(value, old, target, clip_range=0.2)
    # sample 1: V_clip = 0.7 -> max(1.0, 1.69) = 1.69; sample 2: inside the clip range -> 0.0025
    assert loss.item() == pytest.approx(0.5 * (1.69 + 0.0025) / 2)
    assert frac.item() == 0.5


def test_reset_period_is_resolved_by_the_scale_rule_not_guessed():
    assert reset_period("7") == 7 and reset_period(0) == 1
    with pytest.raises(ValueError, match="unresolved"):
        reset_period("auto")


def test_resets_in_a_run_skip_the_one_due_after_the_last_epoch():
    from bench.spec.scale import resets_in_run

    # resets after epochs 5, 10, ..., 35 of 40 (the one after epoch 40 has no epoch to act on)
    assert resets_in_run(5, 40) == 7 and resets_in_run(5, 41) == 8 and resets_in_run(20, 20) == 0
    assert resets_in_run(1, 10) == 9


# ------------------------------------------------------------------ critic and neuron states
def test_critic_matches_the_reference_shape():
    critic = TemporalCritic(768, generator=torch.Generator().manual_seed(0))
    kinds = [(type(m).__name__, getattr(m, "out_features", getattr(m, "p", None))) for m in critic.layers]
    assert kinds == [("Linear", 1024), ("Dropout", 0.2), ("Linear", 128), ("Dropout", 0.2), ("Linear", 64),
                     ("Dropout", 0.1), ("Linear", 16), ("Linear", 1)]  # no activation functions
    assert sum(m.out_features for m in critic.hidden().values()) == 1232
    w = torch.cat([lin.weight.flatten() for lin in critic.linears()])
    assert w.std().item() == pytest.approx(1 / 769, rel=0.02)  # N(0, 1/(D+1)) for every layer
    assert all(lin.bias.abs().sum() == 0 for lin in critic.linears())
    critic.eval()
    x = torch.randn(5, 768)
    lin = critic.linears()
    manual = x
    for layer in lin:  # purely linear in eval mode
        manual = manual @ layer.weight.T + layer.bias
    torch.testing.assert_close(critic(x), manual.squeeze(-1))


def test_activation_scores_and_masks_on_known_weights():
    layer = nn.Linear(2, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        layer.bias.zero_()
    x = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    with neurons.record_outputs({"l": layer}) as outs:
        layer(x)
    # outputs [[1, 2, -3], [3, 1, -4]] -> relu -> mean |.| = [2, 1.5, 0], layer mean 3.5/3
    scores = neurons.activation_scores(outs["l"])
    torch.testing.assert_close(scores, torch.tensor([2.0, 1.5, 0.0]) / (3.5 / 3 + 1e-9))
    assert neurons.dormant_masks(outs, 0.0)["l"].tolist() == [False, False, True]
    assert neurons.dormant_masks(outs, 1.5)["l"].tolist() == [False, True, True]
    # leaky ReLU (slope 0.01): the third neuron scores 0.035 / mean, no longer dormant at threshold 0
    leaky = neurons.activation_scores(outs["l"], "leaky_relu")
    torch.testing.assert_close(leaky, torch.tensor([2.0, 1.5, 0.035]) / ((3.535) / 3 + 1e-9))
    assert not neurons.dormant_masks(outs, 0.0, "leaky_relu")["l"].any()
    assert neurons.dormant_fraction({"a": torch.tensor([True, False]), "b": torch.tensor([True, True, False, False])}) \
        == pytest.approx(0.5)


def test_dormant_overlap_counts_neurons_not_elements():
    prev = {"a": torch.tensor([True, True, False, False]), "b": torch.tensor([False, True])}
    cur = {"a": torch.tensor([True, False, True, False]), "b": torch.tensor([False, True])}
    # dormant before: 3, now: 3, in both: 2 -> 2/3 (the reference's numel count would say 100%)
    assert neurons.dormant_overlap(prev, cur) == pytest.approx(2 / 3)
    assert neurons.dormant_overlap(None, cur) is None
    assert neurons.dormant_overlap({"a": torch.zeros(2, dtype=bool)}, {"a": torch.tensor([True, False])}) is None


def _trained_chain():
    torch.manual_seed(0)
    chain = [nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(2, 1)]
    params = [p for lin in chain for p in lin.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-2)
    x = torch.randn(8, 3)
    for _ in range(2):
        out = chain[2](chain[1](chain[0](x)))
        out.pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return chain, opt


def test_reset_changes_exactly_the_masked_rows_and_columns():
    chain, opt = _trained_chain()
    before = {id(p): p.detach().clone() for lin in chain for p in lin.parameters()}
    moments = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for lin in chain for p in lin.parameters()}
    masks = [torch.tensor([True, False, True, False]), torch.tensor([False, True])]
    n = neurons.reset_linear_neurons(chain, masks, std=0.5, optimizer=opt, generator=torch.Generator().manual_seed(1))
    assert n == 3
    # expected changed entries, per parameter
    w0 = torch.zeros(4, 3, dtype=bool); w0[[0, 2]] = True          # incoming rows of layer-0 neurons 0 and 2
    b0 = torch.tensor([True, False, True, False])
    w1 = torch.zeros(2, 4, dtype=bool); w1[:, [0, 2]] = True; w1[1] = True  # outgoing columns + incoming row of neuron 1
    b1 = torch.tensor([False, True])
    w2 = torch.tensor([[False, True]])                              # outgoing column of layer-1 neuron 1
    b2 = torch.tensor([False])
    expected = [w0, b0, w1, b1, w2, b2]
    for p, changed in zip([p for lin in chain for p in lin.parameters()], expected):
        old = before[id(p)]
        assert torch.equal(p.detach()[~changed], old[~changed])
        if p.ndim == 2:
            assert (p.detach()[changed] != old[changed]).all()
        else:
            assert (p.detach()[changed] == 0).all()
        for key in ("exp_avg", "exp_avg_sq"):
            state = opt.state[p][key]
            assert (state[changed] == 0).all() and torch.equal(state[~changed], moments[id(p)][key][~changed])
            assert (moments[id(p)][key][~changed] != 0).all()
        assert opt.state[p]["step"] == moments[id(p)]["step"]  # the step count is kept


def test_lora_neuron_reset(backbone):
    layers = neurons.lora_layers(backbone.unet)
    assert layers and all(rank == 4 for _, _, rank in layers.values())
    name, (down, up, _) = next(iter(layers.items()))
    with torch.no_grad():
        up.weight.fill_(0.5)
    a_before, b_before = down.weight.detach().clone(), up.weight.detach().clone()
    masks = {n: torch.zeros(4, dtype=bool) for n in layers}
    masks[name] = torch.tensor([False, True, False, True])
    assert neurons.reset_lora_neurons(layers, masks, None, torch.Generator().manual_seed(0)) == 2
    assert torch.equal(down.weight[[0, 2]], a_before[[0, 2]]) and not torch.equal(down.weight[[1, 3]], a_before[[1, 3]])
    assert (up.weight[:, [1, 3]] == 0).all() and torch.equal(up.weight[:, [0, 2]], b_before[:, [0, 2]])


# ------------------------------------------------------------------ the adapter on the tiny backbone
def _spec(method, num_steps, budget, samples_per_epoch, train_batch_size, multiplier=8.0, **hp):
    from tests.helpers import make_spec

    return make_spec(method, num_steps=num_steps, samples_per_epoch=samples_per_epoch, budget=budget,
                     train_batch_size=train_batch_size, sample_batch_size=4, multiplier=multiplier,
                     overrides={k: str(v) for k, v in hp.items()})


def test_exactly_100_optimizer_steps_per_epoch_at_T50(tmp_path, monkeypatch):
    """4 samples, T=50, the reference's updates per query: 200 sample-steps in updates of 2 -> 100 steps of each optimizer."""
    from bench.train.runner import train_run

    register_counting_reward()
    calls = []
    real_step = torch.optim.AdamW.step

    def counting_step(self, *a, **k):
        calls.append(len(self.param_groups[0]["params"]))
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    # S = 4 is 1/64 of the reference epoch: m = 64 keeps its 100 updates per epoch (2 samples x 1 step each)
    spec = _spec("tdpo", num_steps=50, budget=4, samples_per_epoch=4, train_batch_size=1, multiplier=64.0)
    train_run(spec, tmp_path, progress=False)
    sizes = sorted(set(calls))
    assert len(sizes) == 2  # two optimizers: LoRA and critic (10 parameter tensors)
    assert [calls.count(s) for s in sizes] == [100, 100]
    assert 10 in sizes


def test_critic_embeds_the_decoded_state_before_every_step(backbone):
    from methods.tdpo import TDPO
    from tests.helpers import CountingReward

    encode = CountingReward().image_encoder()
    seen = []

    class Reward:
        name = "probe"

        def image_encoder(self):
            return lambda images: seen.append(len(images)) or encode(images)

    spec = _spec("tdpo", 5, 4, 4, 2)
    ctx = type("Ctx", (), dict(spec=spec, hp=spec.hp, backbone=backbone, device=backbone.device, world_size=1,
                               reward=Reward()))()
    method = TDPO(ctx)
    traj = backbone.sample(["cat", "dog"], generator=torch.Generator().manual_seed(0), batch_size=2)
    seen.clear()
    embeds = method.embed_states(traj)
    assert embeds.shape == (2, 5, 48) and sum(seen) == 10  # x_T .. x_1: T states per sample, x_0 not embedded
    for j in range(5):
        torch.testing.assert_close(embeds[:, j], encode(backbone.decode(traj.latents[:, j])))


def test_reference_log_probs_match_sampling_until_lora_moves(backbone):
    """The KL reference (adapters disabled) equals the sampling policy while LoRA's B is zero."""
    from methods.tdpo import TDPO

    traj = backbone.sample(["cat", "dog"], generator=torch.Generator().manual_seed(0), batch_size=2)
    fake = type("M", (), {"ctx": type("C", (), {"backbone": backbone, "spec": type("S", (), {"num_steps": 5})})})()
    ref = TDPO.reference_log_probs(fake, traj)
    torch.testing.assert_close(ref, traj.log_probs, atol=1e-5, rtol=0)
    with torch.no_grad():
        for _, up, _ in neurons.lora_layers(backbone.unet).values():
            up.weight.normal_(0, 0.1)
    assert (TDPO.reference_log_probs(fake, traj) - ref).abs().max() < 1e-5  # still the pretrained policy
    new = torch.stack([backbone.log_prob(traj, torch.full((2,), j)) for j in range(5)], 1)
    assert (new - ref).abs().max() > 1e-4


# ------------------------------------------------------------------ every variant end to end on the default backbone
@pytest.mark.heavy
def test_every_tdpo_variant_end_to_end_on_toy(tmp_path):
    args = ["run", "--methods", ",".join(TDPO_VARIANTS), "--reward", "aesthetic", "--budget", "16",
            "--num-steps", "2", "--samples-per-epoch", "8", "--train-batch-size", "8", "--num-checkpoints", "2",
            "--set", "reset_every=1",  # rule 7 would give 20 epochs (1,000 critic updates) and no reset in 2
            "--out", str(tmp_path), "--no-progress", "--no-eval",
            "--workers", "1"]  # in this process: a grid worker would pay the imports again (test_grid covers them)
    r = run_main(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    import duckdb

    con = duckdb.connect(str(tmp_path / "bench.duckdb"), read_only=True)
    runs = dict(con.execute("select method, status from runs").fetchall())
    assert runs == {m: "finished" for m in TDPO_VARIANTS}
    marks = con.execute("select r.method, list(c.reward_queries order by c.reward_queries) from checkpoints c "
                        "join runs r using (run_id) group by 1").fetchall()
    assert all(m == [0, 8, 16] for _, m in marks) and len(marks) == 8
    stats = con.execute("""
        select r.method, t.epoch, t.metric, t.value from train_metrics t join runs r using (run_id)
        where t.metric in ('critic_dormant_fraction', 'policy_dormant_fraction', 'critic_dormant_overlap',
                           'critic_neurons_reset', 'policy_neurons_reset')""").fetchall()
    con.close()
    got = {(m, e, k): v for m, e, k, v in stats}
    for m in TDPO_VARIANTS:
        for e in (1, 2):
            assert 0.0 <= got[(m, e, "critic_dormant_fraction")] <= 1.0
            assert 0.0 <= got[(m, e, "policy_dormant_fraction")] <= 1.0
        # period 1: neurons selected after epoch 1, reset before epoch 2
        assert got[(m, 1, "critic_neurons_reset")] == got[(m, 1, "policy_neurons_reset")] == 0
        reset_c = got[(m, 2, "critic_neurons_reset")]
        reset_p = got[(m, 2, "policy_neurons_reset")]
        if m == "tdpo-reset-all":
            assert reset_c == 1232 and reset_p == 0
        elif m == "tdpo-r-leaky":  # threshold 0.1: mostly-negative neurons are dormant, unlike at threshold 0
            assert 0 < reset_c < 1232 and reset_p == 0
        elif m in ("tdpo-r", "tdpo-reset-dormant"):
            assert 0 < reset_c < 1232 and reset_p == 0
        elif m.startswith("tdpo-policy-reset"):
            assert reset_c == 0 and reset_p > 0
        else:
            assert reset_c == 0 and reset_p == 0
    # the critic's active and dormant neurons partition it: the two reset variants reset complementary sets
    assert got[("tdpo-r", 2, "critic_neurons_reset")] + got[("tdpo-reset-dormant", 2, "critic_neurons_reset")] == 1232
    # overlap needs an earlier epoch: none after epoch 1, a fraction after epoch 2
    assert ("tdpo", 1, "critic_dormant_overlap") not in got
    assert 0.0 <= got[("tdpo", 2, "critic_dormant_overlap")] <= 1.0


def test_checkpoints_hold_the_trained_policy_not_a_fresh_reset(tmp_path):
    """With a reset every epoch, the checkpoint after epoch 1 is the trained LoRA: resetting the active
    policy neurons zeroes their B columns, which a checkpoint taken after the reset would show."""
    import json

    from safetensors.torch import load_file

    from bench.train.runner import train_run

    register_counting_reward()
    spec = _spec("tdpo-policy-reset-active", num_steps=3, budget=16, samples_per_epoch=8, train_batch_size=8,
                 reset_every=1, lr=1e-2)
    spec = type(spec)(**{**spec.__dict__, "num_checkpoints": 2})
    train_run(spec, tmp_path, progress=False)
    run_dir = tmp_path / "runs" / spec.run_name
    ckpts = [json.loads(line) for line in (run_dir / "checkpoints.jsonl").read_text().splitlines()]
    assert [c["reward_queries"] for c in ckpts] == [0, 8, 16]
    state = load_file(str(run_dir / ckpts[1]["path"]))
    ups = [v for k, v in state.items() if "lora_B" in k]
    nonzero_cols = sum(int((u.abs().sum(0) > 0).sum()) for u in ups)
    total_cols = sum(u.shape[1] for u in ups)
    assert nonzero_cols == total_cols  # every rank dimension trained, none zeroed by a reset
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resets = {m["epoch"]: m["value"] for m in metrics if m["metric"] == "policy_neurons_reset"}
    assert resets[1] == 0 and resets[2] > 0.5 * total_cols  # selected after epoch 1, applied before epoch 2


def test_kl_variant_logs_its_penalty_to_return_ratio(tmp_path):
    import json

    from bench.train.runner import train_run

    register_counting_reward()
    spec = _spec("tdpo-kl", num_steps=3, budget=16, samples_per_epoch=8, train_batch_size=8, lr=1e-2)
    assert spec.hp["kl_penalty_coef"] == pytest.approx(0.1 / (0.2 * 3 * spec.hp["clip_range"]))
    train_run(spec, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "runs" / spec.run_name / "metrics.jsonl").read_text().splitlines()]
    got = {(r["epoch"], r["metric"]): r["value"] for r in rows}
    # epoch 1 samples the pretrained policy: only float noise of the recomputed log-probs (~1e-6) is penalised
    assert got[(1, "kl_penalty_ratio")] < 1e-3
    assert got[(2, "kl_penalty_ratio")] > 10 * got[(1, "kl_penalty_ratio")] and got[(2, "mean_kl")] != 0


def test_mismatched_critic_encoder_option(backbone):
    """`critic_encoder=NAME` embeds with another reward's encoder (paper Appendix E); the
    default follows the training reward."""
    from methods.tdpo import TDPO
    from tests.helpers import CountingReward

    def make(**hp):
        spec = _spec("tdpo", 5, 4, 4, 2, **hp)
        ctx = type("Ctx", (), dict(spec=spec, hp=spec.hp, backbone=backbone, device=backbone.device, world_size=1,
                                   reward=CountingReward()))()
        return TDPO(ctx)

    own = make()
    assert own.critic.linears()[0].in_features == 48  # the counting reward's 48-d pooled pixels
    other = make(critic_encoder="aesthetic")  # the tiny-random aesthetic CLIP: 32-d projections
    assert other.critic.linears()[0].in_features == 32
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(other.encoder(images).norm(dim=-1), torch.ones(2), atol=1e-5)  # L2-normalised features
