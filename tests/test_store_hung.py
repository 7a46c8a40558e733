"""A ledger store that hangs (a Redis process stopped with SIGSTOP: connections stay open, nothing answers) does not
stall the proxy: no store read waits on the event loop once the outage is known, and the energy estimates read
the ledger on a thread of their own."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from conftest_redis import start_redis_server
from servers.procs import router_serve, wait_for_record
from test_budgets import REVIEW, setup

pytestmark = pytest.mark.redis


def test_the_proxy_answers_while_redis_hangs(tmp_path: Path) -> None:
    server = start_redis_server(tmp_path)
    assert server.proc is not None
    root = setup(tmp_path, "name: t\naccuracy: {min_accuracy: 0.7}\n")
    ledger_url = f"{server.url}/0?prefix=hung:"  # redis-py's socket_timeout as shipped
    config = root / "router.yaml"
    config.write_text(textwrap.dedent(f"""\
        models_dir: {root / 'models'}
        policies_dir: {root / 'policies'}
        default_policy: t
        ledger_url: '{ledger_url}'
        journal: {{folder: {root / 'journal'}, replay_interval_s: 0.2}}
        proxy: {{warm_up: false}}
        """))
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
