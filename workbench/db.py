"""The workbench database: engine, migrations (Alembic) and sessions.

SQLite (a file) is the embedded default; PostgreSQL the production database. Both are
brought to the newest schema by :func:`migrate`, which ``txwatch ui`` and ``txwatch db
upgrade`` run at start.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from stream.errors import ConfigError, ServiceUnavailable

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str, password: str | None = None) -> Engine:
    """An engine for ``url``; SQLite files get WAL, foreign keys and a busy timeout."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"TXWATCH_DATABASE_URL: not a database URL: {url!r}") from None
    if password:
        parsed = parsed.set(password=password)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"TXWATCH_DATABASE_URL: use sqlite:///FILE or postgresql+psycopg://..., not "
                          f"{parsed.get_backend_name()}")
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest revision (Alembic ``upgrade head``); return it."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            from alembic.runtime.migration import MigrationContext

            return MigrationContext.configure(conn).get_current_revision() or ""
    except OperationalError as exc:
        raise ServiceUnavailable(f"cannot reach the workbench database: {exc.orig}") from None


def take_write_lock(session: Session) -> None:
    """SQLite: begin the transaction now and take the database's write lock, before a read
    that a later write depends on (the driver begins a transaction only at the first write,
    so such a read would run outside one and two writers could both act on what they read).
    A write that changes nothing does it; the audit table's triggers fire on no row.
    PostgreSQL callers lock the rows they read instead (``FOR UPDATE``, advisory locks)."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text("UPDATE cases SET id = id WHERE 0"))


def is_migrated(engine: Engine) -> bool:
    """Whether the workbench tables exist."""
    return inspect(engine).has_table("cases")


class Database:
    """An engine and its session factory."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings, *, upgrade: bool = True) -> "Database":
        """The database of ``settings`` (TXWATCH_DATABASE_URL), migrated to the newest schema."""
        pw = settings.database_password.get_secret_value() if settings.database_password else None
        db = cls(make_engine(settings.database_url, pw))
        if upgrade:
            migrate(db.engine)
        return db

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
