"""Applies the main-level decision's rule (docs/decisions/main-level-rule.md) to a jpeg grid: per candidate
fraction f, the level on the seen prompts and how many level-setting methods reach it; the largest f at which at
least two thirds of them (rounded up) do is chosen. Reads only.

    python scripts/decide_main_level.py OUT
"""

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANDIDATES = (0.25, 0.5, 0.75)
REWARD = "jpeg-compressibility"


def decide(boards_by_f: dict) -> tuple[float | None, list[tuple]]:
    """boards_by_f: f -> the seen-prompt board built under level_fraction f. Returns (chosen f or None, rows of
    (f, level, setters reaching, setters, others reaching))."""
    rows, chosen = [], None
    for f, board in sorted(boards_by_f.items()):
        col = board.columns.index("queries to level")
        reach = {m for m, _, cells in board.rows if cells[col].mean is not None}
        setters = set(board.level_methods)
        rows.append((f, board.level, sorted(reach & setters), sorted(setters), sorted(reach - setters)))
        if len(reach & setters) >= math.ceil(2 * len(setters) / 3):
            chosen = f
    return chosen, rows


def main(out: str) -> None:
    from dataclasses import replace

    from bench.report.build import _roles, build_boards
    from bench.spec.catalog import MAIN_PLAN
    from bench.store.database import connect

    con = connect(Path(out) / "bench.duckdb", read_only=True)
    roles = _roles()
    boards_by_f = {}
    for f in CANDIDATES:
        plan = replace(MAIN_PLAN, version=0, declared="decision candidate", level_fraction=f)
        boards_by_f[f] = next(b for b in build_boards(con, plan)
                              if b.train_reward == REWARD and roles.get(b.prompt_set) == "seen")
    con.close()
    chosen, rows = decide(boards_by_f)
    print("| f | level | setters reaching it | of | others reaching it |\n|---|---|---|---|---|")
    for f, level, reach, setters, others in rows:
        print(f"| {f:g} | {level:.4f} | {len(reach)}: {', '.join(reach)} | {len(setters)} | {', '.join(others) or '-'} |")
    print(f"\nchosen: f = {chosen if chosen is not None else 0.25} "
          + ("" if chosen is not None else "(no candidate kept two thirds of the setters)"))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/decide_main_level.py OUT")
    main(sys.argv[1])
