"""Fixtures for the workbench tests: a database of each kind and a real headless Chromium.

* ``postgres_url`` (session): our own PostgreSQL server (EmbeddedPostgres, a free port on
  127.0.0.1; never the system server), started once, stopped at the end.
* ``database_url`` (per test, parametrised ``sqlite`` and ``postgresql``): an empty database
  of its own, a fresh SQLite file or a fresh ``wb_<hex>`` database on the session server,
  dropped afterwards. A test that takes it runs twice, once per kind.
* ``chromium_browser`` (session): Debian's ``chromium`` driven by Playwright (sync API), headless.
  If chromium is missing the tests that use it fail, saying what to install, unless
  ``TXWATCH_SKIP_BROWSER=1``, which skips them instead.
* ``browser_page`` (per test): a page in a fresh browser context of its own.
"""

from __future__ import annotations

import os
import shutil
import uuid
from urllib.parse import urlsplit

import pytest

CHROMIUM_DEFAULT = "/usr/bin/chromium"


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


def chromium_path() -> str | None:
    """The chromium executable: ``chromium`` on the PATH, else /usr/bin/chromium; None if neither."""
    found = shutil.which("chromium")
    if found:
        return found
    return CHROMIUM_DEFAULT if os.access(CHROMIUM_DEFAULT, os.X_OK) else None


def _no_browser(reason: str):
    if os.environ.get("TXWATCH_SKIP_BROWSER") == "1":
        pytest.skip(f"{reason} (TXWATCH_SKIP_BROWSER=1)")
    pytest.fail(f"{reason}; set TXWATCH_SKIP_BROWSER=1 to skip the browser tests instead", pytrace=False)


@pytest.fixture(scope="session")
def chromium_browser():
    """A headless Chromium (Debian's package) as a Playwright ``Browser``."""
    executable = chromium_path()
    if executable is None:
        _no_browser("no chromium executable (on the PATH or /usr/bin/chromium): install Debian's `chromium` "
                    "package (apt-get install -y chromium; `make test` does it when run as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _no_browser("playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def browser_page(chromium_browser):
    """A page in a browser context of this test's own (cookies and storage not shared)."""
    context = chromium_browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()
