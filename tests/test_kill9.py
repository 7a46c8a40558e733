"""`kill -9` loses no acknowledged request: a library process and `router serve` in its default mode (background
ledger writes behind the local journal) are killed while answering; after the journal is replayed every request
that was answered is in the ledger, exactly once, and counts against its budget what it used, once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from servers.procs import ROOT, models_dir, remote_card, router_serve, upstream

from router.config import JournalSettings
from router.ledger import open_ledger

pytestmark = pytest.mark.slow

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"


def _serving(url: str) -> int:
    """The pid of the `router serve` process listening on ``url``'s port (its command line names the port)."""
    port = url.rsplit(":", 1)[1]
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and port.encode() in args and proc.name.isdigit():
            return int(proc.name)
    raise AssertionError(f"no router serve process on port {port}")


def _stored_request_ids(ledger_url: str, journal: Path) -> list[str]:
    """Every record's request id after replaying the journals the killed process left behind."""
    ledger = open_ledger(ledger_url, journal=JournalSettings(folder=journal))  # replays at open
    try:
        return [r.request_id for r in ledger.records()]
    finally:
        ledger.close()


LIBRARY = """
import sys
from router import Router, RouterConfig
router = Router(RouterConfig.load(sys.argv[1]))
while True:
    resp = router.complete([{"role": "user", "content": sys.argv[2]}])
    print(resp.id, flush=True)  # acknowledged: the caller has its answer
"""


def test_a_library_process_killed_mid_run(tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    journal = tmp_path / "journal"
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models_dir(tmp_path / 'models', {})}\nledger_url: {ledger_url}\n"
                      f"journal: {{folder: {journal}}}\n")
    proc = subprocess.Popen([sys.executable, "-c", LIBRARY, str(config), REVIEW], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    acked: list[str] = []
    assert proc.stdout is not None
    while len(acked) < 150:
        line = proc.stdout.readline()
        assert line, f"the library process stopped: {proc.wait()}"
        acked.append(line.strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    stored = _stored_request_ids(ledger_url, journal)
    assert set(acked) <= set(stored), f"{len(set(acked) - set(stored))} acknowledged requests missing"
    assert len(stored) == len(set(stored)), "a request recorded twice"


def test_router_serve_killed_mid_load(tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    journal = tmp_path / "journal"
    with upstream(tmp_path) as up:
        models = models_dir(tmp_path / "models", {"remote-echo": remote_card("remote-echo", up, "echo")},
                            specialist=False)
        config = tmp_path / "config.yaml"
        config.write_text(f"models_dir: {models}\nledger_url: {ledger_url}\njournal: {{folder: {journal}}}\n")
        acked: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()
        with router_serve(config, tmp_path) as url:
            def client() -> None:
                with httpx.Client(base_url=url, timeout=10) as http:
                    while not stop.is_set():
                        try:
                            r = http.post("/v1/chat/completions", json={
                                "model": "remote-echo", "messages": [{"role": "user", "content": "hello"}]})
                        except httpx.HTTPError:
                            return  # the server is gone
                        if r.status_code == 200:
                            with lock:
                                acked.append(r.json()["id"])

            threads = [threading.Thread(target=client) for _ in range(8)]
            for t in threads:
                t.start()
            while len(acked) < 1500:
                time.sleep(0.05)
            os.kill(_serving(url), signal.SIGKILL)  # mid-load: records are queued for the background writer
            stop.set()
            for t in threads:
                t.join(15)
    stored = _stored_request_ids(ledger_url, journal)
    assert set(acked) <= set(stored), f"{len(set(acked) - set(stored))} acknowledged requests missing"
    assert len(stored) == len(set(stored)), "a request recorded twice"


def test_router_serve_killed_right_after_answering_counts_every_answered_call_against_its_budget(
        tmp_path: Path) -> None:
    """`router serve` answers calls under a budget and is killed at once: their settlements were still queued for
    its ledger writer (applied a group later), so once the calls' holds expired their joules stopped counting,
    though the replay wrote their records. Replayed now, the journal settles them: the budget counts what the
    answered calls used, no hold is left, and a second replay changes nothing."""
    from servers.procs import router_serve_process
    from test_budgets import policy, setup

    root = setup(tmp_path, policy("reject", 1e9, per=3600))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    journal = tmp_path / "journal"
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {root / 'models'}\npolicies_dir: {root / 'policies'}\ndefault_policy: t\n"
                      f"ledger_url: '{ledger_url}'\nproxy: {{warm_up: false}}\njournal: {{folder: {journal}}}\n")
    with router_serve_process(config, tmp_path) as (url, proc), httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(20):
            r = http.post("/v1/chat/completions", json={"model": "spec-a", "messages": [
                {"role": "user", "content": REVIEW}]})
            assert r.status_code == 200, r.text
        os.kill(proc.pid, signal.SIGKILL)  # the last answers' settlements are still queued for the writer
        proc.wait(10)
    for _ in range(2):
        ledger = open_ledger(ledger_url, journal=JournalSettings(folder=journal))  # replays at open
        try:
            spent = sum(r.energy_j for r in ledger.records() if r.model == "spec-a")
            holds = ledger.store.hold_counts()  # type: ignore[attr-defined]
            assert holds is not None and holds.live == 0, f"{holds.live} holds left at their estimates"
            assert abs(ledger.budget_used("model:spec-a:3600s", 3600) - spent) < 1e-6
        finally:
            ledger.close()
