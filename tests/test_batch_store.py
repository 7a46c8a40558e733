"""The batch store on SQLite and on a real PostgreSQL: leases share the queue between workers, a lapsed lease is
taken over and counted, a result is written once, ownership by key, cancel/expire fill the rest."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from conftest_postgres import free_port, postgres_server  # noqa: F401 - fixture
from forking import in_a_forked_child
from typer.testing import CliRunner

from router.batch.service import BatchService, parse_lines
from router.batch.store import BatchStore, default_store_url
from router.cli import app
from router.errors import BadRequestError, BatchStoreError, ConfigError, NotFoundError
from router.keys import KeySpec, digest

A = KeySpec("a", digest("sk-a"))
B = KeySpec("b", digest("sk-b"))


def _lines(n: int) -> bytes:
    return "".join(json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n"
                   for i in range(n)).encode()


def _service(store: BatchStore) -> BatchService:
    return BatchService(store, lambda: 1_700_000_000.0, max_file_bytes=1 << 20, max_lines=1000)


def _check_leases(make: Callable[[], BatchStore]) -> None:
    store = make()
    svc = _service(store)
    f = svc.create_file(_lines(40), "in.jsonl", "batch", A)
    doc = svc.create(f["id"], "/v1/chat/completions", "24h", None, A)
    bid = doc["id"]
    # two workers (two connections) claim concurrently: no line twice
    other = make()
    got: list[list[int]] = [[], []]

    def worker(k: int, st: BatchStore) -> None:
        while lines := st.claim(bid, f"w{k}", 3, lease_s=30):
            for line in lines:
                got[k].append(line.idx)
                assert st.finish(line, f"w{k}", "ok", {"custom_id": line.custom_id})

    threads = [threading.Thread(target=worker, args=(k, st)) for k, st in ((0, store), (1, other))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got[0] + got[1]) == list(range(40)) and not set(got[0]) & set(got[1])
    assert store.counts(bid) == {"ok": 40}
    assert [r["custom_id"] for _, r in store.results(bid)] == [f"c{i}" for i in range(40)]

    # a worker that dies keeps its lease until it lapses; then another takes the line over and runs it again
    f2 = svc.create_file(_lines(2), "in.jsonl", "batch", A)
    bid2 = svc.create(f2["id"], "/v1/chat/completions", "24h", None, A)["id"]
    dead = store.claim(bid2, "dead", 1, lease_s=0.2)
    assert [x.attempts for x in dead] == [1]
    assert [x.idx for x in other.claim(bid2, "alive", 5, lease_s=30)] == [1], "a held lease is not taken"
    time.sleep(0.3)
    again = other.claim(bid2, "alive", 5, lease_s=30)
    assert [(x.idx, x.attempts) for x in again] == [(0, 2)], "the lapsed line, its second run counted"
    assert not store.finish(dead[0], "dead", "ok", {"custom_id": "late"}), "the dead worker's late result is dropped"
    assert other.finish(again[0], "alive", "ok", {"custom_id": "c0"})
    assert [r["custom_id"] for _, r in store.results(bid2)] == ["c0"]

    # ownership: another key sees nothing; the batch list is per key
    with pytest.raises(NotFoundError):
        svc.retrieve(bid, B)
    with pytest.raises(NotFoundError):
        svc.file_content(f["id"], None)
    assert [d["id"] for d in svc.list(A)["data"]] == [bid2, bid] or {d["id"] for d in svc.list(A)["data"]} == {
        bid, bid2}
    assert svc.list(B)["data"] == []
    page = svc.list(A, limit=1)
    assert page["has_more"] and svc.list(A, after=page["last_id"])["data"][0]["id"] != page["last_id"]
    for after in ("batch_nope", bid):  # unknown, and another key's: a 400, not a silent first page
        with pytest.raises(BadRequestError, match="`after`") as info:
            svc.list(B if after == bid else A, after=after)
        assert info.value.param == "after"
    ids = sorted([f["id"], f2["id"]])  # one clock second: by id
    files = svc.list_files(A, limit=1, order="asc")
    assert files["has_more"] and [x["id"] for x in files["data"]] == ids[:1]
    assert [x["id"] for x in svc.list_files(A, after=files["last_id"], order="asc")["data"]] == ids[1:]
    # cancel: pending lines fail with batch_cancelled
    f3 = svc.create_file(_lines(3), "in.jsonl", "batch", A)
    bid3 = svc.create(f3["id"], "/v1/chat/completions", "24h", None, A)["id"]
    assert svc.cancel(bid3, A)["status"] == "cancelling"
    assert store.fail_pending(bid3, lambda i, c: {"custom_id": c, "error": {"code": "batch_cancelled"}}) == 3
    assert store.counts(bid3) == {"failed": 3}
    other.close()
    store.close()


def test_a_worker_renews_only_the_lines_it_runs(tmp_path) -> None:
    """A line the worker claimed but lost track of (its end not stored) is not kept alive by the worker's other
    lines: its lease lapses and another worker takes it."""
    store = BatchStore(f"sqlite:///{tmp_path / 'b.sqlite3'}")
    svc = _service(store)
    bid = svc.create(svc.create_file(_lines(2), "in.jsonl", "batch", A)["id"], "/v1/chat/completions", "24h", None,
                     A)["id"]
    running, lost = store.claim(bid, "w", 2, lease_s=0.2)
    store.renew("w", 30, [(bid, running.idx)])
    time.sleep(0.3)
    assert [x.idx for x in store.claim(bid, "other", 2, lease_s=30)] == [lost.idx]
    store.close()


def test_sqlite_store_leases(tmp_path) -> None:
    _check_leases(lambda: BatchStore(f"sqlite:///{tmp_path}/batches.sqlite3"))


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_store_leases(postgres_server) -> None:  # noqa: F811
    schema = "b" + uuid.uuid4().hex[:8]
    _check_leases(lambda: BatchStore(f"{postgres_server.url}?schema={schema}"))


def _outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "router.batch" and r.levelno >= logging.WARNING]


@pytest.mark.postgres
def test_a_postgres_store_down_at_start_waits_for_it_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://router:pw@127.0.0.1:{free_port()}/router"  # nothing listens there
    with pytest.raises(BatchStoreError, match="could not open the batch store"):
        BatchStore(url)  # `router batch list`: an error at once
    caplog.set_level(logging.WARNING, "router.batch")
    store = BatchStore(url, wait_if_down=True)  # `router serve`: it starts, the store is an outage
    assert store.unavailable
    for _ in range(3):  # the scheduler's polls
        with pytest.raises(BatchStoreError) as info:
            store.active_batches()
    err = info.value
    assert err.http_status == 503 and err.code == "batch_store_unavailable" and err.retryable
    assert "pw" not in err.message and err.message.startswith("batch store postgresql://router:***@")
    lines = _outage_lines(caplog)
    assert len(lines) == 1 and "the Batch API answers 503" in lines[0], lines
    store.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_postgres_store_reconnects_after_the_server_restarts(postgres_server,  # noqa: F811
                                                               caplog: pytest.LogCaptureFixture) -> None:
    store = BatchStore(f"{postgres_server.url}?schema=b{uuid.uuid4().hex[:8]}", wait_if_down=True)
    svc = _service(store)
    f = svc.create_file(_lines(1), "in.jsonl", "batch", A)
    caplog.set_level(logging.WARNING, "router.batch")
    try:
        postgres_server.stop()
        postgres_server.start()
        assert svc.file(f["id"], A)["id"] == f["id"], "the connection the restart dropped is replaced at once"
        assert _outage_lines(caplog) == []

        postgres_server.stop()
        for _ in range(3):
            with pytest.raises(BatchStoreError):
                svc.file(f["id"], A)
        assert store.unavailable
        postgres_server.start()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"could not restart postgres: {exc.stderr}\n{postgres_server.log()}")
    assert svc.file(f["id"], A)["id"] == f["id"] and not store.unavailable
    lines = _outage_lines(caplog)
    assert len(lines) == 2 and "the Batch API answers 503" in lines[0] and "is back after" in lines[1], lines
    store.close()


def test_input_files_are_checked_as_openai_does() -> None:
    good = b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}\n'
    deep = b"[" * 100_000 + b"]" * 100_000 + b"\n"  # json's own recursion limit: was an uncaught RecursionError
    lines, errors = parse_lines(good + good + b"not json\n" + b'{"custom_id": "y", "method": "GET"}\n' + deep,
                                "/v1/chat/completions", 100)
    assert [e["code"] for e in errors] == ["duplicate_custom_id", "invalid_json_line", "invalid_method",
                                           "invalid_json_line"]
    assert [e["line"] for e in errors] == [2, 3, 4, 5] and len(lines) == 1
    assert "nests arrays and objects too deeply" in errors[3]["message"]
    # more digits than Python turns into an int: a plain ValueError from json, not a JSONDecodeError
    huge = b'{"custom_id": "z", "method": "POST", "url": "/v1/chat/completions", "body": {"n": ' + b"1" * 5000 + b"}}\n"
    lines, errors = parse_lines(good + huge, "/v1/chat/completions", 100)
    assert [(e["code"], e["line"]) for e in errors] == [("invalid_json_line", 2)] and len(lines) == 1
    assert "integer of more than 4,300 digits" in errors[0]["message"], errors
    svc = _service(BatchStore("sqlite:///:memory:"))
    f = svc.create_file(good + b"{}\n", "in.jsonl", "batch", None)
    doc = svc.create(f["id"], "/v1/chat/completions", "24h", None, None)
    assert doc["status"] == "failed" and doc["errors"]["data"][0]["line"] == 2
    with pytest.raises(BadRequestError, match="endpoint"):
        svc.create(f["id"], "/v1/embeddings", "24h", None, None)
    with pytest.raises(BadRequestError, match="purpose"):
        svc.create_file(good, "in.jsonl", "fine-tune", None)


def test_a_line_holding_raw_line_separators_in_its_strings_is_one_line() -> None:
    text = "a\u2028b\u2029c\x85d"  # json.dumps(ensure_ascii=False) writes them raw; str.splitlines cuts at each
    line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": text}]}}, ensure_ascii=False)
    other = line.replace('"x"', '"y"')
    svc = _service(BatchStore("sqlite:///:memory:"))
    f = svc.create_file((line + "\r\n" + other + "\n").encode(), "in.jsonl", "batch", None)
    doc = svc.create(f["id"], "/v1/chat/completions", "24h", None, None)
    assert doc["status"] == "in_progress" and doc["request_counts"]["total"] == 2, doc["errors"]
    lines, errors = parse_lines((line + "\n").encode(), "/v1/chat/completions", 100)
    assert errors == [] and lines[0][1]["messages"][0]["content"] == text


def test_files_of_one_second_are_listed_newest_first() -> None:
    svc = _service(BatchStore("sqlite:///:memory:"))  # its clock stands still: every file has the same created_at
    made = []
    for i in range(12):
        made.append(svc.create_file(_lines(1), f"in-{i}.jsonl", "batch", None)["id"])
        time.sleep(0.002)  # ids are ordered to the millisecond
    listed = svc.list_files(None)["data"]
    assert [f["id"] for f in listed] == made[::-1]


def test_a_file_that_starts_with_a_byte_order_mark_is_read_as_its_lines() -> None:
    line = json.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": "hi"}]}})
    lines, errors = parse_lines(b"\xef\xbb\xbf" + line.encode() + b"\r\n", "/v1/chat/completions", 100)
    assert errors == [] and [custom_id for custom_id, _ in lines] == ["x"]


def test_default_store_sits_beside_a_sqlite_ledger(tmp_path) -> None:
    assert default_store_url(f"sqlite:///{tmp_path}/ledger.sqlite3") == f"sqlite:///{tmp_path}/batches.sqlite3"
    assert default_store_url("postgresql://u:p@h/db").startswith("postgresql://")


@pytest.mark.parametrize("url", ["bogus://x", "redis://:secret@localhost:6379/0", "sqlite://relative.db"])
def test_a_url_that_is_not_a_batch_store_is_a_config_error(tmp_path, monkeypatch, url: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not a batch store URL; fix: give sqlite:///PATH") as info:
        BatchStore(url)
    assert "secret" not in str(info.value)
    assert list(tmp_path.iterdir()) == [], "no file named after the URL"


def test_batch_list_and_show_refuse_a_foreign_url_and_create_nothing(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (["list"], ["show", "batch_x"]):
        res = CliRunner().invoke(app, ["batch", *args, "--store", "redis://localhost:6379/0"])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: batch store redis://localhost:6379/0: not a batch store URL")
    assert list(tmp_path.iterdir()) == []


def test_batch_list_and_show_do_not_create_a_store(tmp_path) -> None:
    path = tmp_path / "no" / "such" / "batches.sqlite3"
    res = CliRunner().invoke(app, ["batch", "list", "--store", f"sqlite:///{path}"])
    assert res.exit_code == 0, res.output
    assert f"no batches yet: no batch store at {path}" in res.output
    res = CliRunner().invoke(app, ["batch", "show", "batch_x", "--store", str(path)])
    assert res.exit_code == 2 and f"error: no batch 'batch_x': no batch store at {path}" in res.output
    assert list(tmp_path.iterdir()) == []
    BatchStore(str(path)).close()
    res = CliRunner().invoke(app, ["batch", "list", "--store", str(path)])
    assert res.exit_code == 0 and "Batches in" in res.output and "no batches yet" not in res.output, res.output


def test_batch_list_never_cuts_an_id(tmp_path) -> None:
    store = BatchStore(f"sqlite:///{tmp_path}/batches.sqlite3")
    svc = _service(store)
    f = svc.create_file(_lines(1), "in.jsonl", "batch", A)
    bid = svc.create(f["id"], "/v1/chat/completions", "24h", None, A)["id"]
    store.update_batch(bid, {"carbon": {"plan": "waiting for cleaner hours (135 g/kWh forecast from 2022-07-01 "
                                                "10:00 UTC; now 300 g/kWh)"}})
    store.close()
    for width in ("100", "80"):
        res = CliRunner().invoke(app, ["batch", "list", "--store", f"sqlite:///{tmp_path}/batches.sqlite3"],
                                 env={"COLUMNS": width})
        assert res.exit_code == 0 and bid in res.output, res.output  # whole, to copy into `router batch show`
        assert "in_progress" in res.output and "…" not in res.output, "nothing is cut"
        assert "now 300 g/kWh" in res.output, "not a terminal: the table is as wide as its cells (test_cli_tables.py)"


@pytest.mark.postgres
def test_batch_list_and_show_never_print_the_stores_password(postgres_server) -> None:  # noqa: F811
    url = f"{postgres_server.url}?schema=b{uuid.uuid4().hex[:8]}"
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    BatchStore(url).close()
    for args, code in ((["list"], 0), (["show", "batch_nope"], 2)):
        res = CliRunner().invoke(app, ["batch", *args, "--store", url], env={"COLUMNS": "200"})
        assert res.exit_code == code, res.output
        assert f":***@127.0.0.1:{postgres_server.port}/" in res.output and password not in res.output, res.output


@pytest.mark.postgres
def test_a_forked_child_talks_to_the_postgres_store_in_a_session_of_its_own(postgres_server) -> None:  # noqa: F811
    """A batch store opened before the process forks (gunicorn --preload, multiprocessing's fork, Celery's prefork
    pool): the child works on a connection of its own, and closing it leaves the parent's open. On the connection
    it inherited, both processes talked in one server session, each reading replies meant for the other."""

    store = BatchStore(f"{postgres_server.url}?schema=b{uuid.uuid4().hex[:8]}")

    def session() -> int:
        with store._lock:
            return int(store._connection().execute("SELECT pg_backend_pid()").fetchone()[0])

    try:
        parents = session()
        def in_the_child() -> None:  # a failed assert or an exception ends the child with exit code 1
            assert session() != parents, "the child talks in the parent's server session"
            svc = _service(store)
            doc = svc.create(svc.create_file(_lines(1), "in.jsonl", "batch", A)["id"], "/v1/chat/completions", "24h",
                             None, A)
            assert doc["id"] in store.active_batches()
            store.close()

        in_a_forked_child(in_the_child, "the child worked in a session of its own")
        assert session() == parents, "the parent's session outlived the child's close"
    finally:
        store.close()


def test_a_child_forked_while_the_sqlite_store_waits_to_write_works_on_a_connection_of_its_own(tmp_path) -> None:
    """A SQLite batch store opened before the process forks (gunicorn --preload, multiprocessing's fork, Celery's
    prefork pool), forked while one of the parent's threads was writing (waiting for the file's write lock, held by
    another connection here, as another process's scheduler or `router batch` holds it): the child's first write
    waited for ever on the store's lock, held by a thread the child does not have, or failed as "database is locked"
    on the connection it inherited. Now the fork waits for the write in flight, and the child writes on a connection
    of its own; the parent goes on on its own."""
    db = tmp_path / "batches.sqlite3"
    store = BatchStore(f"sqlite:///{db}")
    svc = _service(store)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # the file's write lock
    writer = threading.Thread(target=svc.create_file, args=(_lines(1), "parent.jsonl", "batch", A))
    writer.start()
    _wait_until(lambda: _held_by_another_thread(store._lock), "the parent's writer never started its write")
    threading.Timer(0.5, holder.execute, ("COMMIT",)).start()  # the other process finishes, during the fork

    def in_the_child() -> None:  # a failed assert or an exception ends the child with exit code 1
        file_id = svc.create_file(_lines(2), "child.jsonl", "batch", A)["id"]
        doc = svc.create(file_id, "/v1/chat/completions", "24h", None, A)
        assert doc["id"] in store.active_batches()
        assert sorted(f["filename"] for f in store.list_files(A.key_hash)[0]) == ["child.jsonl", "parent.jsonl"]
        store.close()

    try:
        in_a_forked_child(in_the_child, "the child wrote on a connection of its own", timeout_s=20)
        writer.join(30)
        assert len(store.active_batches()) == 1
        svc.create_file(_lines(1), "parent, after the child.jsonl", "batch", A)
        assert len(store.list_files(A.key_hash)[0]) == 3
    finally:
        holder.close()
        store.close()


def _held_by_another_thread(lock: Any) -> bool:
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
