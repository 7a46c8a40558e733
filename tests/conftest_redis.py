"""A real ``redis-server`` for the Redis ledger tests, started on a free loopback port in a temp dir.

Import the fixture into a test module (``from conftest_redis import redis_server``). Tests skip, saying why,
only when no ``redis-server`` binary is installed (``apt-get install -y redis-server``;
``scripts/ensure-services.sh`` does it for ``make test``). ``start_redis_server(folder)`` starts one of a test's
own (outage tests stop and start it again on the same port).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    folder: Path
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)  # e.g. ["--replicaof", HOST, PORT]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        import redis

        binary = shutil.which("redis-server")
        assert binary is not None
        log = self.folder / "redis.log"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "",
             "--appendonly", "no", "--logfile", str(log), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.time() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError as exc:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.proc.kill()
                    text = log.read_text() if log.exists() else ""
                    raise RuntimeError(f"redis-server did not start: {text}") from exc
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


def start_redis_server(folder: Path, extra_args: list[str] | None = None) -> RedisServer:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); Redis ledger untested")
    server = RedisServer(folder, extra_args=extra_args or [])
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT`` of a redis-server process owned by this test session."""
    server = start_redis_server(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()
