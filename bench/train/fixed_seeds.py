"""The fixed-seed evaluation images: each (prompt set, prompt, sample index) gets the same initial and sampling
noise for every run and checkpoint, so that differences between checkpoints come from the weights alone.

Shared by evaluation (bench/evaluate.py) and by a run's stop rule (bench/train/runner.py), which scores the very
images evaluation will. Torch-free at import: the planning paths that read DEFAULT_EVAL_SEED stay light."""

from __future__ import annotations

import hashlib

DEFAULT_EVAL_SEED = 2024
EVAL_BATCH = 64


def noise_seed(eval_seed: int, prompt_set: str, prompt: str, sample_index: int) -> int:
    key = f"{eval_seed}|{prompt_set}|{prompt}|{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def sample_fixed_traj(backbone, prompt_set: str, prompts: list[str], per_prompt: int, eval_seed: int,
                      batch_size: int = EVAL_BATCH, kl: bool = False):
    """The trajectories for every (prompt, sample_index), each from its own seeded generator
    (batched: a per-sample generator makes an image independent of its batch), and the keys."""
    import torch

    keys = [(p, i) for p in prompts for i in range(per_prompt)]
    gens = [torch.Generator().manual_seed(noise_seed(eval_seed, prompt_set, p, i)) for p, i in keys]
    with torch.no_grad():
        traj = backbone.sample([p for p, _ in keys], generator=gens, batch_size=batch_size, kl_to_pretrained=kl)
    return traj, keys
