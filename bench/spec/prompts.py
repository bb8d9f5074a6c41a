"""Prompt sets: registered names or a user's own file, validated strictly.

A prompt file is UTF-8 text, one prompt per line. Blank lines and lines starting
with '#' are ignored. It must hold at least one prompt and no duplicates.
"""

from __future__ import annotations

from pathlib import Path

from bench.errors import BenchError


MAX_PROMPT_CHARS = 1000


def read_prompt_file(path: str | Path) -> list[str]:
    path = Path(path)
    if path.is_dir():
        raise BenchError(f"prompt file {path} is a folder")
    if path.exists() and not path.is_file():  # a FIFO or a device: never opened (it could block)
        raise BenchError(f"prompt file {path} is not a regular file")
    if not path.is_file():
        raise BenchError(f"prompt file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise BenchError(f"{path}:{line}: not valid UTF-8") from None
    prompts: list[str] = []
    first_seen: dict[str, int] = {}
    # split on newlines only: str.splitlines would also break a line at C1's NEL (U+0085) and at U+2028, hiding them
    for lineno, raw in enumerate(text.split("\n"), start=1):
        prompt = raw.strip()
        if not prompt or prompt.startswith("#"):
            continue
        # C0 (but tab), DEL and C1 (U+0080-U+009F): none belongs in a prompt
        bad = next((c for c in prompt if ord(c) < 32 and c != "\t" or 127 <= ord(c) <= 159), None)
        if bad is not None:
            raise BenchError(f"{path}:{lineno}: control character {bad!r} in a prompt (is this a text file?)")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise BenchError(f"{path}:{lineno}: prompt of {len(prompt)} characters (at most {MAX_PROMPT_CHARS})")
        if prompt in first_seen:
            raise BenchError(f"{path}:{lineno}: duplicate prompt {prompt!r} (first on line {first_seen[prompt]})")
        first_seen[prompt] = lineno
        prompts.append(prompt)
    if not prompts:
        raise BenchError(f"{path}: no prompts (the file is empty or only comments)")
    return prompts


def resolve_prompt_set(name_or_path: str) -> tuple[str, list[str]]:
    """Return (canonical name, prompts) for a registered set name or a file path."""
    from bench.spec.catalog import REPO_ROOT, prompt_sets

    if name_or_path in prompt_sets:
        entry = prompt_sets.get(name_or_path)
        return name_or_path, read_prompt_file(REPO_ROOT / entry.meta["path"])
    if "/" in name_or_path or name_or_path.endswith(".txt") or Path(name_or_path).exists():
        path = Path(name_or_path).resolve()
        return str(path), read_prompt_file(path)
    prompt_sets.get(name_or_path)  # raises "unknown prompt set ... did you mean"
    raise AssertionError("unreachable")
