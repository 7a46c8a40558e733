"""A ledger store that hangs (its processes stopped with SIGSTOP: connections stay open, nothing answers) does not
stall the proxy: no store read waits on the event loop once the outage is known, the energy estimates read the
ledger on a thread of their own, a PostgreSQL read ends after the URL's read_timeout, and the budget reads and
reservations made on the proxy's event loop end after request_timeout_s (Redis and PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest_postgres import postgres_server  # noqa: F401 - the fixture
from conftest_redis import start_redis_server
from servers.procs import router_serve, wait_for_record
from test_budgets import REVIEW, policy, setup

from router.config import JournalSettings
from router.errors import LedgerError
from router.ledger import JournaledLedger


@pytest.mark.redis
def test_the_proxy_answers_while_redis_hangs(tmp_path: Path) -> None:
    server = start_redis_server(tmp_path)
    assert server.proc is not None
    root = setup(tmp_path, "name: t\naccuracy: {min_accuracy: 0.7}\n")
    ledger_url = f"{server.url}/0?prefix=hung:"  # redis-py's socket_timeout as shipped
    config = _config(root, ledger_url)
    body = {"model": "router", "messages": REVIEW}
    stopped = False
    try:
        with router_serve(config, tmp_path) as base, httpx.Client(base_url=base, timeout=5) as client:
            started = time.monotonic()
            ids = [client.post("/v1/chat/completions", json=body).json()["id"]]
            os.kill(server.proc.pid, signal.SIGSTOP)
            stopped = True
            # past the estimates' refresh interval (10 s), which once read the ledger on the event loop: a
            # request then waited for the store's timeout (10 s), and so did /health
            while time.monotonic() - started < 12:
                res = client.post("/v1/chat/completions", json=body)
                assert res.status_code == 200, res.text
                ids.append(res.json()["id"])
                assert client.get("/health").status_code == 200
                time.sleep(0.2)
            os.kill(server.proc.pid, signal.SIGCONT)
            stopped = False
            for request_id in ids:  # journaled while the store hung, replayed since
                assert wait_for_record(ledger_url, request_id, timeout=60, poll=0.2) is not None
    finally:
        if stopped:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.mark.redis
def test_a_budget_read_against_a_hung_redis_does_not_stall_the_proxy(tmp_path: Path) -> None:
    """A request under a budget reads and reserves it on the event loop: against a stopped Redis that read held
    the whole proxy (/health, requests without a budget, streams in flight) for the socket timeout. It now waits
    at most the URL's request_timeout_s (1 s by default): the budgeted request is a 503 with an OpenAI-style error,
    the outage starts, and everything else answers meanwhile."""
    server = start_redis_server(tmp_path)
    assert server.proc is not None
    pids = [server.proc.pid]
    try:
        # a long socket timeout: a budget read that waited for it would hold the loop past every client timeout
        _budgeted_request_is_refused_while_the_rest_answers(tmp_path, f"{server.url}/0?prefix=stall:&socket_timeout=60",
                                                            lambda: pids)
    finally:
        _signal(pids, signal.SIGCONT)
        server.stop()


def _budgeted_request_is_refused_while_the_rest_answers(tmp_path: Path, ledger_url: str,
                                                        store_pids: Callable[[], list[int]]) -> None:
    """``router serve`` with a budget kept in the store at ``ledger_url``; the store's processes (``store_pids()``,
    listed once the proxy is connected) stopped while a budgeted request is sent: the proxy keeps answering
    /health meanwhile, the budgeted request is a 503 ``ledger_unavailable`` with Retry-After, a request without a
    budget is answered, and its record reaches the store once it runs again. The caller resumes the processes
    should this fail."""
    root = setup(tmp_path, policy("reject", 1e9, per=3600))
    (root / "policies" / "free.yaml").write_text("name: free\naccuracy: {min_accuracy: 0.7}\n")
    config = _config(root, ledger_url)
    budgeted = {"model": "router", "messages": REVIEW}
    free = {"model": "router:free", "messages": REVIEW}
    refused: list[httpx.Response] = []
    with router_serve(config, tmp_path) as base, httpx.Client(base_url=base, timeout=8) as client:
        assert client.post("/v1/chat/completions", json=budgeted).status_code == 200
        pids = store_pids()
        _signal(pids, signal.SIGSTOP)
        sender = threading.Thread(
            target=lambda: refused.append(client.post("/v1/chat/completions", json=budgeted)), daemon=True)
        sender.start()
        while sender.is_alive():  # the loop answers while the budgeted request waits for the store
            assert client.get("/health").status_code == 200
        sender.join()
        res = refused[0]
        assert res.status_code == 503, res.text
        error = res.json()["error"]
        assert (error["type"], error["code"]) == ("ledger_error", "ledger_unavailable"), error
        assert res.headers["retry-after"]
        answered = client.post("/v1/chat/completions", json=free)
        assert answered.status_code == 200, answered.text
        _signal(pids, signal.SIGCONT)
        assert wait_for_record(ledger_url, answered.json()["id"], timeout=60, poll=0.2) is not None


def _postgres_processes(data: Path) -> list[int]:
    """The postmaster (first line of its pid file) and its children."""
    master = int((data / "postmaster.pid").read_text().split()[0])
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and _parent(p) == master]
    return [master, *children]


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@pytest.mark.postgres
def test_a_postgresql_read_ends_after_read_timeout_when_the_server_hangs(tmp_path, postgres_server) -> None:  # noqa: F811
    """Every PostgreSQL process stopped: a budget read waited for ever (libpq has no read timeout, and the stopped
    server's kernel still acknowledges what is sent). Now it fails after read_timeout, the outage is known, and the
    next reads fail at once; once the server runs again the ledger is back."""
    url = f"{postgres_server.url}?schema=hung&read_timeout=1&connect_timeout=1"
    ledger = JournaledLedger.open(url, JournalSettings(folder=str(tmp_path / "journal"), replay_interval_s=0.2))
    assert ledger.budget_used("b", 3600) == 0.0
    pids = _postgres_processes(postgres_server.folder / "data")
    got: list[BaseException] = []

    def read() -> None:
        try:
            ledger.budget_used("b", 3600)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            got.append(exc)

    try:
        _signal(pids, signal.SIGSTOP)
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(30)  # far beyond read_timeout: only a read that never ends is still running
        assert not reader.is_alive(), "the read waited for the stopped server"
        assert len(got) == 1 and isinstance(got[0], LedgerError) and got[0].retryable
        with pytest.raises(LedgerError, match="could not read m's recent calls"):
            ledger.recent_calls("m", 10)  # the outage is known: at once
    finally:
        _signal(pids, signal.SIGCONT)
    deadline = time.time() + 30
    while ledger.unavailable and time.time() < deadline:
        time.sleep(0.1)
    assert ledger.budget_used("b", 3600) == 0.0
    ledger.close()


@pytest.mark.postgres
def test_a_budget_read_against_a_hung_postgresql_does_not_stall_the_proxy(tmp_path, postgres_server) -> None:  # noqa: F811
    """The PostgreSQL twin of the Redis test above: a budget read or reservation against a stopped PostgreSQL held
    the whole proxy for the read timeout; it now waits at most the URL's request_timeout_s (1 s by default)."""
    pids: list[int] = []

    def listed() -> list[int]:  # once the proxy is connected: its connections' backends too
        pids.extend(_postgres_processes(postgres_server.folder / "data"))
        return pids

    try:
        # a long read timeout: a budget read that waited for it would hold the loop past every client timeout
        _budgeted_request_is_refused_while_the_rest_answers(
            tmp_path, f"{postgres_server.url}?schema=stall&read_timeout=60", listed)
    finally:
        _signal(pids, signal.SIGCONT)


def _config(root: Path, ledger_url: str) -> Path:
    config = root / "router.yaml"
    config.write_text(textwrap.dedent(f"""\
        models_dir: {root / 'models'}
        policies_dir: {root / 'policies'}
        default_policy: t
        ledger_url: '{ledger_url}'
        journal: {{folder: {root / 'journal'}, replay_interval_s: 0.2}}
        proxy: {{warm_up: false}}
        """))
    return config


def _signal(pids: list[int], sig: signal.Signals) -> None:
    """``sig`` to each process still there (a backend whose client closed may have exited since it was listed)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
