"""A comparison's rules, declared before the runs they judge (pure Python, no torch).

A plan names the matched-level rule, the primary comparisons and how the rest are treated. The report labels
the primary results, Holm-adjusts the exploratory ones across the whole family, and prints the plan's name and
version. Changing any rule makes a new version; the old one stays, for the runs it judged.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ComparisonPlan:
    name: str
    """The study (or 'main', the main command's leaderboard) the plan belongs to."""
    version: int
    """Bumped whenever a rule below changes."""
    declared: str
    """When it was declared, and whether before or after the runs it judges."""
    level_setters: str
    """Which improving methods set the matched level: 'paper' (the TDPO paper's methods; companion papers'
    methods are placed at it) or 'all' (every method that improves its training reward)."""
    primary: tuple[tuple[str, str], ...]
    """(method, compared with) pairs whose difference on `primary_score` is the study's question."""
    primary_score: str
    """The score, at the matched level, the primary comparisons are made on."""
    primary_prompts: str
    """The prompt-set role ('seen', 'unseen', 'compositional') the primary comparisons are made on."""
    seeds: int | None = None
    """The number of seeds the plan fixes (None: the command line's)."""
    power_rule: str = ""
    """How `seeds` was chosen, with the numbers it came from."""
    critic_ev_threshold: float | None = None
    """The manipulation check of a comparison between methods with a temporal critic (the TDPO family): below
    this mean explained variance of the critic (over the runs' epochs), the critic has no leverage on the
    advantages, and the report says the comparison does not test what a critic reset does. None: not declared
    (the report still prints the critic's explained variance)."""

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def is_primary(self, focus: str, other: str, score: str, prompt_role: str) -> bool:
        return (focus, other) in self.primary and score == self.primary_score and prompt_role == self.primary_prompts
