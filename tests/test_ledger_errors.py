"""Every way a ledger can be unusable surfaces as one ``LedgerError`` naming the URL (password masked), what is
wrong and the fix, from ``open_ledger`` and at request time; ``router ledger`` prints it and exits non-zero."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest_postgres import PASSWORD, free_port, postgres_server  # noqa: F401 - the fixture
from conftest_redis import RedisServer, start_redis_server
from typer.testing import CliRunner

from router import Router, RouterConfig
from router.cli import app
from router.errors import LedgerError
from router.ledger import LedgerRecord, SQLiteLedger, open_ledger
from router.ledger.base import SummaryRow


def _raises(fn: Callable[[], object], *needles: str) -> LedgerError:
    with pytest.raises(LedgerError) as info:
        fn()
    for needle in (*needles, "fix:"):
        assert needle in str(info.value), (needle, str(info.value))
    assert info.value.http_status == 503
    return info.value


def as_unprivileged(fn: Callable[[], str]) -> str:
    """``fn()`` as a user the file permissions apply to. Root ignores them, so as root ``fn`` runs in a forked
    child that switched to ``nobody`` (everything it needs is imported already: it cannot read /root)."""
    if os.geteuid() != 0:
        return fn()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        try:
            os.setgid(65534)
            os.setuid(65534)
            out = fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = f"child raised {type(exc).__name__}: {exc}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def _open_error(url: str) -> str:
    try:
        open_ledger(url).close()
    except LedgerError as exc:
        return f"LedgerError retryable={exc.retryable}: {exc}"
    return "opened"


@pytest.fixture
def shared_tmp() -> Path:
    """A folder other users can enter (pytest's tmp_path lives under a 0700 folder)."""
    folder = Path(tempfile.mkdtemp(prefix="router-ro-"))
    os.chmod(folder, 0o755)
    return folder


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(b"not a database at all " * 200)
    err = _raises(lambda: open_ledger(f"sqlite:///{path}"), str(path), "corrupt", "router ledger doctor")
    assert not err.retryable and isinstance(err.__cause__, sqlite3.DatabaseError)


def test_read_only_file_and_folder(shared_tmp: Path) -> None:
    ro_file = shared_tmp / "ro.sqlite3"
    SQLiteLedger(ro_file).close()
    os.chmod(ro_file, 0o444)
    out = as_unprivileged(lambda: _open_error(f"sqlite:///{ro_file}"))
    assert out.startswith("LedgerError retryable=False") and "read-only" in out and str(ro_file) in out, out
    folder = shared_tmp / "ro-folder"
    folder.mkdir()
    SQLiteLedger(folder / "l.sqlite3").close()
    os.chmod(folder / "l.sqlite3", 0o666)
    os.chmod(folder, 0o555)
    out = as_unprivileged(lambda: _open_error(f"sqlite:///{folder / 'l.sqlite3'}"))
    assert out.startswith("LedgerError retryable=False") and "read-only" in out and "folder" in out, out
    os.chmod(folder, 0o755)


def test_unopenable_path_and_unknown_scheme(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    err = _raises(lambda: open_ledger(f"sqlite:///{tmp_path / 'a-file' / 'ledger.sqlite3'}"), "cannot create or open")
    assert not err.retryable
    _raises(lambda: open_ledger("mysql://u:p@h/db"), "unknown ledger URL scheme 'mysql'", "postgresql://")


def test_a_directory_given_as_the_ledger_is_named_as_one(tmp_path: Path) -> None:
    """The folder exists and is writable: the message says the path is a directory and names a file in it."""
    folder = tmp_path / "dirdb"
    folder.mkdir()
    url = f"sqlite:///{folder}"
    fix = f"name a file inside it, e.g. sqlite:///{folder / 'ledger.sqlite3'}"
    err = _raises(lambda: open_ledger(url), f"{folder} is a directory, not a ledger file", fix)
    assert not err.retryable and "exists and this user may read and write" not in str(err)
    with pytest.raises(LedgerError, match="is a directory, not a ledger file"):
        Router(RouterConfig.load(ledger_url=url))
    result = CliRunner().invoke(app, ["ledger", "report", "--ledger", url], env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "is a directory, not a ledger file" in result.output and fix in result.output
    assert list(folder.iterdir()) == []


def test_a_sqlite_url_without_three_slashes_is_refused_not_made_a_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://ledger.sqlite3", f"sqlite:{tmp_path / 'ledger.sqlite3'}", "sqlite:ledger.sqlite3"):
        assert not _raises(lambda: open_ledger(url), "not a SQLite ledger URL", "sqlite:///PATH").retryable  # noqa: B023
    # a SQLite URI: SQLite made ./x.db while the router named the ledger `file:x.db` (a wrong "readonly" error)
    for url in ("file:x.db", "FILE:x.db?mode=rwc"):
        assert not _raises(lambda: open_ledger(url, journal=True), "a SQLite URI", "sqlite:///PATH").retryable  # noqa: B023
    assert list(tmp_path.iterdir()) == []


def test_request_time_errors_are_ledger_errors(tmp_path: Path) -> None:
    """A ledger closed under the caller, a record missing a field: LedgerError, not sqlite3's exceptions."""
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    bad = LedgerRecord("r", None, "small", 1.0, "e:x")  # type: ignore[arg-type]
    assert _raises(lambda: led.record(bad), "incomplete").record_rejected
    led.close()
    _raises(lambda: led.records(), "closed")
    _raises(lambda: led.try_reserve("b", 1.0, 2.0, 60), "closed")


@pytest.mark.redis
def test_redis_down_and_refused_credentials(tmp_path: Path) -> None:
    down = RedisServer(tmp_path)  # never started: nothing listens on its port
    err = _raises(lambda: open_ledger(f"{down.url}/0?socket_connect_timeout=1"), down.url, "down or unreachable")
    assert err.retryable
    start_redis_server(tmp_path).stop()  # skips where redis-server is not installed
    proc = subprocess.Popen(["redis-server", "--port", str(down.port), "--bind", "127.0.0.1", "--save", "",
                             "--requirepass", "s3cret"], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(0.5)
        err = _raises(lambda: open_ledger(f"{down.url}/0"), "refused the credentials")
        assert not err.retryable
        err = _raises(lambda: open_ledger(f"redis://:wrong@127.0.0.1:{down.port}/0"), "refused the credentials")
        assert "wrong" not in str(err), "the password is masked"
        open_ledger(f"redis://:s3cret@127.0.0.1:{down.port}/0").close()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.postgres
def test_postgres_refused_credentials_and_down(postgres_server) -> None:  # noqa: F811
    wrong = postgres_server.url.replace(PASSWORD, "not-the-password")
    err = _raises(lambda: open_ledger(wrong), "refused the credentials", "router:***@")
    assert not err.retryable and "not-the-password" not in str(err)
    closed = f"postgresql://router:x@127.0.0.1:{free_port()}/router?connect_timeout=2"
    assert _raises(lambda: open_ledger(closed), "down or unreachable").retryable
    _raises(lambda: open_ledger(postgres_server.url.rsplit("/", 1)[0] + "/nope"), "does not exist")


@pytest.mark.postgres
def test_postgres_url_faults_are_named_as_such_not_as_an_outage(postgres_server) -> None:  # noqa: F811
    base = postgres_server.url.rsplit(":", 1)[0]  # postgresql://router:PASSWORD@127.0.0.1
    for url in (f"{postgres_server.url}?foo=1", f"{base}:99999/router", f"{base}:abc/router",
                f"{postgres_server.url}?sslmode=bogus", f"{postgres_server.url}?connect_timeout=abc",
                f"{postgres_server.url}?target_session_attrs=zz"):
        err = _raises(lambda url=url: open_ledger(url), "router:***@", "the URL itself is not valid",
                      "port from 1 to 65535")  # fmt: skip
        assert not err.retryable and PASSWORD not in str(err), str(err)
        assert "down or unreachable" not in str(err) and "server's log" not in str(err)
    err = _raises(lambda: open_ledger(f"{base}:{free_port()}/router?connect_timeout=2"), "down or unreachable")
    assert err.retryable and "URL itself" not in str(err), "a real outage keeps its message"
    open_ledger(f"{postgres_server.url}?schema=url_faults").close()


def test_router_ledger_on_an_empty_store_does_not_print_its_password(postgres_server) -> None:  # noqa: F811
    url = f"{postgres_server.url}?schema=empty_cli"
    result = CliRunner().invoke(app, ["ledger", "--ledger", url], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "No records yet in postgresql://router:***@" in result.output, result.output
    assert PASSWORD not in result.output


# -- the command line -----------------------------------------------------------------------------------------


def test_a_password_given_as_a_url_parameter_is_masked_too(tmp_path: Path) -> None:
    """libpq takes ``?password=`` (and ``?sslpassword=``), redis-py ``?password=``: the store's message, the command's
    output and the journal folder's STORE note show ``password=***``. The stores are down (closed ports)."""
    port = free_port()
    urls = (f"postgresql://router@127.0.0.1:{port}/router?connect_timeout=2&password=s3cret-pg&sslpassword=s3cret-k",
            f"redis://127.0.0.1:{port}/0?password=s3cret-redis")
    for url in urls:
        err = _raises(lambda url=url: open_ledger(url, journal=False), "down or unreachable", "password=***")
        assert "s3cret" not in str(err), str(err)
        result = CliRunner().invoke(app, ["ledger", "--ledger", url], env={"COLUMNS": "200"})
        assert result.exit_code != 0 and "password=***" in result.output, result.output
        assert "s3cret" not in result.output, result.output
    from router.ledger.journal import Journal

    journal = Journal(tmp_path / "journal", url=urls[1])
    try:
        assert (tmp_path / "journal" / "STORE").read_text() == f"redis://127.0.0.1:{port}/0?password=***\n"
    finally:
        journal.close()


def test_router_ledger_commands_print_the_error_not_a_traceback(tmp_path: Path) -> None:
    corrupt = tmp_path / "c.sqlite3"
    corrupt.write_bytes(b"garbage " * 500)
    for url in (f"sqlite:///{corrupt}", "mysql://h/db"):
        for args in ([], ["report"], ["export", "-o", str(tmp_path / "x.csv")], ["prune", "--older-than", "1d"],
                     ["retention"]):  # fmt: skip
            result = CliRunner().invoke(app, ["ledger", *args, "--ledger", url], env={"COLUMNS": "200"})
            assert result.exit_code == 2, (args, result.output)
            assert isinstance(result.exception, SystemExit), (args, result.exception)
            assert "error:" in result.output and "fix:" in result.output and "Traceback" not in result.output


def test_doctor_checks_replays_and_repairs(tmp_path: Path) -> None:
    from router.ledger.journal import encode, encode_settlement

    path = tmp_path / "l.sqlite3"
    led = SQLiteLedger(path)
    for i in range(5):
        led.record(LedgerRecord(f"r{i}", "m", "small", 1.0, "e:x", ts=1_700_000_000.0 + i))
    led._conn.execute("UPDATE summary_hourly SET requests = 99")  # a summary that disagrees with its records
    held = led.try_reserve("b", 10.0, 100.0, 3600, hold_s=60.0)
    assert held is not None
    led.close()
    folder = tmp_path / "l.sqlite3.journal"
    folder.mkdir()
    # a stopped process's journal: a call's record and its settlement, which never reached the store
    (folder / "j-h-424242-1.jsonl").write_bytes(encode(LedgerRecord("late", "m", "small", 2.0, "e:x"))
                                                + encode_settlement((held, 2.0)))
    url = f"sqlite:///{path}"

    def doctor(*extra: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["ledger", "doctor", "--ledger", url, *extra], env={"COLUMNS": "200"})
        assert "Traceback" not in result.output
        return result.exit_code, result.output

    code, out = doctor("--no-replay")
    assert code == 1 and "integrity check: ok" in out and "rows disagree" in out
    assert "hold 1 records not yet replayed" in out, out
    code, out = doctor("--repair")
    assert code == 0, out
    assert "replayed 1 journaled records" in out and "rebuilt the hourly summary" in out and "no problems" in out
    led = SQLiteLedger(path)
    assert sorted(r.request_id for r in led.records()) == ["late", "r0", "r1", "r2", "r3", "r4"]
    assert sum(t["requests"] for t in led.totals()) == 6
    assert led.budget_used("b", 3600) == 2.0, "the replayed settlement replaced the 10 J hold with the 2 J used"
    led.close()
    corrupt = tmp_path / "c.sqlite3"
    corrupt.write_bytes(b"garbage " * 500)
    result = CliRunner().invoke(app, ["ledger", "doctor", "--ledger", f"sqlite:///{corrupt}"])
    assert result.exit_code == 1 and "does not open" in result.output and "corrupt" in result.output


def test_doctor_says_what_to_do_with_records_set_aside_and_is_clean_once_they_are_moved(tmp_path: Path) -> None:
    from router.ledger.journal import encode

    path = tmp_path / "l.sqlite3"
    SQLiteLedger(path).close()
    folder = tmp_path / "l.sqlite3.journal"
    folder.mkdir()
    # a stopped process's journal whose last line was torn by a power cut
    (folder / "j-h-424242-1.jsonl").write_bytes(encode(LedgerRecord("ok", "m", "small", 2.0, "e:x"))
                                                + b'{"request_id": "torn", "mod')
    url = f"sqlite:///{path}"

    def doctor() -> tuple[int, str]:
        result = CliRunner().invoke(app, ["ledger", "doctor", "--ledger", url], env={"COLUMNS": "300"})
        assert "Traceback" not in result.output
        return result.exit_code, result.output

    for _ in range(2):  # the run that sets the line aside, and every run after it until someone acts
        code, out = doctor()
        assert code == 1, out
        assert f"1 records the store refused (or journal lines that did not parse) are set aside in " \
               f"{folder / 'rejected.jsonl'} and will not be retried" in out
        assert "fix: look at the file" in out and "then move or delete it" in out
    (folder / "rejected.jsonl").rename(tmp_path / "rejected-seen.jsonl")
    code, out = doctor()
    assert code == 0 and "no problems" in out and "set aside" not in out, out


def test_doctor_as_a_library_call_finds_the_store_s_own_journal_folder(tmp_path: Path) -> None:
    """``diagnose(url)`` without a journal folder looks in the one the store's journal uses."""
    from router.ledger.doctor import diagnose
    from router.ledger.journal import encode

    path = tmp_path / "l.sqlite3"
    SQLiteLedger(path).close()
    folder = tmp_path / "l.sqlite3.journal"
    folder.mkdir()
    (folder / "j-h-424242-1.jsonl").write_bytes(encode(LedgerRecord("late", "m", "small", 2.0, "e:x")))
    rep = diagnose(f"sqlite:///{path}")
    assert not rep.problems, rep.findings
    assert any("replayed 1 journaled records" in a for a in rep.actions), rep.actions
    led = SQLiteLedger(path)
    assert [r.request_id for r in led.records()] == ["late"]
    led.close()


def test_doctor_checks_the_summary_a_day_at_a_time_and_finds_rows_in_the_spans_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The doctor read the whole stored summary and aggregated every record at once: on 1.5 million records over 90
    days with 40 keys (1.37 million summary rows) it held 3.1 GB. It reads a day at a time now, and still finds a
    bad row in a day, and rows without records before the first record, in a day between and after the last."""
    from router.ledger.doctor import summary_mismatches

    day0 = 1_700_006_400.0  # a UTC midnight
    led = SQLiteLedger(tmp_path / "l.sqlite3")
    for d in (0, 1, 3):  # day 2 has no records
        for h in range(3):
            led.record(LedgerRecord(f"r{d}-{h}", "m", "small", 1.0, "e:x", ts=day0 + d * 86_400 + h * 3600 + 5))
    assert summary_mismatches(led) == (0, [])
    stray = "INSERT INTO summary_hourly VALUES (?, 'm', 'small', '', '', '', 'ok', 'e:x', 1, 1.0, 0, 0, 0, 0)"
    for bucket in (day0 - 5 * 86_400, day0 + 2 * 86_400 + 3600, day0 + 10 * 86_400):
        led._conn.execute(stray, (bucket,))
    led._conn.execute("UPDATE summary_hourly SET requests = 99 WHERE bucket = ?", (day0 + 86_400 + 3600,))
    read: list[int] = []
    stored_summary = SQLiteLedger.stored_summary

    def counted(self: SQLiteLedger, *args: Any, **kwargs: Any) -> list[SummaryRow]:
        # TEST DOUBLE: the real stored summary, counting the rows of each read
        rows = stored_summary(self, *args, **kwargs)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(SQLiteLedger, "stored_summary", counted)
    count, examples = summary_mismatches(led, limit=10)
    led.close()
    assert count == 4, examples
    assert sum("without records" in e for e in examples) == 3 and sum("requests 99" in e for e in examples) == 1
    assert sum(read) == 12 and max(read) <= 4  # a day's rows (and a stray one) at a time, never all twelve
