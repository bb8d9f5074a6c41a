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
    assert got["unet_forward"] > 0 and got["unet_backward"] > 0


def test_planned_rows_by_hand():
    """DDPO-2 at T=3 over epochs 4, 1, 4, 1: sampling 10 images x 3 steps x 2 (guided) = 60 forward rows; one
    inner epoch trains every sample-step once, 60 forward and 60 backward. AlignProp with k_min = 1: K ~ U{1..3},
    mean 2: 10 x 3 x 2 = 60 rows forward, 10 x 2 x 2 = 40 backward, and 40 recomputed by checkpointing."""
    from bench.perf import planned_counts

    ddpo = planned_counts(_spec("ddpo-2"))
    assert (ddpo["sampling"], ddpo["training"][:2]) == ([60, 0, 0], [60, 60])
    align = planned_counts(_spec("alignprop"))
    assert (align["sampling"][0], align["training"][:2], align["bound"]) == (0, [100, 40], "expected")


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
