"""A planned grid's FLOP floor: the rows `planned_counts` replays from a spec equal the compute counters a real
run of it ends with (tiny-random backbone, epochs cut at checkpoint marks), per method kind."""

import json

import pytest

from tests.helpers import make_spec, register_counting_reward


def _counted(spec, tmp_path) -> dict:
    from bench.train.runner import train_run

    train_run(spec, tmp_path, progress=False)
    rows = (tmp_path / "runs" / spec.run_name / "checkpoints.jsonl").read_text().splitlines()
    return json.loads(rows[-1])


def _spec(method, multiplier=8.0, **overrides):
    # T=3, S=4, budget 10 at marks 0, 5, 10: epochs of 4, 1, 4, 1 images (the cut at a mark is replayed too)
    return make_spec(method, num_steps=3, samples_per_epoch=4, budget=10, num_checkpoints=2, sample_batch_size=4,
                     multiplier=multiplier, overrides=overrides)


# NFT at multiplier 256: 0.22 updates per query, so updates after epochs 1 and 3 and the images of epochs 2 and 4
# wait in its buffer (the last ones never train); once at guidance 1 (one UNet pass per row), once guided
EXACT = [("ddpo-2", {}), ("ddpo-100", {}), ("tdpo", {}), ("tdpo-kl", {}), ("grpo", {}),
         ("diffusion-nft", {"multiplier": 256.0}), ("diffusion-nft", {"multiplier": 256.0, "train_guidance": "5.0"}),
         ("dense-dpo", {}), ("alignprop", {"k_min": "3"})]  # k_min = T: every chain keeps all T steps' gradients


@pytest.mark.parametrize("method,overrides", EXACT, ids=[f"{m}-{len(o)}" for m, o in EXACT])
def test_planned_rows_equal_the_counters(tmp_path, method, overrides):
    from bench.perf import planned_counts

    register_counting_reward()
    spec = _spec(method, **overrides)
    got = _counted(spec, tmp_path)
    plan = planned_counts(spec)
    assert plan["bound"] == ("expected" if method == "alignprop" else "exact")
    assert plan["sampling"][0] + plan["training"][0] == got["unet_forward"]
    assert plan["training"][1] == got["unet_backward"]
    assert plan["critic encoding"][2] == got["encoder_forwards"]
    assert sum(plan[k][3] for k in ("sampling", "training", "critic encoding")) == got["vae_decodes"]
    assert got["unet_forward"] > 0 and got["unet_backward"] > 0 and got["vae_decodes"] >= 10


def test_planned_rows_by_hand():
    """DDPO-2 at T=3 over epochs 4, 1, 4, 1: sampling 10 images x 3 steps x 2 (guided) = 60 forward rows; one
    inner epoch trains every sample-step once, 60 forward and 60 backward. AlignProp with k_min = 1: K ~ U{1..3},
    mean 2: 10 x 3 x 2 = 60 rows forward, 10 x 2 x 2 = 40 backward, and 40 recomputed by checkpointing. Each
    image is decoded once (AlignProp's in training); TDPO also decodes its critic's 10 x 3 states."""
    from bench.perf import planned_counts

    ddpo = planned_counts(_spec("ddpo-2"))
    assert (ddpo["sampling"], ddpo["training"]) == ([60, 0, 0, 10], [60, 60, 0, 0])
    align = planned_counts(_spec("alignprop"))
    assert (align["sampling"], align["training"], align["bound"]) == ([0, 0, 0, 0], [100, 40, 0, 10], "expected")
    tdpo = planned_counts(_spec("tdpo"))
    assert (tdpo["sampling"][3], tdpo["training"][3], tdpo["critic encoding"][2:]) == (10, 0, [30, 30])


def test_alignprop_counts_checkpointing_recompute(tmp_path):
    """Gradient checkpointing runs each kept step's UNet call again in the backward: forward rows = 2T per
    chain + 2K per chain; without checkpointing, 2T per chain."""
    register_counting_reward()
    on = _counted(_spec("alignprop", k_min="3"), tmp_path / "on")
    off = _counted(_spec("alignprop", k_min="3", gradient_checkpointing="false"), tmp_path / "off")
    assert (on["unet_forward"], on["unet_backward"]) == (10 * 3 * 2 * 2, 10 * 3 * 2)
    assert (off["unet_forward"], off["unet_backward"]) == (10 * 3 * 2, 10 * 3 * 2)


def test_prdp_rows_at_most_planned(tmp_path):
    """PRDP skips rows whose gradient is zero: its counters are at most the plan's, and its sampling exact."""
    from bench.perf import planned_counts

    register_counting_reward()
    spec = _spec("prdp")
    got = _counted(spec, tmp_path)
    plan = planned_counts(spec)
    assert plan["bound"] == "at most"
    assert got["unet_forward"] <= plan["sampling"][0] + plan["training"][0]
    assert got["unet_backward"] <= plan["training"][1]
    # the reference log-probs and the sampling are always run: a floor the counters reach
    assert got["unet_forward"] >= plan["sampling"][0] + 10 * 3 * 2


def test_planned_floor_rows_by_hand():
    """Two seeds of DDPO-2 at T=3 (marks 0, 5, 10): evaluation samples each checkpoint after query 0 guided with
    its KL pass (2 x 2T rows per image) and the shared query 0 once (2T); the whole grid is the phases' sum and
    its ratio is the plan's seconds over its floor. Every sampled image (training and evaluation) is decoded once."""
    from bench.grid import Planned, _eval_images
    from bench.perf import planned_floor_rows

    register_counting_reward()
    specs = [make_spec("ddpo-2", num_steps=3, samples_per_epoch=4, budget=10, num_checkpoints=2, seed=s,
                       suite="toy") for s in (0, 1)]  # the toy's prompt sets; the tiny-random backbone's UNet
    per_ckpt = _eval_images(specs[0], 1) // 3
    assert per_ckpt > 0
    plans = [Planned(s, "train", train_s=10.0, eval_s=5.0) for s in specs]
    rows, summary = planned_floor_rows(specs, plans, 1, threads=1, repeat=1, batch=4)
    by = {r[0]: r for r in rows}
    assert [r[0] for r in rows][-1] == "whole grid"
    assert by["sampling"][1:5] == ("120", "0", "0", "20") and by["training"][1:5] == ("120", "120", "0", "0")
    assert by["evaluation"][1] == f"{2 * (2 * per_ckpt * 6 * 2) + per_ckpt * 6:,}"
    assert by["evaluation"][4] == f"{2 * 2 * per_ckpt + per_ckpt:,}"  # 2 checkpoints per run, query 0 once
    c = summary["costs"]
    unet = (240 + 2 * 24 * per_ckpt + 6 * per_ckpt) * c["forward"] + 120 * c["backward"]
    whole = unet + (20 + 5 * per_ckpt) * c["decode"]
    assert c["decode"] > 0
    assert float(by["whole grid"][5]) == pytest.approx(whole, abs=0.06)
    assert summary["ratio"] == pytest.approx(30.0 / whole, rel=1e-9)
    assert summary["ratio_unet"] == pytest.approx(30.0 / unet, rel=1e-9)
    assert by["whole grid"][6] == "30.0" and by["per-run work (the three above)"][6] == "20.0"


@pytest.mark.parametrize("argv,needle", [(["perf", "--floor", "--study", "overoptimisation"], "overoptimization"),
                                         (["perf", "--study", "overoptimization"], "--study has no effect with micro-benchmarks")])
def test_perf_floor_bad_study_exits_2(argv, needle, capsys):
    from bench.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
