"""EmbeddedPostgres: a real PostgreSQL of our own on a free port (as root: run as `postgres`)."""

from __future__ import annotations

import socket

import psycopg
import pytest

from stream.errors import TxwatchError
from txwatch.local.postgres import EmbeddedPostgres, find_bindir

pytestmark = pytest.mark.integration


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_it_serves_sql_on_its_own_port_and_stops_cleanly():
    with EmbeddedPostgres() as pg:
        assert pg.port != 5432 and pg.running
        assert pg.url == f"postgresql+psycopg://txwatch@127.0.0.1:{pg.port}/txwatch"
        with psycopg.connect(pg.url.replace("+psycopg", "")) as conn:
            assert conn.execute("select version()").fetchone()[0].startswith("PostgreSQL ")
            assert conn.execute("select current_user, current_database(), "
                                "pg_encoding_to_char(encoding) from pg_database "
                                "where datname = current_database()").fetchone() == ("txwatch", "txwatch", "UTF8")
            assert conn.execute("show fsync").fetchone() == ("off",)
            conn.execute("create table t (id serial primary key, name text not null)")
            conn.execute("insert into t (name) values (%s), (%s)", ("a", "é"))
            assert conn.execute("select name from t order by id").fetchall() == [("a",), ("é",)]
        url = pg.create_database("wb_extra")
        conn = psycopg.connect(url.replace("+psycopg", ""), autocommit=True)
        assert conn.execute("select current_database()").fetchone() == ("wb_extra",)
        pg.drop_database("wb_extra")  # even with this connection still open: it is ended
        conn.close()
        with psycopg.connect(pg.dsn) as conn:
            assert conn.execute("select count(*) from pg_database where datname = 'wb_extra'").fetchone() == (0,)
        port, workdir = pg.port, pg.workdir
        assert _port_open(port)
    assert not pg.running
    assert not _port_open(port)
    assert not workdir.exists()
    pg.stop()  # twice is fine


def test_a_bin_dir_without_postgresql_is_a_clear_error(tmp_path):
    with pytest.raises(TxwatchError, match=r"no PostgreSQL server binaries .*install Debian's `postgresql` package"):
        EmbeddedPostgres(bindir=tmp_path)


def test_no_postgresql_anywhere_is_a_clear_error(monkeypatch):
    monkeypatch.setattr("txwatch.local.postgres.DEBIAN_BINDIRS", "/nonexistent/*/bin")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(TxwatchError, match=r"install Debian's `postgresql` package"):
        find_bindir()
