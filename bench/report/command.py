"""`bench report`: the leaderboard printed and the HTML report written from a results database."""

from __future__ import annotations

from pathlib import Path

from bench.quiet import quiet_libraries
from bench.store.atomic import check_out_dir


def print_and_write(db: Path, report_dir: Path, out: Path, write: bool = True) -> None:
    from bench.report.build import boards_markdown, build_boards, verdict_lines, write_report
    from bench.store.database import connect

    con = connect(db, read_only=True)
    try:
        boards = build_boards(con)
    finally:
        con.close()
    index = write_report(db, report_dir, out, boards=boards) if write else None
    table = boards_markdown(boards, compact=True).rstrip()
    print()
    print(table or "(no evaluation scores)")
    if write:
        print(f"(full tables, with AUCs and every prompt set: {report_dir / 'leaderboard.md'})")
    for line in verdict_lines(boards):
        print(line)
    print(f"\nbench: report at {index}" if write else f"\nbench: no report written (--no-report); "
          f"`python -m bench report --db {db}` builds it")


def cmd_report(args) -> int:
    db = Path(args.db)
    from bench.store.database import open_results

    open_results(db).close()
    check_out_dir(Path(args.out))
    quiet_libraries()
    print_and_write(db, Path(args.out), db.parent)
    return 0
