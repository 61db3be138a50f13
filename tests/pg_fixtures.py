"""A throwaway PostgreSQL server for the registry tests: one per test session, a fresh
database per test (pytest-postgresql's shape, without the dependency).

The server runs from Debian's binaries (``initdb``/``pg_ctl``), as a non-root user (as
``postgres`` through ``runuser`` when the tests run as root: PostgreSQL refuses to run as
root), in a private temp dir, listening on a unix socket only (``listen_addresses=''``),
with trust authentication for its one role. It is stopped and deleted at the end.

Without the binaries a developer's run skips the registry tests and says how to install
them (``.ci/ensure-postgres``); in CI (``CI`` set) the same situation fails the tests, so
a CI run can never pass with the registry tests silently skipped.

`benchmarks/bench_registry.py` uses `PostgresServer` too (with fsync on).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROLE = "presetdb"
PORT = 5432  # only names the socket file: the socket lives in a private directory
INSTALL_HINT = (
    "install PostgreSQL's server binaries with `.ci/ensure-postgres` (as root: apt-get "
    "install -y postgresql) or `sudo apt-get install -y postgresql`, then rerun; "
    "PRESETDB_PG_BINDIR may name the directory holding initdb and pg_ctl"
)


class PostgresUnavailable(RuntimeError):
    """No server could be started here (binaries missing, or initdb/pg_ctl failed)."""


def find_bindir() -> Path:
    """The directory holding initdb and pg_ctl."""
    candidates: list[str] = []
    if os.environ.get("PRESETDB_PG_BINDIR"):
        candidates.append(os.environ["PRESETDB_PG_BINDIR"])
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).resolve().parent))
    # Debian keeps them off PATH, one directory per major version: newest first.
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda p: int(Path(p).parent.name), reverse=True)
    for directory in candidates:
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    raise PostgresUnavailable(f"PostgreSQL server binaries (initdb, pg_ctl) not found: {INSTALL_HINT}")


class PostgresServer:
    """initdb + pg_ctl start in a temp dir; `url(db)` for SQLAlchemy; `stop()` removes it."""

    def __init__(self, *, durable: bool = False) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="presetdb-pg-"))  # short: sockets have a path limit
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._runas: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                raise PostgresUnavailable(
                    "running as root and there is no `postgres` user to run the server as "
                    f"(PostgreSQL refuses root): {INSTALL_HINT}"
                ) from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._runas = ["runuser", "-u", "postgres", "--"]
        settings = ["-c", "listen_addresses=", "-k", str(self.root), "-p", str(PORT)]
        if not durable:
            # Tests throw the data away: skip the disk flushes.
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.settings = settings
        try:
            self._run("initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                      "--locale=C", "--no-instructions")
            self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                      "-o", " ".join(_quote(s) for s in settings), "start")
        except PostgresUnavailable:
            self.stop()
            raise
        self._names = itertools.count(1)

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self._runas, str(self.bindir / tool), *args]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{tool} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}\n{log}"
            )

    def url(self, database: str = "postgres") -> str:
        """A postgresql+psycopg URL over the unix socket."""
        from sqlalchemy import URL

        url = URL.create(
            "postgresql+psycopg", username=ROLE, database=database,
            query={"host": str(self.root), "port": str(PORT)},
        )
        return url.render_as_string(hide_password=False)

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.root), port=PORT, user=ROLE, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql)  # sql: test-only statements built from generated names

    def create_database(self, template: str | None = None) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.data.exists():
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            except PostgresUnavailable:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


def _quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'" if value == "" or " " in value else value


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(message: str) -> None:
    if _in_ci():
        pytest.fail(f"CI: the PostgreSQL registry tests must run, but {message}", pytrace=False)
    pytest.skip(f"no PostgreSQL server: {message}")


TEMPLATE = "presetdb_template"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One server for the session, with a template database at presetdb's head schema."""
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        _unavailable(str(exc))
        raise  # unreachable: skip/fail raise
    try:
        from presetdb.store import migrate

        server.admin(f'CREATE DATABASE "{TEMPLATE}"')
        migrate.upgrade(server.url(TEMPLATE), seed_data=False)
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_empty_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database (no schema): for migration tests."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture
def registry_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh registry database at the head schema, no seed data (platforms only)."""
    name = pg_server.create_database(template=TEMPLATE)
    yield pg_server.url(name)
    pg_server.drop_database(name)
