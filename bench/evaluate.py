"""Score saved checkpoints with fixed evaluation seeds.

Each (prompt, sample_index) gets the same initial noise and the same sampling
noise for every run and every checkpoint (a generator seeded from eval_seed,
the prompt set, the prompt and the sample index), so differences between
checkpoints come from the weights alone. Rows go to the run's scores/ shard in
the `scores` table's long format.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from bench.io import atomic_write_jsonl

DEFAULT_EVAL_SEED = 2024


def noise_seed(eval_seed: int, prompt_set: str, prompt: str, sample_index: int) -> int:
    key = f"{eval_seed}|{prompt_set}|{prompt}|{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def sample_fixed(backbone, prompt_set: str, prompts: list[str], per_prompt: int, eval_seed: int,
                 batch_size: int = 32):
    """Images for every (prompt, sample_index), each from its own seeded generator
    (batched: a per-sample generator makes an image independent of its batch)."""
    keys = [(p, i) for p in prompts for i in range(per_prompt)]
    gens = [torch.Generator().manual_seed(noise_seed(eval_seed, prompt_set, p, i)) for p, i in keys]
    traj = backbone.sample([p for p, _ in keys], generator=gens, batch_size=batch_size)
    return traj.images, keys


def evaluate_checkpoints(run_dir: Path, rewards: dict, prompt_sets: dict[str, list[str]], per_prompt: int = 2,
                         eval_seed: int = DEFAULT_EVAL_SEED, device="cpu", progress: bool = True,
                         shard: str = "eval", queries: set[int] | None = None) -> list[dict]:
    """Score every checkpoint of a run (or those at the reward-query counts in
    `queries`) with every reward on every prompt set."""
    from tqdm.auto import tqdm

    from bench.backbone import build_backbone
    from bench.runner import backbone_location
    from bench.spec import RunSpec

    run_dir = Path(run_dir)
    spec = RunSpec.from_dict(json.loads((run_dir / "run.json").read_text())["config"])
    ckpts = [json.loads(line) for line in (run_dir / "checkpoints.jsonl").read_text().splitlines() if line]
    if queries is not None:
        ckpts = [c for c in ckpts if c["reward_queries"] in queries]
    bb = build_backbone(backbone_location(spec), spec.num_steps, spec.guidance_scale, spec.eta, device=device)
    bb.add_lora(spec.lora_rank)
    rows: list[dict] = []
    total = len(ckpts) * sum(len(p) for p in prompt_sets.values()) * per_prompt
    with tqdm(total=total, desc=f"eval {spec.method}", unit="img", disable=not progress) as bar:
        for ck in ckpts:
            bb.load_lora(run_dir / ck["path"])
            for set_name, prompts in prompt_sets.items():
                images, keys = sample_fixed(bb, set_name, prompts, per_prompt, eval_seed)
                bar.update(len(keys))
                ps = [p for p, _ in keys]
                for rname, reward in rewards.items():
                    values = reward.score(images, ps)
                    rows += [dict(run_id=spec.run_name, reward_queries=ck["reward_queries"], reward=rname,
                                  prompt_set=set_name, prompt=p, sample_index=i, eval_seed=eval_seed,
                                  value=float(v)) for (p, i), v in zip(keys, values.tolist())]
    atomic_write_jsonl(run_dir / "scores" / f"{shard}.jsonl", rows)
    return rows
