"""Diversity of a checkpoint's images, per prompt set: collapse of diversity is a classic sign
of reward overoptimization.

- `pairwise_cosine_distance`: among the images of the same prompt (2 or more evaluation images
  per prompt), the mean of 1 - cos(e_i, e_j) over pairs i < j of their image embeddings, then
  averaged over prompts. Identical images give 0.
- `attribute_entropy`: for a discrete attribute (on the toy: the gold model's predicted colour,
  the position cell and the size bin of the foreground), the entropy in nats of its empirical
  distribution among the images of one prompt, averaged over prompts. A collapsed prompt gives 0.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import torch

from bench.measures.drift import drift_metrics


def _groups(prompts: list[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        out[p].append(i)
    return out


def pairwise_cosine_distance(embeds: torch.Tensor, prompts: list[str]) -> float | None:
    """Mean over prompts of the mean pairwise cosine distance of that prompt's embeddings;
    None when no prompt has two images."""
    e = embeds.float()
    e = e / e.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    per_prompt = []
    for idx in _groups(prompts).values():
        if len(idx) < 2:
            continue
        x = e[idx]
        sim = x @ x.t()
        k = len(idx)
        off = sim.sum() - sim.diagonal().sum()  # sum over ordered pairs i != j
        per_prompt.append(float(1.0 - off / (k * (k - 1))))
    return sum(per_prompt) / len(per_prompt) if per_prompt else None


def entropy(labels: list) -> float:
    """Entropy (nats) of the empirical distribution of `labels`."""
    n = len(labels)
    return -sum(c / n * math.log(c / n) for c in Counter(labels).values())


def attribute_entropy(labels: list, prompts: list[str]) -> float | None:
    """Mean over prompts with 2+ images of the entropy of their labels."""
    vals = [entropy([labels[i] for i in idx]) for idx in _groups(prompts).values() if len(idx) >= 2]
    return sum(vals) / len(vals) if vals else None


def set_metrics_fn(suite: str, device="cpu"):
    """The set-level metrics of a suite: `f(images, keys, final latents) -> {metric: value}` (see module
    docstring), with the image-statistics drift of bench/measures/drift.py. Embeddings come from the suite's aesthetic
    CLIP image encoder."""
    from bench.spec.catalog import rewards

    encoder = rewards.get("aesthetic").load()(suite=suite, device=device).image_encoder()
    gold = rewards.get("gold-fidelity").load()(suite=suite, device=device) if suite == "toy" else None

    def metrics(images: torch.Tensor, keys, latents: torch.Tensor | None = None) -> dict:
        prompts = [p for p, _ in keys]
        out = {"diversity_cosine": pairwise_cosine_distance(encoder(images), prompts),
               **drift_metrics(images, latents)}
        if gold is not None:
            for name, labels in gold.attributes(images).items():
                out[f"entropy_{name}"] = attribute_entropy(labels, prompts)
        return out
    return metrics
