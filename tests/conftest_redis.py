"""A real ``redis-server`` for the Redis ledger tests, started on a free loopback port in a temp dir.

Import the fixture into a test module (``from conftest_redis import redis_server``). Tests skip, saying why,
only when no ``redis-server`` binary is installed (``apt-get install -y redis-server``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT`` of a redis-server process owned by this test session."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); Redis ledger untested")
    import redis

    folder = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = folder / "redis.log"
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.time() + 20
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError as exc:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"redis-server did not start: {log.read_text() if log.exists() else ''}") from exc
            time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
