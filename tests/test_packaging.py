"""The install matches use: the CPU lock file pins exactly the package's dependencies and extras."""

import re
import tomllib

from tests.conftest import ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_lock_file_and_pyproject_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project.get("optional-dependencies", {}).values():
        declared |= {_name(r) for r in extra}
    text = (ROOT / "requirements-lock.txt").read_text()
    direct, _, transitive = text.partition("# transitive")
    locked = {_name(line) for line in direct.splitlines() if line.strip() and not line.startswith("#")}
    assert locked == declared, {"locked, not declared": sorted(locked - declared),
                                "declared, not locked": sorted(declared - locked)}
    extra_pins = {_name(line) for line in transitive.splitlines()[1:] if line.strip() and not line.startswith("#")}
    assert not extra_pins & declared  # a transitive pin is not also a dependency
    # every lock line is an exact pin (CI reproducibility); the package's own requirements are ranges
    pins = [line for line in (ROOT / "requirements-lock.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert all("==" in p for p in pins)
    assert not any("==" in r for r in project["dependencies"])


def test_every_declared_dependency_is_imported_somewhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(r) for r in project["dependencies"]} | {_name(r) for e in project["optional-dependencies"].values()
                                                          for r in e}
    module = {"pillow": "PIL", "huggingface-hub": "huggingface_hub", "pytest": "pytest"}
    text = "\n".join(p.read_text() for d in ("bench", "methods", "metrics", "tests")
                     for p in (ROOT / d).rglob("*.py"))
    addopts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    plugins = {"pytest-xdist": " -n " in f" {addopts} ",  # pytest plugins are used through options, not imports
               "import-linter": '"lint-imports"' in text,     # a command the tests run (tests/test_layout.py)
               "mkdocs-material": '"mkdocs", "build"' in text}  # the site's theme, built by tests/test_docs.py
    for n in names:
        if n in plugins:
            assert plugins[n], f"{n} is declared but neither pytest's addopts nor the tests use it"
            continue
        mod = module.get(n, n.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {re.escape(mod)}\b", text, re.M), f"{n} is declared but never imported"
