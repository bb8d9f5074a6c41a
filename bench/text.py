"""Plain-text tables for the terminal."""

from __future__ import annotations


def print_table(rows, header=("what", "setting", "seconds", "rate / memory", "CUDA peak")) -> None:
    table = [header] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
