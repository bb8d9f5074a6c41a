"""DDPO-2 with rank-based advantages: the trainer is DDPO's, only the advantage differs."""

import numpy as np

from methods.ddpo import DDPO


def centred_ranks(rewards, scale: float = 1.0) -> np.ndarray:
    """Ranks of the rewards mapped to [-scale, scale] (ties get their mean rank); one reward gets 0."""
    r = np.asarray(rewards, dtype=np.float64)
    if len(r) < 2:
        return np.zeros_like(r)
    order = r.argsort(kind="stable")
    ranks = np.empty_like(r)
    ranks[order] = np.arange(len(r), dtype=np.float64)
    for v in np.unique(r):  # ties: their mean rank
        ranks[r == v] = ranks[r == v].mean()
    return scale * (2 * ranks / (len(r) - 1) - 1)


class RankDDPO(DDPO):
    def advantages(self, prompts, rewards) -> np.ndarray:
        return centred_ranks(rewards, float(self.hp["rank_scale"]))
