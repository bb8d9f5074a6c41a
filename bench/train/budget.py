"""The common budget: reward queries, i.e. images scored by the training reward.

Every method spends the same budget and is checkpointed at the same marks. The
runner sizes each epoch so that it ends exactly on the next mark, and the
counted reward refuses any query beyond what the epoch was granted.
"""

from __future__ import annotations


class BudgetExceeded(RuntimeError):
    pass


class RewardBudget:
    def __init__(self, total: int, marks: list[int]):
        if marks[0] != 0 or marks[-1] != total or sorted(set(marks)) != marks:
            raise ValueError(f"bad checkpoint marks {marks} for budget {total}")
        self.total = total
        self.marks = marks
        self.used = 0

    @property
    def exhausted(self) -> bool:
        return self.used >= self.total

    def next_mark(self) -> int:
        return next(m for m in self.marks if m > self.used)

    def epoch_size(self, desired: int) -> int:
        """Images to sample this epoch: `desired`, cut so the epoch ends on the next mark."""
        if self.exhausted:
            return 0
        return min(desired, self.next_mark() - self.used)

    def charge(self, n: int) -> None:
        if self.used + n > self.total:
            raise BudgetExceeded(f"{self.used} + {n} reward queries exceed the budget of {self.total}")
        self.used += n

    def at_mark(self) -> bool:
        return self.used in self.marks


class CountedReward:
    """Wraps a reward; counts every scored image and enforces the epoch's allowance."""

    def __init__(self, reward):
        self.reward = reward
        self.name = reward.name
        self.higher_is_better = reward.higher_is_better
        self.differentiable = reward.differentiable
        self.queries = 0
        self.allowance = 0
        self.counts = None
        """A bench.train.compute.ComputeCounts to add reward forwards to (the runner shares the backbone's)."""

    def allow(self, n: int) -> None:
        self.allowance += n

    def _charge(self, n: int) -> None:
        if self.queries + n > self.allowance:
            raise BudgetExceeded(
                f"the method asked for {self.queries + n} reward queries but only {self.allowance} were granted"
            )
        self.queries += n
        if self.counts is not None:
            self.counts.reward_forwards += n

    def score(self, images, prompts):
        from bench.errors import check_finite

        check_finite("images to score", images)
        self._charge(len(images))
        out = self.reward.score(images, prompts)
        check_finite(f"rewards from {self.name}", out)
        return out

    def score_differentiable(self, images, prompts):
        from bench.errors import check_finite

        check_finite("images to score", images)
        self._charge(len(images))
        out = self.reward.score_differentiable(images, prompts)
        check_finite(f"rewards from {self.name}", out)
        return out

    __call__ = score

    def image_encoder(self):
        return self.reward.image_encoder()
