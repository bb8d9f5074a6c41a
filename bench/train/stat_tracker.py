"""Per-prompt reward normalisation, as in the DDPO reference.

Each prompt keeps a FIFO buffer of its recent rewards. This epoch's rewards are
added to the buffer BEFORE the statistics are taken; while a prompt has fewer than
`min_count` rewards, the mean/std of the whole (gathered) batch are used instead.
advantage = (r - mean) / (std + 1e-6), with numpy's population std.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class PerPromptStatTracker:
    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        self.buffer_size = buffer_size
        self.min_count = min_count
        self.stats: dict[str, deque] = {}

    def update(self, prompts, rewards) -> np.ndarray:
        prompts = np.asarray(prompts, dtype=object)
        rewards = np.asarray(rewards, dtype=np.float64)
        advantages = np.empty_like(rewards)
        for prompt in np.unique(prompts):
            mask = prompts == prompt
            buf = self.stats.setdefault(prompt, deque(maxlen=self.buffer_size))
            buf.extend(rewards[mask].tolist())
            if len(buf) < self.min_count:
                mean, std = np.mean(rewards), np.std(rewards) + 1e-6
            else:
                mean, std = np.mean(buf), np.std(buf) + 1e-6
            advantages[mask] = (rewards[mask] - mean) / std
        return advantages


def batch_normalize(rewards) -> np.ndarray:
    """Normalisation without per-prompt tracking: (r - mean) / (std + 1e-8) over the batch."""
    rewards = np.asarray(rewards, dtype=np.float64)
    return (rewards - rewards.mean()) / (rewards.std() + 1e-8)
