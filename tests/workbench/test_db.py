"""The workbench database: migrations, schema against the models, the database's own rules
(append-only audit trail, one open case per account) and configuration errors."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from stream.errors import ConfigError, ServiceUnavailable
from stream.settings import load_settings
from workbench import audit
from workbench.db import MIGRATIONS, Database, is_migrated, make_engine, migrate
from workbench.models import AuditRow, Base, Case, utcnow


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


@pytest.fixture
def engine(database_url):
    e = make_engine(database_url)
    yield e
    e.dispose()


@pytest.fixture
def db(engine):
    migrate(engine)
    return Database(engine)


def test_migrate_brings_an_empty_database_to_head_and_is_idempotent(engine):
    assert not is_migrated(engine)
    assert inspect(engine).get_table_names() == []
    head = _head()
    assert head
    assert migrate(engine) == head
    assert is_migrated(engine)
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert tables - set(Base.metadata.tables) == {"alembic_version"}

    d = Database(engine)
    with d.transaction() as s:
        audit.record(s, "ann", "login", "user", "ann")
        s.add(Case(account_id="a1", status="open"))
    assert migrate(engine) == head               # again: nothing to do, nothing lost
    with engine.connect() as c:
        assert c.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head]
    with d.sessions() as s:
        assert s.execute(select(Case.account_id)).scalars().all() == ["a1"]
        assert audit.verify(s).rows == 1


def test_the_migrated_schema_equals_the_models(db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_the_migrated_schema_has_the_open_case_index_and_audit_triggers(db):
    insp = inspect(db.engine)
    ux = {ix["name"]: ix for ix in insp.get_indexes("cases")}["ux_cases_open_account"]
    assert ux["unique"] and ux["column_names"] == ["account_id"]
    with db.engine.connect() as c:
        if db.engine.dialect.name == "sqlite":
            names = c.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'")
                              ).scalars().all()
            assert sorted(names) == ["audit_no_delete", "audit_no_update"]
        else:
            names = c.execute(text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'audit'::regclass "
                                   "AND NOT tgisinternal")).scalars().all()
            assert names == ["audit_append_only"]


def _audit_rows(engine) -> list[tuple]:
    with engine.connect() as c:
        return [tuple(r) for r in c.execute(text("SELECT id, actor, action, hash FROM audit ORDER BY id"))]


@pytest.mark.parametrize("sql", [
    "UPDATE audit SET actor = 'mallory'",
    "UPDATE audit SET after = NULL WHERE id = 1",
    "DELETE FROM audit",
    "DELETE FROM audit WHERE id = 1",
])
def test_the_audit_table_refuses_update_and_delete(db, sql):
    with db.transaction() as s:
        audit.record(s, "ann", "login", "user", "ann", after={"ok": True})
        audit.record(s, "bob", "claim", "case", 7)
    before = _audit_rows(db.engine)
    assert len(before) == 2
    with pytest.raises(DBAPIError, match="append-only"):
        with db.engine.begin() as c:
            c.execute(text(sql))
    assert _audit_rows(db.engine) == before
    with db.sessions() as s:
        assert audit.verify(s).ok


def _case(account: str, status: str) -> Case:
    return Case(account_id=account, status=status, closed_at=utcnow() if status == "closed" else None)


@pytest.mark.parametrize("first,second", [("open", "open"), ("open", "in_review"),
                                          ("pending_approval", "open"), ("in_review", "pending_approval")])
def test_only_one_case_that_is_not_closed_per_account(db, first, second):
    with db.transaction() as s:
        s.add(_case("acct-1", first))
    with pytest.raises(IntegrityError):
        with db.transaction() as s:
            s.add(_case("acct-1", second))
    with db.sessions() as s:
        assert s.execute(select(Case.status).where(Case.account_id == "acct-1")).scalars().all() == [first]


def test_closed_cases_do_not_count_against_the_open_one(db):
    with db.transaction() as s:
        s.add_all([_case("acct-1", "closed"), _case("acct-1", "closed"), _case("acct-1", "open"),
                   _case("acct-2", "open")])
    with db.transaction() as s:  # close the open one: a new one may open
        case = s.execute(select(Case).where(Case.account_id == "acct-1", Case.status == "open")).unique().scalar_one()
        case.status, case.closed_at = "closed", utcnow()
    with db.transaction() as s:
        s.add(_case("acct-1", "open"))
    with db.sessions() as s:
        rows = s.execute(select(Case.status, Case.active).where(Case.account_id == "acct-1")
                         .order_by(Case.id)).all()
        assert [tuple(r) for r in rows] == [("closed", 0), ("closed", 0), ("closed", 0), ("open", 1)]
    # reopening a closed case while another is open is refused too
    with pytest.raises(IntegrityError):
        with db.transaction() as s:
            first = s.execute(select(Case).where(Case.account_id == "acct-1").order_by(Case.id).limit(1)
                              ).unique().scalar_one()
            first.status, first.closed_at = "open", None


@pytest.mark.parametrize("url", ["mysql://x", "not a url", "mysql+pymysql://u:p@h/db", "redis://localhost/0"])
def test_a_url_that_is_not_a_supported_database_is_a_config_error(url):
    with pytest.raises(ConfigError, match="TXWATCH_DATABASE_URL"):
        make_engine(url)
    with pytest.raises(ConfigError, match="TXWATCH_DATABASE_URL"):
        Database.from_settings(load_settings(database_url=url))


def test_an_unreachable_postgresql_is_service_unavailable():
    from txwatch.local.embedded import free_port

    port = free_port()  # nothing listens there
    settings = load_settings(database_url=f"postgresql+psycopg://txwatch@127.0.0.1:{port}/txwatch")
    with pytest.raises(ServiceUnavailable, match="cannot reach the workbench database"):
        Database.from_settings(settings)


def test_db_upgrade_command(database_url, monkeypatch, capsys):
    from txwatch.cli import main

    monkeypatch.setenv("TXWATCH_DATABASE_URL", database_url)
    assert main(["db", "upgrade"]) == 0
    assert f"workbench database at revision {_head()}" in capsys.readouterr().out
    assert main(["db", "upgrade"]) == 0
    e = make_engine(database_url)
    try:
        assert is_migrated(e)
    finally:
        e.dispose()


def test_db_upgrade_command_on_a_bad_url(monkeypatch, capsys):
    from txwatch.cli import main

    monkeypatch.setenv("TXWATCH_DATABASE_URL", "mysql://x")
    assert main(["db", "upgrade"]) == 2
    assert "txwatch: error: TXWATCH_DATABASE_URL" in capsys.readouterr().err


def test_naive_datetimes_are_refused(db):
    from datetime import datetime

    with pytest.raises(Exception, match="naive datetime"):
        with db.transaction() as s:
            s.add(AuditRow(at=datetime(2026, 1, 1), actor="a", action="x", object_type="t", object_id="1",
                           prev_hash="0" * 64, hash="1" * 64))
