"""Redis ledger across processes: two processes race for one budget through a real redis-server, over
the unix:// URL docs/ledger.md lists, and a URL option redis-py does not take."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest_redis import redis_server  # noqa: F401 - the fixture
from typer.testing import CliRunner

from router.cli import app
from router.errors import LedgerError
from router.ledger import LedgerRecord, open_ledger

pytestmark = pytest.mark.redis

RACER = """
import sys
from router.ledger import open_ledger
led = open_ledger(sys.argv[1])
wins = sum(led.try_reserve("team", 1.0, 150.0, 3600) is not None for _ in range(100))
print(wins)
"""


def test_processes_share_one_budget_atomically(redis_server: str) -> None:  # noqa: F811
    url = f"{redis_server}/0?prefix=procs:"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    wins = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(wins) == 150, wins
    led = open_ledger(url)
    assert led.budget_used("team", 3600) == pytest.approx(150.0)
    led.clear()  # type: ignore[attr-defined]
    led.close()


def test_records_from_several_processes_add_up(redis_server: str) -> None:  # noqa: F811
    url = f"{redis_server}/0?prefix=writers:"
    code = (
        "import sys\nfrom router.ledger import open_ledger, LedgerRecord\nled = open_ledger(sys.argv[1])\n"
        "for i in range(50):\n    led.record(LedgerRecord(f'{sys.argv[2]}-{i}', 'm', 'small', 0.5, "
        "'estimated:cpu-time', ts=1_700_000_000.0 + i))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, url, f"p{k}"]) for k in range(3)]
    assert all(p.wait(60) == 0 for p in procs)
    led = open_ledger(url)
    assert len(led.records()) == 150
    assert led.spent(since=0) == pytest.approx(75.0)
    led.record(LedgerRecord("x", "m", "small", 1.0, "estimated:cpu-time", ts=1_700_000_000.0))
    assert led.totals("model")[0]["requests"] == 151
    led.clear()  # type: ignore[attr-defined]
    led.close()


def test_a_unix_socket_url_opens_the_ledger() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server); Redis ledger untested")
    folder = Path(tempfile.mkdtemp(prefix="router-rs-"))  # short: a socket path has at most 107 bytes
    socket = folder / "redis.sock"
    proc = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(socket), "--dir", str(folder), "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 20
        while not socket.exists():
            assert proc.poll() is None and time.time() < deadline, "redis-server did not open its socket"
            time.sleep(0.05)
        url = f"unix://{socket}?db=1&prefix=sock:"
        led = open_ledger(url)
        led.record(LedgerRecord("over-a-socket", "m", "small", 2.0, "estimated:cpu-time"))
        assert led.try_reserve("team", 1.0, 5.0, 3600) is not None
        led.close()
        led = open_ledger(url)
        assert [r.request_id for r in led.records()] == ["over-a-socket"]
        assert led.budget_used("team", 3600) == pytest.approx(1.0)
        led.close()
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def test_an_option_redis_does_not_take_is_refused_naming_it(redis_server: str) -> None:  # noqa: F811
    url = f"{redis_server}/0?prefix=options:&sockettimeout=2"
    with pytest.raises(LedgerError) as info:
        open_ledger(url)
    assert "'sockettimeout'" in str(info.value) and "socket_timeout" in info.value.fix
    assert not info.value.retryable
    result = CliRunner().invoke(app, ["ledger", "--ledger", url], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "'sockettimeout'" in result.output and "fix:" in result.output
    open_ledger(f"{redis_server}/0?prefix=options:&max_connections=4&health_check_interval=5").close()


def test_a_database_that_is_not_a_number_is_refused_not_read_as_db_0(redis_server: str) -> None:  # noqa: F811
    for url in (f"{redis_server}/abc", f"{redis_server}/-1", f"{redis_server}/1/2", f"{redis_server}/0?db=x"):
        with pytest.raises(LedgerError) as info:
            open_ledger(url)
        assert str(info.value).startswith(f"ledger {url}: the database"), str(info.value)
        assert "the URL's path is the database number" in info.value.fix and not info.value.retryable
    result = CliRunner().invoke(app, ["ledger", "--ledger", f"{redis_server}/abc"], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "No records yet" not in result.output, result.output
    with pytest.raises(LedgerError) as info:
        open_ledger(f"{redis_server}/99")  # redis-server's default `databases` is 16
    assert "past the server's `databases` setting" in str(info.value) and not info.value.retryable
    open_ledger(f"{redis_server}/15?prefix=dbnumber:").close()


def test_an_empty_prefix_is_refused(redis_server: str) -> None:  # noqa: F811
    import redis

    from router.ledger.redis import RedisLedger

    url = f"{redis_server}/0?prefix="
    with pytest.raises(LedgerError) as info:
        open_ledger(url)
    assert str(info.value).startswith(f"ledger {url}: the key prefix is empty"), str(info.value)
    assert "?prefix=router:" in info.value.fix and not info.value.retryable
    client = redis.Redis.from_url(f"{redis_server}/0")
    try:
        with pytest.raises(LedgerError, match="the key prefix is empty"):
            RedisLedger(client, prefix="")
        assert client.exists("meta") == 0, "nothing was written at the database's top level"
    finally:
        client.close()


def test_clear_deletes_its_own_keys_even_when_its_prefix_holds_glob_characters(redis_server: str) -> None:  # noqa: F811
    """`clear()` matched `prefix*` unescaped: a ledger prefixed `r?:` also deleted the keys of a ledger `rx:`."""
    mine, other = open_ledger(f"{redis_server}/0?prefix=r%3F:"), open_ledger(f"{redis_server}/0?prefix=rx:")
    try:
        for led in (mine, other):
            led.record(LedgerRecord("a", "m", "small", 1.0, "estimated:cpu-time", ts=1_700_000_000.0))
        mine.clear()  # type: ignore[attr-defined]
        assert mine.records() == [] and [r.request_id for r in other.records()] == ["a"]
    finally:
        other.clear()  # type: ignore[attr-defined]
        mine.close()
        other.close()


def test_a_reservation_redis_runs_after_the_client_gave_up_on_it_is_given_back(tmp_path: Path) -> None:
    """A Redis paused past ``request_timeout_s`` (SIGSTOP, as a host that froze, or a slow command of another
    client) still runs the reservation when it resumes. The client had reported it failed, so nobody settles it:
    it counted as spent until the window ended (a day here), refusing requests with 429s the budget had room for.
    Now the client releases it by id, and a hold that arrives after its release holds nothing."""
    from conftest_redis import start_redis_server

    from router.ledger.redis import RedisLedger

    server = start_redis_server(tmp_path)
    assert server.proc is not None
    led = RedisLedger.from_url(f"{server.url}/0?prefix=given-up:&request_timeout_s=0.2")
    try:
        assert led.try_reserve("day", 10.0, 100.0, 86_400) is not None  # Redis has the script cached, as in use
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            with pytest.raises(LedgerError, match="reserve budget"):
                led.try_reserve("day", 80.0, 100.0, 86_400)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        led.release_given_up()  # what the background thread does once Redis answers, done here to wait for it
        assert led.budget_used("day", 86_400) == pytest.approx(10.0)
        assert led.try_reserve("day", 90.0, 100.0, 86_400) is not None
    finally:
        led.close()
        server.stop()


def test_a_release_leaves_a_tombstone_and_gives_back_once_in_either_order(redis_server: str) -> None:  # noqa: F811
    """The reservation and its release come on different connections, so Redis may run them in either order."""
    import redis

    from router.ledger.redis_schema import RELEASE, RESERVE

    client = redis.Redis.from_url(f"{redis_server}/0")
    reserve, release = client.register_script(RESERVE), client.register_script(RELEASE)
    counter, held, expiry = "tombstone:budget:day:0", "tombstone:held:day:0", "tombstone:expiry:day:0"
    all_keys = (counter, held, expiry, "tombstone:hold:early", "tombstone:hold:late")
    client.delete(*all_keys)
    try:
        early = [counter, "tombstone:hold:early", held, expiry]  # released before its reservation arrives
        assert release(keys=early, args=[60, "early"]) == 0
        assert reserve(keys=early, args=["50.0", "100.0", 60, "early", ""]) == -1
        assert client.get(counter) is None

        late = [counter, "tombstone:hold:late", held, expiry]  # reserved (and its call tried again), then released
        assert reserve(keys=late, args=["50.0", "100.0", 60, "late", "30"]) == 1
        assert reserve(keys=late, args=["50.0", "100.0", 60, "late", "30"]) == 1
        assert float(client.get(counter)) == 50.0
        assert release(keys=late, args=[60, "late"]) == 1
        assert release(keys=late, args=[60, "late"]) == 0
        assert float(client.get(counter)) == 0.0
    finally:
        client.delete(*all_keys)
        client.close()
