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

    fixed_level: tuple[str, float] | None = None
    """(training reward, level): the matched level of that reward's board on the primary prompts, fixed before
    the runs (version 4 of the study) so that the estimand does not move with the number of seeds. A run that
    never reaches it leaves its pairs. None: the level rule (`level_setters`, `level_fraction`)."""
    level_fraction: float | None = None
    """The level rule of the main command from version 3: the common start plus this fraction of the median, over
    the level-setting methods, of each method's best gain over the start (mean over its seeds). A method that
    barely learns then fails to reach the level instead of pinning it at the pretrained model. None: the highest
    level every setting run reaches (versions 1 and 2)."""
    auc_interval: tuple[float, float] | None = None
    """A co-primary score for the 'uniform offset' alternative: the mean of the primary score at the first
    crossing of each proxy level in [low, high] (the area under it against the proxy, over the width), on the
    `fixed_level` board. None: no co-primary."""
    familywise: bool = False
    """True: the primary comparisons are judged on their Holm-adjusted p (family-wise 5%); False: at 95% each
    (versions before 4), with the Holm p printed beside."""

    @property
    def auc_score(self) -> str | None:
        """The co-primary's column name on the board, or None."""
        if self.auc_interval is None:
            return None
        low, high = self.auc_interval
        return f"{self.primary_score} mean over [{low:g}, {high:g}]"

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"

    def is_primary(self, focus: str, other: str, score: str, prompt_role: str) -> bool:
        return ((focus, other) in self.primary and score in (self.primary_score, self.auc_score)
                and prompt_role == self.primary_prompts)
