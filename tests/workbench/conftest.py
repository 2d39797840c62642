"""Fixtures for the workbench tests: a database of each kind and the workbench bench.

* ``postgres_url`` (session): our own PostgreSQL server (EmbeddedPostgres, a free port on
  127.0.0.1; never the system server), started once, stopped at the end.
* ``database_url`` (per test, parametrised ``sqlite`` and ``postgresql``): an empty database
  of its own, a fresh SQLite file or a fresh ``wb_<hex>`` database on the session server,
  dropped afterwards. A test that takes it runs twice, once per kind.
* ``wb`` / ``make_bench`` (per test): a :class:`~tests.workbench.bench.Bench` (the app on that
  database and a real Redis of the module's, with a key prefix of its own).

The browser fixtures (``chromium_browser``, ``browser_page``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest
from argon2 import PasswordHasher

from tests.workbench.bench import Bench
from txwatch.local.embedded import EmbeddedRedis
from workbench import auth



@pytest.fixture(scope="session")
def postgres_url():
    """SQLAlchemy URL (``postgresql+psycopg://txwatch@127.0.0.1:PORT/txwatch``) of a PostgreSQL
    server started for this test session."""
    from txwatch.local.postgres import EmbeddedPostgres

    with EmbeddedPostgres() as pg:
        yield pg.url


def _admin_connect(url: str):
    """An autocommit psycopg connection to the database of SQLAlchemy URL ``url``."""
    import psycopg

    return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """An empty database of this test's own, SQLite or PostgreSQL (the test runs once for each)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/wb.db"
        return
    server = request.getfixturevalue("postgres_url")  # started only when a postgresql case runs
    name = f"wb_{uuid.uuid4().hex}"
    with _admin_connect(server) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlsplit(server)._replace(path=f"/{name}").geturl()
    with _admin_connect(server) as conn:  # FORCE: connections a test's engine left open
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url):
    """The workbench database of this test (``database_url``), migrated; disposed at the end."""
    from workbench.db import Database, make_engine, migrate

    d = Database(make_engine(database_url))
    migrate(d.engine)
    yield d
    d.dispose()


# -- the workbench bench (tests/workbench/bench.py) ------------------------------------------

@pytest.fixture(scope="module")
def redis_server():
    """A real Redis for this module (never the system one on 6379); tests use key prefixes of their own."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def fast_passwords(monkeypatch):
    """argon2id with small cost parameters: the same code path, milliseconds instead of ~0.15 s a hash."""
    monkeypatch.setattr(auth, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture
def make_bench(database_url, redis_server, tmp_path, fast_passwords):
    """``make_bench(**settings)``: a :class:`Bench` on this test's database (closed at the end)."""
    benches: list[Bench] = []

    def make(**overrides: Any) -> Bench:
        b = Bench(database_url, redis_server.url, tmp_path / f"b{len(benches)}", **overrides)
        benches.append(b)
        return b

    yield make
    for b in benches:
        b.close()


@pytest.fixture
def wb(make_bench) -> Bench:
    """The workbench with default settings."""
    return make_bench()
