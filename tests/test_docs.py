"""The documentation: the site builds with `mkdocs build --strict` (a broken link, a missing page or a page
outside the nav fails), the README stays a guide, and what can go stale is checked against the code."""

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_the_site_builds_strictly(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert (tmp_path / "site" / "byo-method" / "index.html").is_file()


def test_the_readme_is_a_guide():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    status = text.split("> **Status")[1].split("\n\n")[0]
    assert len(re.findall(r"[A-Za-z0-9][\w.'-]*", status)) <= 90  # about 80 words
    # the two commands, exactly as .ci/run runs the second
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in text and ci.endswith(
        "bash scripts/setup.sh && .venv/bin/python -m pytest -q")
    assert "bash scripts/setup.sh && .venv/bin/python -m bench run --methods all --reward aesthetic" in text
    for link in re.findall(r"\]\((docs/[^)#]+)", text):  # every page the README links to exists
        assert (ROOT / link).is_file(), link


def test_every_method_reward_and_module_is_documented():
    """The pages that list things name every registered method and reward, and the layout page every module:
    a new method, reward or module without its line fails here."""
    # the catalog as a fresh process sees it (tests register rewards of their own; a plugin documents itself)
    code = ("from bench.spec.catalog import methods, rewards; "
            "print(' '.join(e.name for e in methods.entries() if 'plugin' not in e.meta)); "
            "print(' '.join(e.name for e in rewards.entries() if 'plugin' not in e.meta))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    built_in_methods, built_in_rewards = (line.split() for line in r.stdout.splitlines())
    method_page = (ROOT / "docs" / "methods.md").read_text()
    assert [n for n in built_in_methods if f"`{n}`" not in method_page] == []
    reward_page = (ROOT / "docs" / "rewards.md").read_text()
    assert [n for n in built_in_rewards if n not in reward_page] == [] and len(built_in_rewards) >= 9
    layout = (ROOT / "docs" / "layout.md").read_text()
    missing = [str(f) for pkg in ("bench", "methods", "metrics") for f in sorted(Path(ROOT, pkg).rglob("*.py"))
               if f.name not in ("__init__.py", "__main__.py") and f.name not in layout and f.stem not in layout]
    assert missing == []
