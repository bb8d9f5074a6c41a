"""Only a bench results database is ever written: absent (created, schema version recorded), bench's own
(used), an older bench schema (migrated in one transaction), and everything else refused with one line
before anything is written: another program's DuckDB, bench's table names with other columns, a truncated
file, a newer schema, a parent that is not a directory."""

import hashlib
from pathlib import Path

import duckdb
import pytest

from bench.cli import main

OLD_RUNS = ("run_id VARCHAR PRIMARY KEY, config_hash VARCHAR NOT NULL, method VARCHAR, reward VARCHAR, "
            "backbone VARCHAR, suite VARCHAR, seed INTEGER, budget BIGINT, config JSON, package_versions JSON, "
            "git_commit VARCHAR, started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR, wall_time_s DOUBLE, "
            "world_size INTEGER")
OLD_CHECKPOINTS = ("run_id VARCHAR, reward_queries BIGINT, mark_index INTEGER, epoch INTEGER, sampled_images BIGINT, "
                   "gradient_updates BIGINT, wall_time_s DOUBLE, path VARCHAR, PRIMARY KEY (run_id, reward_queries)")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make(path: Path, *statements: str) -> Path:
    con = duckdb.connect(str(path))
    for s in statements:
        con.execute(s)
    con.close()
    return path


def _older_bench(path: Path) -> Path:
    """A database as bench wrote it before the schema version (and the error, compute and sha256 columns,
    and the eval_metrics table) existed, with one run in it."""
    from bench.store.database import SCHEMA

    return _make(path, f"CREATE TABLE runs ({OLD_RUNS})", f"CREATE TABLE checkpoints ({OLD_CHECKPOINTS})",
                 f"CREATE TABLE train_metrics ({SCHEMA['train_metrics']})", f"CREATE TABLE scores ({SCHEMA['scores']})",
                 "INSERT INTO runs (run_id, config_hash, method, status) VALUES ('old_run', 'abc', 'ddpo-2', 'finished')")


def _run_cli(capsys, *args) -> tuple[int, list[str]]:
    rc = main(list(args))
    err = capsys.readouterr().err
    return rc, [line for line in err.splitlines() if line.strip()]


@pytest.fixture
def out(tmp_path):
    (tmp_path / "out" / "runs").mkdir(parents=True)
    return tmp_path / "out"


FOREIGN = {
    "another program's database": ("CREATE TABLE users (id INTEGER, name VARCHAR)",
                                   "INSERT INTO users VALUES (1, 'ada')"),
    "bench's table names, other columns": ("CREATE TABLE runs (id INTEGER, payload VARCHAR)",
                                           "CREATE TABLE checkpoints (x INTEGER)",
                                           "CREATE TABLE train_metrics (x INTEGER)", "CREATE TABLE scores (x INTEGER)"),
    "bench's tables plus another program's": None,  # built below from an older bench database
    "an empty database": (),
    "a newer bench schema": None,
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
@pytest.mark.parametrize("command", ["ingest", "runs", "report", "eval"])
def test_a_database_that_is_not_ours_is_refused_and_left_byte_identical(tmp_path, out, capsys, case, command):
    db = tmp_path / "other.duckdb"
    if case == "bench's tables plus another program's":
        _older_bench(db)
        _make(db, "CREATE TABLE invoices (id INTEGER)")
    elif case == "a newer bench schema":
        _older_bench(db)
        _make(db, "CREATE TABLE bench_meta (key VARCHAR PRIMARY KEY, value VARCHAR)",
              "INSERT INTO bench_meta VALUES ('schema_version', '99')")
    else:
        _make(db, *FOREIGN[case])
    before = _sha(db)
    extra = ["--out", str(tmp_path / "rep")] if command == "report" else ["--out", str(out)]
    rc, lines = _run_cli(capsys, command, "--db", str(db), *extra)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    words = {"another program's database": "is not a bench results database",
             "bench's table names, other columns": "table has other columns",
             "bench's tables plus another program's": "tables bench does not own (invoices)",
             "an empty database": "holds no bench results",
             "a newer bench schema": "newer than this harness's 1"}[case]
    assert words in lines[0], lines
    assert _sha(db) == before  # not a byte written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.duckdb", "out"]


def test_run_refuses_a_foreign_database_before_training(tmp_path, capsys):
    db = _make(tmp_path / "other.duckdb", "CREATE TABLE users (id INTEGER)")
    before = _sha(db)
    rc, lines = _run_cli(capsys, "run", "--methods", "ddpo-2", "--out", str(tmp_path / "o"), "--db", str(db))
    assert rc == 2 and len(lines) == 1 and "is not a bench results database" in lines[0], lines
    assert _sha(db) == before and not (tmp_path / "o" / "runs").exists()


@pytest.mark.parametrize("command", ["run", "ingest", "runs", "report"])
def test_a_truncated_database_is_one_line(tmp_path, out, capsys, command):
    good = tmp_path / "good.duckdb"
    _older_bench(good)
    data = good.read_bytes()
    db = tmp_path / "cut.duckdb"
    db.write_bytes(data[: len(data) // 3])
    before = _sha(db)
    args = {"run": ["--methods", "ddpo-2", "--out", str(out)], "ingest": ["--out", str(out)],
            "runs": ["--out", str(out)], "report": ["--out", str(tmp_path / "rep")]}[command]
    rc, lines = _run_cli(capsys, command, "--db", str(db), *args)
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "cut.duckdb" in lines[0] and "Traceback" not in lines[0]
    assert _sha(db) == before


@pytest.fixture(scope="module")
def cut_past_schema(tmp_path_factory) -> Path:
    """A bench database with rows from several sessions, cut where its tables still open but its rows do not:
    the first such cut of 39 (found, not assumed: where DuckDB puts its blocks is its own business)."""
    import duckdb

    from bench.store.database import _table_columns, connect

    folder = tmp_path_factory.mktemp("cut")
    good = folder / "good.duckdb"
    for b in range(4):  # four sessions: rows in blocks before the last catalog
        con = connect(good)
        con.execute("INSERT INTO scores (run_id, reward, prompt_set, prompt, sample_index, eval_seed, "
                    f"reward_queries, value) SELECT 'r{b}_' || (i % 7), 'aesthetic', 'toy-seen', md5(i::varchar) "
                    "|| i, 0, i, 0, i / 3.0 FROM range(60000) t(i)")
        con.close()
    data = good.read_bytes()
    db = folder / "cut.duckdb"
    for k in range(1, 40):
        db.write_bytes(data[: len(data) * k // 40])
        try:
            con = duckdb.connect(str(db), read_only=True)
        except duckdb.Error:
            continue
        try:
            try:  # what the check read before: every table's columns and the schema version
                _table_columns(con)
                con.execute("SELECT value FROM bench_meta").fetchall()
            except duckdb.Error:
                continue
            try:
                con.execute("SELECT count(*), bit_xor(hash(t)) FROM scores t").fetchone()
            except duckdb.Error:
                return db
        finally:
            con.close()
    raise AssertionError("no cut leaves the schema readable and the rows not")


@pytest.mark.parametrize("command", ["run", "ingest", "runs", "report"])
def test_a_database_cut_past_its_schema_is_refused_before_any_training(tmp_path, out, capsys, command,
                                                                      cut_past_schema):
    """Such a file opens and shows its tables; only a scan of every row finds the cut. Each command refuses it in
    one line naming the file and the way to rebuild it, and `run` trains nothing first."""
    db = tmp_path / "cut.duckdb"
    db.write_bytes(cut_past_schema.read_bytes())
    before = _sha(db)
    tiny = ["--budget", "8", "--num-steps", "2", "--samples-per-epoch", "8", "--no-eval", "--no-progress"]
    args = {"run": ["--methods", "ddpo-2", "--out", str(out), *tiny], "ingest": ["--out", str(out)],
            "runs": ["--out", str(out)], "report": ["--out", str(tmp_path / "rep")]}[command]
    rc, lines = _run_cli(capsys, command, "--db", str(db), *args)
    assert rc == 2 and len(lines) == 1 and "cut.duckdb is damaged" in lines[0] and "bench ingest" in lines[0], lines
    assert _sha(db) == before
    assert list((out / "runs").iterdir()) == []  # nothing trained


def test_an_older_bench_database_is_migrated_in_one_go_and_keeps_its_rows(tmp_path, out, capsys):
    from bench.store.database import COLUMNS, SCHEMA_VERSION

    db = _older_bench(tmp_path / "old.duckdb")
    rc, _ = _run_cli(capsys, "ingest", "--out", str(out), "--db", str(db))
    assert rc == 0
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT value FROM bench_meta WHERE key = 'schema_version'").fetchone()[0] == \
            str(SCHEMA_VERSION)
        cols = {t: {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                               "WHERE table_name = ?", [t]).fetchall()} for t in COLUMNS}
        assert all(cols[t] == set(COLUMNS[t]) for t in COLUMNS), cols
        assert con.execute("SELECT run_id, method, error FROM runs").fetchall() == [("old_run", "ddpo-2", None)]
    finally:
        con.close()
    rc, lines = _run_cli(capsys, "runs", "--out", str(out), "--db", str(db))  # and it reads as current now
    assert rc == 0 and not lines


def test_a_new_database_records_its_schema_version(tmp_path, out, capsys):
    from bench.store.database import SCHEMA_VERSION, connect, schema_state

    db = tmp_path / "new.duckdb"
    rc, _ = _run_cli(capsys, "ingest", "--out", str(out), "--db", str(db))
    assert rc == 0
    con = connect(db, read_only=True)
    try:
        assert schema_state(con, db) == "current"
        assert con.execute("SELECT value FROM bench_meta").fetchall() == [(str(SCHEMA_VERSION),)]
    finally:
        con.close()


@pytest.mark.parametrize("command", ["run", "ingest", "report"])
def test_a_parent_that_is_a_file_is_not_a_directory(tmp_path, out, capsys, command):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("mine\n")
    target = blocker / "x" / "bench.duckdb"
    if command == "report":  # report reads a database and writes a folder: the folder's parent is the file
        db = _older_bench(tmp_path / "ok.duckdb")
        rc, lines = _run_cli(capsys, "report", "--db", str(db), "--out", str(blocker / "rep"))
    elif command == "run":
        rc, lines = _run_cli(capsys, "run", "--methods", "ddpo-2", "--out", str(out), "--db", str(target))
    else:
        rc, lines = _run_cli(capsys, "ingest", "--out", str(out), "--db", str(target))
    assert rc == 2 and len(lines) == 1 and "is not a directory" in lines[0], lines
    assert "permission denied" not in lines[0]
    assert blocker.read_text() == "mine\n"
