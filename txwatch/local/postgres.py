"""A throw-away PostgreSQL server for the tests and local runs: ``EmbeddedPostgres``.

The server binaries are the system's (Debian's ``postgresql`` package puts them in
``/usr/lib/postgresql/<version>/bin``; the newest version found is used, then ``initdb`` on
the PATH). Each server gets a fresh cluster in a temporary directory (``initdb --auth=trust
-U txwatch``, UTF8), listens on a free port on 127.0.0.1 only (never the system server on
5432), runs with durability off (fsync, full-page writes and synchronous commit), holds a
database ``txwatch``, and is started with a parent-death signal like the other embedded
servers, so it cannot outlive the process that started it.

``initdb`` and ``postgres`` refuse to run as root: when we are root, both run as the
``postgres`` OS user (``nobody`` if there is none) and the cluster directory is theirs.

    with EmbeddedPostgres() as pg:
        engine = sqlalchemy.create_engine(pg.url)   # postgresql+psycopg://txwatch@127.0.0.1:PORT/txwatch
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from stream.errors import ServiceUnavailable, TxwatchError
from txwatch.local.embedded import die_with_parent, free_port

SUPERUSER = "txwatch"
DATABASE = "txwatch"
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
_INSTALL_HINT = "install Debian's `postgresql` package (apt-get install -y postgresql)"
# Durability off and small buffers: a test server that starts in about a second.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "100",
    "logging_collector": "off",
}


def _version_key(bindir: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` -> (15,); unparseable names sort first."""
    name = Path(bindir).parent.name
    return tuple(int(p) for p in re.findall(r"\d+", name)) or (0,)


def _has_server(bindir: Path) -> bool:
    return all(os.access(bindir / exe, os.X_OK) for exe in ("initdb", "postgres"))


def find_bindir(bindir: str | os.PathLike | None = None) -> Path:
    """The directory holding ``initdb`` and ``postgres``: ``bindir`` if given, else the newest
    ``/usr/lib/postgresql/<version>/bin``, else where ``initdb`` on the PATH lives.

    Raises TxwatchError, saying what to install, when there is none."""
    if bindir is not None:
        path = Path(bindir)
        if _has_server(path):
            return path
        raise TxwatchError(f"no PostgreSQL server binaries (initdb, postgres) in {path}: {_INSTALL_HINT}")
    for candidate in sorted(glob.glob(DEBIAN_BINDIRS), key=_version_key, reverse=True):
        if _has_server(Path(candidate)):
            return Path(candidate)
    on_path = shutil.which("initdb")
    if on_path and _has_server(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    raise TxwatchError(f"no PostgreSQL server binaries found (looked in {DEBIAN_BINDIRS} and the PATH): "
                       f"{_INSTALL_HINT}")


def _unprivileged_user(name: str | None) -> pwd.struct_passwd | None:
    """The account to run the server as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for candidate in ([name] if name else ["postgres", "nobody"]):
        try:
            return pwd.getpwnam(candidate)
        except KeyError:
            continue
    raise TxwatchError(f"running as root, and there is no OS user {name or 'postgres or nobody'} to run "
                       f"PostgreSQL as (initdb and postgres refuse root): {_INSTALL_HINT}, which creates "
                       f"the `postgres` user")


def _traversable_by_others(path: Path) -> bool:
    """Every directory from / down to ``path`` lets other users through (o+x)."""
    path = path.resolve()
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


class EmbeddedPostgres:
    """A PostgreSQL server of our own on a free port of 127.0.0.1; a context manager.

    ``bindir``: where ``initdb`` and ``postgres`` are (default: found, see ``find_bindir``).
    ``user``: the OS account to run as when we are root (default ``postgres``, else ``nobody``).
    """

    name = "postgres"

    def __init__(self, port: int | None = None, bindir: str | os.PathLike | None = None,
                 user: str | None = None) -> None:
        self.bindir = find_bindir(bindir)
        self.port = port or free_port()
        self._account = _unprivileged_user(user)
        self.workdir: Path | None = None
        self.proc: subprocess.Popen | None = None

    # -- process plumbing -------------------------------------------------------------
    def _preexec(self) -> None:
        """Between fork and exec: drop to the unprivileged account, then ask for the
        parent-death signal (a change of credentials clears it, so it comes last)."""
        if self._account is not None:
            os.setgroups([])
            os.setgid(self._account.pw_gid)
            os.setuid(self._account.pw_uid)
        die_with_parent()

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        if self._account is not None:
            env.update(HOME=str(self.workdir), USER=self._account.pw_name, LOGNAME=self._account.pw_name)
        return env

    def _make_workdir(self) -> Path:
        bases = [tempfile.gettempdir(), "/tmp", "/var/tmp"] if self._account is not None else [None]
        for base in bases:
            if base is None or (Path(base).is_dir() and _traversable_by_others(Path(base))):
                workdir = Path(tempfile.mkdtemp(prefix="txwatch-postgres-", dir=base))
                break
        else:
            raise TxwatchError(f"no temporary directory that the OS user {self._account.pw_name} can reach "
                               f"(tried {', '.join(bases)})")
        (workdir / "sock").mkdir()
        if self._account is not None:
            for p in (workdir, workdir / "sock"):
                os.chown(p, self._account.pw_uid, self._account.pw_gid)
        return workdir

    @property
    def datadir(self) -> Path:
        return self.workdir / "data"

    @property
    def log(self) -> Path:
        return self.workdir / "postgres.log"

    def _log_tail(self, chars: int = 800) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return ""

    # -- life cycle ------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "EmbeddedPostgres":
        """initdb a fresh cluster, start the server, wait until it serves, create ``txwatch``."""
        if self.proc is not None:
            return self
        self.workdir = self._make_workdir()
        try:
            self._initdb()
            cmd = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                   "-k", str(self.workdir / "sock"), "-h", "127.0.0.1"]
            for key, value in SERVER_SETTINGS.items():
                cmd += ["-c", f"{key}={value}"]
            with open(self.log, "ab") as out:
                self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             cwd=self.workdir, env=self._env(), preexec_fn=self._preexec)
            self._wait_ready(time.monotonic() + timeout)
            self._execute(f'CREATE DATABASE "{DATABASE}"', dbname="postgres")
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        cmd = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER, "--auth=trust",
               "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=self.workdir,
                              env=self._env(), preexec_fn=self._preexec)
        if done.returncode != 0 and "--no-instructions" in (done.stderr or ""):  # initdb < 14
            cmd.remove("--no-instructions")
            shutil.rmtree(self.datadir, ignore_errors=True)
            done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=self.workdir,
                                  env=self._env(), preexec_fn=self._preexec)
        if done.returncode != 0:
            raise ServiceUnavailable(f"initdb ({self.bindir}) failed with status {done.returncode}: "
                                     f"{(done.stderr or done.stdout).strip()[-800:]}")

    def _wait_ready(self, deadline: float) -> None:
        import psycopg

        while True:
            if self.proc.poll() is not None:
                raise ServiceUnavailable(f"embedded postgres exited with status {self.proc.returncode}: "
                                         f"{self._log_tail()}")
            try:
                psycopg.connect(**self._params("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise ServiceUnavailable(f"embedded postgres did not accept connections on 127.0.0.1:"
                                             f"{self.port} in time ({exc}): {self._log_tail()}") from None
                time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server (fast shutdown: SIGINT, then SIGQUIT, then SIGKILL) and remove its
        directory. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, None)):
                try:
                    proc.send_signal(sig)
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    close = stop

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "EmbeddedPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses and databases -----------------------------------------------------------
    def _params(self, dbname: str) -> dict:
        return {"host": "127.0.0.1", "port": self.port, "user": SUPERUSER, "dbname": dbname}

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL of database ``dbname`` on this server (psycopg 3 driver)."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def url(self) -> str:
        """``postgresql+psycopg://txwatch@127.0.0.1:PORT/txwatch``, as SQLAlchemy takes it."""
        return self.url_for(DATABASE)

    @property
    def dsn(self) -> str:
        """libpq connection string of the ``txwatch`` database (for ``psycopg.connect``)."""
        return " ".join(f"{k}={v}" for k, v in self._params(DATABASE).items())

    def _execute(self, sql: str, dbname: str = DATABASE) -> None:
        import psycopg

        with psycopg.connect(**self._params(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; returns its SQLAlchemy URL."""
        _check_identifier(name)
        self._execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, closing its connections first."""
        import psycopg

        _check_identifier(name)
        with psycopg.connect(**self._params(DATABASE), autocommit=True) as conn:
            force = " WITH (FORCE)" if conn.info.server_version >= 130000 else ""
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')


def _check_identifier(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise TxwatchError(f"not a plain database name: {name!r}")
