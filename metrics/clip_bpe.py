"""CLIP's byte-level BPE tokenizer, built offline from `bpe_simple_vocab_16e6.txt.gz`.

HPSv2 (open_clip) and SD-scale tests need CLIP's tokenizer without downloading `openai/clip-vit-*`.
The merges file ships inside the open_clip_torch and clip-anytorch wheels; `scripts/setup.sh` takes it
from the wheel (`pip download --no-deps`, unzip, nothing imported) into the bench cache. Look-up order:
BENCH_CLIP_BPE, then BENCH_CACHE (or ~/.cache/bench)/bpe_simple_vocab_16e6.txt.gz.

The vocabulary is CLIP's: the 256 byte symbols, the same with the end-of-word mark `</w>`, one token per
merge (the file's first line is a header; CLIP uses 49152 - 256 - 2 merges), then <|startoftext|> and
<|endoftext|> (49406, 49407). transformers' CLIPTokenizer is built from that vocabulary and merge list
(its vocab_file/merges_file arguments silently yield a 2-token vocabulary in transformers 5).
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path

from bench.spec.weights import bpe_path

N_MERGES = 49152 - 256 - 2


def byte_symbols() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable unicode characters, in CLIP's order (which fixes the
    token ids): first the printable Latin-1 bytes, mapped to themselves, then every other byte, mapped to
    code points 256, 257, ... in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    out = {b: chr(b) for b in keep}
    for extra, b in enumerate(b for b in range(256) if b not in out):
        out[b] = chr(256 + extra)
    return out


def vocabulary(path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(path or bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
    symbols = list(byte_symbols().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(context_length: int = 77, path: Path | None = None):
    """transformers' CLIPTokenizer with CLIP's vocabulary, padding with <|endoftext|> to `context_length`."""
    from transformers import CLIPTokenizer

    vocab, merges = vocabulary(path)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length, unk_token="<|endoftext|>",
                         bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def clean_text(text: str) -> str:
    """open_clip's cleaning before BPE (HPSv2's tokenizer does the same): ftfy's fix_text (mojibake, curly
    quotes, ligatures, full-width letters; NFC), HTML entities unescaped twice, whitespace collapsed, lower
    case. Without it "caf\u00c3\u00a9", "&amp;" or "\ufb01sh" get other token ids than the official code's."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


def tokenize(tokenizer, texts: list[str], context_length: int = 77):
    """Token ids as open_clip makes them: cleaned text, <|startoftext|> ... <|endoftext|>, padded, truncated."""
    return tokenizer([clean_text(t) for t in texts], padding="max_length", max_length=context_length,
                     truncation=True, return_tensors="pt").input_ids
