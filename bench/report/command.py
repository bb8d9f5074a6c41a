"""`bench report`: the leaderboard printed and the HTML report written from a results database."""

from __future__ import annotations

from pathlib import Path

from bench.quiet import quiet_libraries
from bench.store.atomic import REPORT_FILES, check_out_dir, check_owned_folder


def plan_of(study: str | None):
    """The comparison plan a study declared, or the main command's (no study)."""
    from bench.spec import catalog

    return catalog.studies.get(study).meta["plan"] if study else catalog.MAIN_PLAN


def print_and_write(db: Path, report_dir: Path, out: Path, write: bool = True, study: str | None = None) -> None:
    from bench.report.build import (below_m_line, boards_markdown, build_boards, comparison_rows, effective_tables,
                                    plan_completeness, primary_sentences, unfinished_line, verdict_lines,
                                    write_report)
    from bench.report.analysis import load_curves
    from bench.report.calibration import calibrate
    from bench.store.database import connect

    plan = plan_of(study)
    con = connect(db, read_only=True)
    try:
        boards = build_boards(con, plan)
        below_m = below_m_line(effective_tables(con), {m for (m,) in con.execute("SELECT method FROM runs").fetchall()})
        rows = comparison_rows(boards, plan)
        left_out = unfinished_line(con.execute("SELECT run_id, status FROM runs").fetchall())
        calibration = calibrate(load_curves(con), boards, rows, plan) if rows else None
    finally:
        con.close()
    if write:  # built beside the folder and swapped in whole: an interrupted report leaves the old one
        from bench.store.atomic import REPORT_FILES, replace_folder

        replace_folder(report_dir, lambda tmp: write_report(db, tmp, out, boards=boards, plan=plan,
                                                            calibration=calibration), "report folder",
                       legacy=REPORT_FILES)
    index = report_dir / "index.html" if write else None
    table = boards_markdown(boards, compact=True).rstrip()
    print()
    print(table or "(no evaluation scores)")
    if left_out:
        print(left_out)
    if below_m:
        print(below_m)
    if write:
        print(f"(full tables, with AUCs and every prompt set: {report_dir / 'leaderboard.md'})")
    for line in verdict_lines(boards):
        print(line)
    interim = plan_completeness(boards, plan)
    if interim:
        print(interim)
    sentences = primary_sentences(rows, plan)
    if sentences:
        print(f"primary comparisons (plan {plan.label}, paired by seed on the seeds both ran):")
        for s in sentences:
            print("  " + s)
    if calibration is not None:
        print("  " + calibration.line())
    print(f"\nbench: report at {index}" if write else f"\nbench: no report written (--no-report); "
          f"`python -m bench report --db {db}` builds it")


def cmd_report(args) -> int:
    db = Path(args.db)
    from bench.store.database import open_results

    open_results(db).close()
    check_out_dir(Path(args.out))
    check_owned_folder(Path(args.out), "report folder", legacy=REPORT_FILES)
    plan_of(args.study)  # did-you-mean before anything heavy
    quiet_libraries()
    print_and_write(db, Path(args.out), db.parent, study=args.study)
    return 0
