"""The architecture as a checked contract: import-linter's layers, the adapters' boundary and no import
cycles (pyproject.toml's [tool.importlinter]); and a contract that fails when one of the four import
cycles the layout removed comes back."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    # --no-cache: nothing written into the checkout; PYTHONPATH: the copy under test, not the installed tree
    return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)


def test_the_import_contracts_hold():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout, r.stdout


# (file, a function-level import that closes a cycle the layout broke, the contract's words for it)
CYCLES = {
    "cli-grid": ("bench/grid.py", "from bench.cli import main", "bench.grid is not allowed to import bench.cli"),
    "report-results": ("bench/report/build.py", "from bench.report.results import load_results",
                       "No cycles are allowed in bench.report."),
    "captions-render": ("bench/toy/captions.py", "from bench.toy.render import draw", "No cycles are allowed in bench.toy."),
    # weight lookup is spec: it locates files and never loads a reward
    "weights-clip_score": ("bench/spec/weights.py", "from metrics.clip_score import load_pickscore",
                           "bench.spec is not allowed to import metrics"),
    "clip_score-hpsv2": ("metrics/hpsv2.py", "from metrics.clip_score import load_pickscore",
                         "No cycles are allowed in metrics."),
    # the rewards read the toy's gold and assets; the toy's runtime never reads a reward back
    "toy-metrics": ("bench/toy/gold.py", "from metrics.aesthetic import preprocess_reference",
                    "bench.toy.gold is not allowed to import metrics"),
    "metrics-train": ("metrics/jpeg.py", "from bench.train.runner import load_reward",
                      "metrics is not allowed to import bench.train"),
    # diversity and drift are evaluation's measures: evaluation calls them, never the reverse
    "measures-evaluate": ("bench/measures/drift.py", "from bench.evaluate import evaluate_run",
                          "bench.measures is not allowed to import bench.evaluate"),
    "spec-methods": ("bench/spec/scale.py", "from methods.shapes import ppo_shape",
                     "bench.spec is not allowed to import methods"),
}


@pytest.mark.parametrize("name", sorted(CYCLES))
def test_a_reintroduced_cycle_breaks_the_contract(tmp_path, name):
    """Lazy, function-level imports are in the graph too: hiding a cycle inside a function does not pass."""
    for part in ("bench", "methods", "metrics"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    # (the tree itself is clean: test_the_import_contracts_hold; the words below name the inserted edge)
    file, line, words = CYCLES[name]
    with open(tmp_path / file, "a") as f:
        f.write(f"\n\ndef _cycle():\n    {line}  # noqa\n")
    r = _lint(tmp_path)
    assert r.returncode != 0 and words in r.stdout, r.stdout


def test_the_command_line_is_thin():
    """cli.py is the parser and the dispatch; each command's body lives beside what it runs."""
    lines = (ROOT / "bench" / "cli.py").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    assert not [ln for ln in lines if ln.startswith("def cmd_")]


def test_no_function_is_longer_than_80_lines_except_where_the_layout_page_says_why():
    """A function over 80 lines in bench/ must be named, with its reason, in docs/layout.md's Function length
    section; and every name there must still be over 80 lines (no stale exception)."""
    import ast

    long = set()
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.add(f"{path.relative_to(ROOT).as_posix()}: {node.name}")
    section = (ROOT / "docs" / "layout.md").read_text().split("## Function length", 1)[1]
    excused = set(re.findall(r"^- `([^`]+)`:", section, flags=re.M))
    assert long == excused, (sorted(long - excused), sorted(excused - long))
