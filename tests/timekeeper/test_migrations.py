"""Every migration goes up, down and up again on SQLite and PostgreSQL; `gpushare db`."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from gpushare.cli import main
from timekeeper import database
from timekeeper.models import usage_reports

TABLES = {"usage_reports", "usage_buckets", "budget_policies", "budget_policy_rejections"}
NAMESPACE_KEY_REVISION = "0002_reports_by_namespace"


def tables(url: str) -> set[str]:
    engine = database.make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def revision(url: str) -> str | None:
    engine = database.make_engine(url)
    try:
        with engine.connect() as connection:
            return database.current_revision(connection)
    finally:
        engine.dispose()


def test_every_migration_upgrades_downgrades_and_upgrades_again(empty_database_url: str) -> None:
    url = empty_database_url
    scripts = ScriptDirectory.from_config(database.alembic_config())
    revisions = [script.revision for script in reversed(list(scripts.walk_revisions()))]
    assert revisions[-1] == database.head_revision()
    previous = "base"
    for target in revisions:
        database.upgrade(url, target)
        assert revision(url) == target
        database.downgrade(url, previous)
        assert revision(url) == (None if previous == "base" else previous)
        database.upgrade(url, target)
        assert revision(url) == target
        previous = target
    assert tables(url) == TABLES
    database.downgrade(url, "base")
    assert tables(url) == set()
    database.upgrade(url)
    assert tables(url) == TABLES


def test_schema_matches_the_models(database_url: str) -> None:
    """The migrations create what the models describe (no drift between the two)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from timekeeper.models import Base

    engine = database.make_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_db_command_upgrades_and_downgrades(empty_database_url: str) -> None:
    def gpushare(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gpushare", "db", *args, "--database-url", empty_database_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = gpushare("upgrade")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"at revision {database.head_revision()}")
    assert tables(empty_database_url) == TABLES
    done = gpushare("downgrade", "base")  # an empty ledger: nothing to confirm
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("at revision base (empty)")
    assert tables(empty_database_url) == set()


def test_db_command_reports_an_unreachable_database() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "db",
            "upgrade",
            "--database-url",
            "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot reach the database" in done.stderr


@pytest.mark.parametrize(
    ("url", "revision", "status", "message"),
    [
        pytest.param(
            "sqlitefoo:///{tmp}/x.db",
            None,
            2,
            "gpushare db upgrade: --database-url: must be a sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB URL (got 'sqlitefoo:///{tmp}/x.db')",
            id="unknown-dialect",
        ),
        pytest.param(
            "postgresql+foo://db/x",
            None,
            2,
            "gpushare db upgrade: --database-url: must be a sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB URL (got 'postgresql+foo://db/x')",
            id="unknown-driver",
        ),
        pytest.param(
            "sqlite:///:memory:",
            None,
            2,
            "gpushare db upgrade: --database-url: must be a sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB URL with the path of a file "
            "(got 'sqlite:///:memory:')",
            id="sqlite-in-memory",
        ),
        pytest.param(
            "sqlite://x.db",
            None,
            2,
            "gpushare db upgrade: --database-url: must be a sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB URL with the path of a file "
            "(got 'sqlite://x.db')",
            id="sqlite-two-slashes",
        ),
        pytest.param(
            "sqlite:///{tmp}/not-a-database.db",
            None,
            1,
            "gpushare db upgrade: sqlite:///{tmp}/not-a-database.db is not a usable database: "
            "file is not a database",
            id="not-a-database-file",
        ),
        pytest.param(
            "sqlite:///{tmp}/a-folder",
            None,
            1,
            "gpushare db upgrade: cannot reach the database sqlite:///{tmp}/a-folder: "
            "unable to open database file",
            id="a-folder",
        ),
        pytest.param(
            "sqlite:///{tmp}/x.db",
            "nosuchrev",
            1,
            "gpushare db upgrade: revision: Can't locate revision identified by 'nosuchrev' "
            "(got 'nosuchrev')",
            id="unknown-revision",
        ),
    ],
)
def test_db_command_refuses_bad_input_without_a_traceback(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    url: str,
    revision: str | None,
    status: int,
    message: str,
) -> None:
    (tmp_path / "not-a-database.db").write_text("tokens: []\n" * 100)
    (tmp_path / "a-folder").mkdir()
    argv = ["db", "upgrade", "--database-url", url.format(tmp=tmp_path)]
    assert main([*argv, revision] if revision else argv) == status
    captured = capsys.readouterr()
    assert captured.err.strip() == message.format(tmp=tmp_path)
    assert captured.out == ""


def test_db_command_hides_the_password() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpushare",
            "db",
            "upgrade",
            "--database-url",
            "postgresql://nobody:s3cret@127.0.0.1:1/none?connect_timeout=2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(
        "gpushare db upgrade: cannot reach the database "
        "postgresql+psycopg://nobody:***@127.0.0.1:1/none?connect_timeout=2: "
    )
    assert "s3cret" not in done.stderr


@pytest.mark.parametrize(
    ("environment", "flag", "migrated", "status", "error"),
    [
        pytest.param("env.db", None, "env.db", 0, "", id="url-from-the-environment"),
        pytest.param("env.db", "flag.db", "flag.db", 0, "", id="flag-wins"),
        pytest.param(
            "sqlite://",
            None,
            None,
            2,
            "gpushare db upgrade: GPUSHARE_DATABASE_URL: ",
            id="bad-url-named-by-its-variable",
        ),
    ],
)
def test_db_command_reads_the_database_url_from_the_environment(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    environment: str,
    flag: str | None,
    migrated: str | None,
    status: int,
    error: str,
) -> None:
    def url(name: str) -> str:
        return name if "://" in name else f"sqlite:///{tmp_path / name}"

    monkeypatch.setenv("GPUSHARE_DATABASE_URL", url(environment))
    argv = ["db", "upgrade"] + (["--database-url", url(flag)] if flag else [])
    assert main(argv) == status
    captured = capsys.readouterr()
    assert captured.err.startswith(error)
    created = sorted(path.name for path in tmp_path.glob("*.db"))
    assert created == ([migrated] if migrated else [])
    if migrated:
        assert tables(url(migrated)) == TABLES


def test_going_below_the_namespace_key_keeps_reports_it_cannot_hold(database_url: str) -> None:
    """Two namespaces may hold the same (podUid, sequence) now; the older schema cannot, so
    the downgrade stops with the count instead of losing one of them."""
    engine = database.make_engine(database_url)
    row = {
        "pod_uid": "uid-1",
        "sequence": 1,
        "pod": "train-0",
        "start_at": datetime(2026, 11, 21, 5, 49, tzinfo=UTC),
        "end_at": datetime(2026, 11, 21, 5, 50, tzinfo=UTC),
        "vcuda_core": 50,
        "vcuda_memory": 4,
        "gpu_seconds": 30.0,
        "memory_byte_seconds": 0.0,
        "received_at": datetime(2026, 11, 21, 5, 50, tzinfo=UTC),
    }
    try:
        with engine.begin() as connection:
            connection.execute(
                usage_reports.insert(),
                [{**row, "namespace": "team-a"}, {**row, "namespace": "team-b"}],
            )
        database.downgrade(database_url, NAMESPACE_KEY_REVISION)  # past any later revision
        with pytest.raises(RuntimeError, match="1 \\(podUid, sequence\\) pairs are held by"):
            database.downgrade(database_url, "0001")
        assert revision(database_url) == NAMESPACE_KEY_REVISION
        with engine.connect() as connection:
            assert (
                connection.execute(
                    sa.select(sa.func.count()).select_from(usage_reports)
                ).scalar_one()
                == 2
            )
    finally:
        engine.dispose()


def test_db_downgrade_never_wipes_the_ledger_unasked(empty_database_url: str) -> None:
    def gpushare(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gpushare", "db", *args, "--database-url", empty_database_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert gpushare("upgrade").returncode == 0
    engine = database.make_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO usage_reports (pod_uid, sequence, namespace, pod, start_at, end_at, "
                "vcuda_core, vcuda_memory, gpu_seconds, memory_byte_seconds, received_at) "
                "VALUES ('u', 1, 'team-a', 'p', :t, :e, 50, 4, 30, 0, :e)"
            ),
            {"t": datetime(2026, 11, 1, tzinfo=UTC), "e": datetime(2026, 11, 1, 0, 1, tzinfo=UTC)},
        )
    engine.dispose()

    missing = gpushare("downgrade")
    assert missing.returncode == 2
    assert "the following arguments are required: revision" in missing.stderr
    steps = len(list(ScriptDirectory.from_config(database.alembic_config()).walk_revisions()))
    for target in ("base", f"-{steps}"):
        refused = gpushare("downgrade", target)
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"gpushare db downgrade: revision: downgrading to {target} drops the usage ledger "
            "(1 stored reports) and the running totals; add --delete-ledger to confirm"
        )
        assert tables(empty_database_url) == TABLES
    done = gpushare("downgrade", "base", "--delete-ledger")
    assert done.returncode == 0, done.stderr
    assert tables(empty_database_url) == set()
