"""Redis ledger across processes: two processes race for one budget through a real redis-server, over
the unix:// URL docs/ledger.md lists, and a URL option redis-py does not take."""

from __future__ import annotations

import json
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
        assert reserve(keys=early, args=["50.0", "100.0", 60, "early", "", "tombstone:hold:"]) == -1
        assert client.get(counter) is None

        late = [counter, "tombstone:hold:late", held, expiry]  # reserved (and its call tried again), then released
        assert reserve(keys=late, args=["50.0", "100.0", 60, "late", "30", "tombstone:hold:"]) == 1
        assert reserve(keys=late, args=["50.0", "100.0", 60, "late", "30", "tombstone:hold:"]) == 1
        assert float(client.get(counter)) == 50.0
        assert release(keys=late, args=[60, "late"]) == 1
        assert release(keys=late, args=[60, "late"]) == 0
        assert float(client.get(counter)) == 0.0
    finally:
        client.delete(*all_keys)
        client.close()


BUDGET_POLICY = """name: capped
accuracy: {min_accuracy: 0.0}
budgets:
  - model: sentiment-onnx
    joules: 100
    per: hour
on_budget_exhausted: reject
"""
HOURLY = "model:sentiment-onnx:3600s"


def _wait_for_replica(replica_url: str, key: str) -> None:
    import redis

    client = redis.Redis.from_url(replica_url)
    try:
        deadline = time.time() + 20
        while client.info("replication").get("master_link_status") != "up" or not client.exists(key):
            assert time.time() < deadline, "the replica did not catch up in 20 s"
            time.sleep(0.05)
    finally:
        client.close()


def test_budgets_read_from_a_replica_or_by_a_user_without_writes_leave_expired_holds_out(
    tmp_path: Path, redis_server: str  # noqa: F811
) -> None:
    """``budget_used`` (what ``router ledger budgets``, the dashboard and every routing decision read) gave expired
    holds back itself, a write: on a replica, or as an ACL user without write commands, the read failed once a
    hold had expired (and opening the ledger wrote its schema version and retention, and pruned, each time). Reads
    now leave expired holds out without changing anything; the next reservation that needs their room gives them
    back, and the processes that write the ledger prune it."""
    import redis
    from cli_helpers import router_main
    from conftest_redis import start_redis_server
    from servers.procs import models_dir

    prefix = f"readonly-{os.getpid()}:"
    writer_url = f"{redis_server}/5?prefix={prefix}"
    admin = redis.Redis.from_url(f"{redis_server}/5")
    admin.acl_setuser("budget-reader", enabled=True, passwords=["+reader-secret"], keys=["*"], reset=True,
                      commands=["+@all", "-@write"])  # fmt: skip
    writer = open_ledger(writer_url, retention_days=30)  # kept by the writers: a reader cannot prune
    (tmp_path / "replica").mkdir()
    replica = start_redis_server(tmp_path / "replica", ["--replicaof", "127.0.0.1", redis_server.rsplit(":", 1)[1]])
    try:
        assert writer.try_reserve(HOURLY, 60.0, 100.0, 3600, hold_s=0.3) is not None  # its process was killed
        assert writer.try_reserve(HOURLY, 30.0, 100.0, 3600) is not None  # a call still running
        time.sleep(0.8)
        counter = next(k for k in admin.scan_iter(match=f"{prefix}budget:*"))
        _wait_for_replica(f"{replica.url}/5", counter.decode())
        assert float(admin.get(counter)) == 90.0

        port = redis_server.rsplit(":", 1)[1]
        reader_url = f"redis://budget-reader:reader-secret@127.0.0.1:{port}/5?prefix={prefix}"
        for url in (reader_url, f"{replica.url}/5?prefix={prefix}"):
            reader = open_ledger(url)
            try:
                assert reader.budget_used(HOURLY, 3600) == pytest.approx(30.0), url
            finally:
                reader.close()

        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / "capped.yaml").write_text(BUDGET_POLICY)
        config = tmp_path / "config.yaml"
        config.write_text(f"models_dir: {models_dir(tmp_path / 'models', {})}\npolicies_dir: {policies}\n"
                          f"default_policy: capped\nledger_url: {json.dumps(reader_url)}\nledger_retention_days: 30\n")
        code, out = router_main("ledger", "budgets", "--config", str(config), "--json")
        assert code == 0, out
        (row,) = [b for b in json.loads(out)["budgets"] if b["budget"] == HOURLY]
        assert row["used"] == pytest.approx(30.0) and row["remaining"] == pytest.approx(70.0)

        assert float(admin.get(counter)) == 90.0, "reading changed nothing"
        assert writer.try_reserve(HOURLY, 70.0, 100.0, 3600, hold_s=60.0) is not None, "the reservation gave it back"
        assert writer.budget_used(HOURLY, 3600) == pytest.approx(100.0)
    finally:
        replica.stop()
        writer.clear()  # type: ignore[attr-defined]
        writer.close()
        admin.acl_deluser("budget-reader")
        admin.close()


# The settlement and release scripts of the previous release, whose processes run beside this one's in a rolling
# upgrade: they know the ``hold:<id>`` key alone, not the ``held`` and ``expiry`` keys of this release's holds.
PREVIOUS_SETTLE = """
local hold = redis.call('GET', KEYS[2])
if hold == 'released' then
  return 0
end
redis.call('DEL', KEYS[2])
if not hold or redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[1], ARGV[1]))
if v < 0 then
  redis.call('SET', KEYS[1], '0', 'KEEPTTL')
end
return 1
"""
PREVIOUS_RELEASE = """
local hold = redis.call('GET', KEYS[2])
if hold == 'released' then
  return 0
end
redis.call('SET', KEYS[2], 'released', 'EX', ARGV[1])
if not hold or redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local back = string.sub(hold, 1, 1) == '-' and string.sub(hold, 2) or '-' .. hold
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[1], back))
if v < 0 then
  redis.call('SET', KEYS[1], '0', 'KEEPTTL')
end
return 1
"""


def test_a_hold_a_previous_release_settled_or_released_is_not_given_back_again_at_its_expiry(
    redis_server: str,  # noqa: F811
) -> None:
    """In a rolling upgrade an old process may settle (or release) a hold a new process reserved; it gave the hold's
    joules back then, but left its ``held`` entry, so at its expiry the new code gave them back a second time: the
    budget read as less used than it was and admitted calls past its limit. Only a hold whose key still holds a
    figure is given back (or left out of ``budget_used``) now."""
    import redis

    from router.ledger.redis import RedisLedger

    prefix = f"previous-{os.getpid()}:"
    led = RedisLedger.from_url(f"{redis_server}/5?prefix={prefix}")
    old = redis.Redis.from_url(f"{redis_server}/5")
    old_settle, old_release = old.register_script(PREVIOUS_SETTLE), old.register_script(PREVIOUS_RELEASE)
    try:
        settled = led.try_reserve("b", 6.0, 20.0, 3600, hold_s=0.3)
        released = led.try_reserve("b", 5.0, 20.0, 3600, hold_s=0.3)
        assert settled is not None and released is not None
        counter = led._holds_keys("b", settled.window_start)[0]
        assert old_settle(keys=[counter, f"{prefix}hold:{settled.id}"], args=["-4.0"]) == 1  # used 2 J of its 6
        assert old_release(keys=[counter, f"{prefix}hold:{released.id}"], args=[7200]) == 1
        assert led.budget_used("b", 3600) == pytest.approx(2.0)
        time.sleep(0.8)  # both holds past their hold_s
        assert led.budget_used("b", 3600) == pytest.approx(2.0), "given back once, when settled or released"
        assert led.hold_counts().expired == 0
        assert led.try_reserve("b", 18.0, 20.0, 3600, hold_s=60.0) is not None
        assert led.try_reserve("b", 1.0, 20.0, 3600, hold_s=60.0) is None, "the budget is full"
        assert led.budget_used("b", 3600) == pytest.approx(20.0)
        counts = led.hold_counts()  # `router ledger doctor`'s figures
        assert (counts.live, counts.live_j, counts.expired) == (1, 18.0, 0)
    finally:
        led.clear()
        led.close()
        old.close()


def test_a_redis_user_without_the_ledgers_keys_or_writes_is_named_not_taken_for_an_outage(
    tmp_path: Path, redis_server: str  # noqa: F811
) -> None:
    """A URL whose Redis user may not touch the ledger's keys (an ACL of ``~other-app:*``) or write was answered
    "check the Redis server's log" as if Redis were down: `router serve` started anyway, journaled every record
    and refused budgeted requests with 503s for good. It is now refused at start, naming the ACL and its fix, as
    refused credentials are."""
    import redis

    from router.config import JournalSettings
    from router.ledger.journaled import JournaledLedger

    port = redis_server.rsplit(":", 1)[1]
    prefix = f"acl-{os.getpid()}:"
    admin = redis.Redis.from_url(f"{redis_server}/0")
    admin.acl_setuser("other-app", enabled=True, passwords=["+pw"], keys=["other-app:*"], commands=["+@all"],
                      reset=True)  # fmt: skip
    admin.acl_setuser("no-writes", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@write"],
                      reset=True)  # fmt: skip
    keeper = open_ledger(f"{redis_server}/0?prefix={prefix}")  # another process keeps it at this schema version
    try:
        url = f"redis://other-app:pw@127.0.0.1:{port}/0?prefix={prefix}"
        for opening in (lambda: open_ledger(url),
                        lambda: JournaledLedger.open(url, JournalSettings(folder=str(tmp_path / "journal")))):
            with pytest.raises(LedgerError, match="Redis user may not run a command the ledger needs") as refused:
                opening()
            assert not refused.value.retryable and "ACL SETUSER" in str(refused.value)
            assert "server's log" not in str(refused.value) and ":pw@" not in str(refused.value)

        reader = open_ledger(f"redis://no-writes:pw@127.0.0.1:{port}/0?prefix={prefix}")  # reads work
        try:
            with pytest.raises(LedgerError, match="may not run a command the ledger needs") as refused:
                reader.record(LedgerRecord("a", "m", "small", 1.0, "estimated:cpu-time"))
            assert not refused.value.retryable
        finally:
            reader.close()
    finally:
        keeper.clear()  # type: ignore[attr-defined]
        keeper.close()
        admin.acl_deluser("other-app", "no-writes")
        admin.close()
