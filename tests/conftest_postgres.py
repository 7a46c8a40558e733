"""A real PostgreSQL server for the PostgreSQL ledger tests: ``initdb`` into a temp dir and ``postgres`` on a free
loopback port, password authentication on TCP.

Import the fixture into a test module (``from conftest_postgres import postgres_server``). PostgreSQL refuses to
run as root, so as root the server runs as the ``postgres`` user (made by Debian's package) or ``nobody``. Tests
skip, saying why, only when no PostgreSQL binaries are installed (``apt-get install -y postgresql``;
``scripts/ensure-services.sh`` does it for ``make test``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

USER, PASSWORD, DATABASE = "router", "router-test-pw", "router"


def find_binary(name: str) -> str | None:
    """``initdb`` / ``pg_ctl`` / ``postgres``: on PATH, or in Debian's ``/usr/lib/postgresql/<major>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return versions[-1] if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server: ``url`` (with the password), and ``stop()`` / ``start()`` for outage tests."""

    folder: Path
    port: int
    user: str | None  # the unprivileged user it runs as (None: as ourselves)
    fsync: bool = False  # tests: off (a test server's durability does not matter); benchmarks: on

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), user=self.user, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> None:
        pg_ctl = find_binary("pg_ctl")
        assert pg_ctl is not None
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.folder} "
                f"-c fsync={'on' if self.fsync else 'off'}")
        self._run(pg_ctl, "-D", str(self.folder / "data"), "-l", str(self.folder / "log"), "-w", "-t", "60",
                  "-o", opts, "start")  # fmt: skip

    def stop(self) -> None:
        pg_ctl = find_binary("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop", check=False)

    def log(self) -> str:
        path = self.folder / "log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def start_postgres(*, fsync: bool = False) -> PostgresServer:
    """initdb + start on a free port; the caller stops it. Raises RuntimeError when it cannot start."""
    initdb = find_binary("initdb")
    if initdb is None or find_binary("pg_ctl") is None:
        raise FileNotFoundError("initdb/pg_ctl")
    user = None
    if os.geteuid() == 0:
        for candidate in ("postgres", "nobody"):
            try:
                pwd.getpwnam(candidate)
                user = candidate
                break
            except KeyError:
                continue
    folder = Path(tempfile.mkdtemp(prefix="router-pg-"))
    os.chmod(folder, 0o700)
    pwfile = folder / "pw"
    pwfile.write_text(PASSWORD + "\n")
    if user is not None:
        entry = pwd.getpwnam(user)
        for p in (folder, pwfile):
            os.chown(p, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(folder, free_port(), user, fsync)
    done = server._run(initdb, "-D", str(folder / "data"), "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
                       "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync", check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed: {done.stderr[-2000:]}")
    try:
        server.start()
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(f"postgres did not start: {exc.stderr}\n{server.log()}") from exc
    import psycopg

    deadline = time.time() + 30
    while True:
        try:
            with psycopg.connect(f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{server.port}/postgres",
                                 autocommit=True) as conn:  # fmt: skip
                conn.execute(f"CREATE DATABASE {DATABASE}")
            return server
        except psycopg.OperationalError:
            if time.time() > deadline:
                raise
            time.sleep(0.2)


def stop_postgres(server: PostgresServer) -> None:
    server.stop()
    shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server owned by this test session."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'router[postgresql]')")
    try:
        server = start_postgres()
    except FileNotFoundError:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql); PostgreSQL ledger untested")
    yield server
    stop_postgres(server)


def schema_at_step(conn: Any, schema: str, version: int) -> None:
    """``schema`` as a release at migration step ``version`` left it: its steps applied and its version stored, as
    an upgrade test's starting point (``conn`` in autocommit)."""
    from router.ledger.postgres_schema import MIGRATIONS

    conn.execute(f"CREATE SCHEMA {schema}")
    conn.execute(f"CREATE TABLE {schema}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for step in MIGRATIONS.steps[:version]:
        for stmt in step.payload:
            conn.execute(stmt.format(s=schema))
    conn.execute(f"INSERT INTO {schema}.meta VALUES ('schema_version', %s)", (str(version),))
