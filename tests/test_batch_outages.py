"""Batch lines across outages, with the real stores stopped and started: a line that meets a ledger outage waits
and runs once the ledger is back (not failed for good); a batch-store blip while lines end loses no result and runs
no line twice. Lines are routed to real ONNX specialists (tests/test_budgets.py's setup)."""

from __future__ import annotations

import json
import logging
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest_postgres import postgres_server  # noqa: F401 - the fixture
from conftest_redis import start_redis_server
from test_budgets import REVIEW, policy, setup

from router import Router, RouterConfig
from router.batch.handle import BatchHandle
from router.batch.scheduler import observe_lines


def _until(what: Any, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not what():
        assert time.time() < deadline, "gave up waiting"
        time.sleep(0.05)


def _ledger_runs(r: Router, batch_id: str) -> dict[int, int]:
    """How many ledger records each line of the batch has (request ids ``batch-<id>-<line>-<run>``)."""
    runs: dict[int, int] = {}
    for rec in r.ledger.records():
        if rec.request_id.startswith(f"batch-{batch_id[6:]}-"):
            idx = int(rec.request_id.rsplit("-", 2)[1])
            runs[idx] = runs.get(idx, 0) + 1
    return runs


@pytest.mark.redis
def test_a_line_that_meets_a_ledger_outage_waits_for_it_and_a_failure_shows_no_url(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = start_redis_server(tmp_path)
    root = setup(tmp_path, policy("reject", 100.0))  # policy `t`: a reject budget, which fails closed while down
    url = f"{server.url}/0?prefix=bo:&socket_timeout=1&socket_connect_timeout=1"
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=url, journal={"folder": str(root / "journal"), "replay_interval_s": 0.2},
                               batch={"store_url": f"sqlite:///{root / 'batches.sqlite3'}", "poll_s": 0.05})
    r = Router(config)
    caplog.set_level(logging.WARNING, logger="router")
    try:
        r.complete(REVIEW)
        server.stop()
        handle = r.batch([{"messages": REVIEW}, {"messages": REVIEW}])
        _until(lambda: sum("tried again" in m for m in caplog.messages) >= 4  # each line met the outage twice
               or handle.status == "completed")
        assert handle.retrieve()["request_counts"]["failed"] == 0, "an outage fails no line for good"
        server.start()
        done = handle.wait(timeout=60, poll_s=0.05)
        assert done["status"] == "completed" and done["request_counts"]["completed"] == 2, done
        assert [x["response"]["status_code"] for x in handle.results().values()] == [200, 200]

        # refused credentials are for a person to fix: the line fails, its error as the proxy would show it
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.config_set("requirepass", "s3cret")
        admin.client_kill_filter(_type="normal", skipme=False)  # the ledger's connections must log in again
        refused = r.batch([{"messages": REVIEW}])
        assert refused.wait(timeout=60, poll_s=0.05)["request_counts"]["failed"] == 1
        (line,) = refused.results().values()
        response = line["response"]
        assert response["status_code"] == 503
        message = response["body"]["error"]["message"]
        assert message.startswith("the server's energy ledger is unavailable") and response["request_id"] in message
        assert "redis://" not in json.dumps(line) and "127.0.0.1" not in json.dumps(line)
    finally:
        r.close()
        server.stop()


@pytest.mark.postgres
@pytest.mark.slow
def test_a_batch_store_blip_as_lines_end_loses_no_result_and_runs_no_line_twice(
        tmp_path: Path, postgres_server: Any) -> None:  # noqa: F811
    root = setup(tmp_path, textwrap.dedent(policy("reject", 1e9)))
    store_url = f"{postgres_server.url}?schema=b{uuid.uuid4().hex[:8]}"
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}",
                               batch={"store_url": store_url, "poll_s": 0.05, "lease_s": 1, "concurrency": 2})
    r = Router(config)
    blip = threading.Event()
    restarted = threading.Event()

    def restart() -> None:
        time.sleep(1.5)  # several scheduler ticks and more than a lease meet the store down
        postgres_server.start()
        restarted.set()

    def first_lines_end_in_a_blip(*_: Any) -> None:
        # runs after a line's answer, before its result is stored: the store goes down under the first one
        if not blip.is_set():
            blip.set()
            postgres_server.stop()
            threading.Thread(target=restart, daemon=True).start()

    observe_lines(r, first_lines_end_in_a_blip)
    try:
        handle = r.batch([{"messages": REVIEW} for _ in range(4)])
        _until(restarted.is_set)
        done = handle.wait(timeout=60, poll_s=0.05)
        assert done["status"] == "completed" and done["request_counts"]["completed"] == 4, done
        assert [x["router"]["runs"] for x in handle.results().values()] == [1] * 4
        assert _ledger_runs(r, handle.id) == {i: 1 for i in range(4)}, "every line ran once"
    finally:
        if not restarted.is_set():
            _until(restarted.is_set)
        r.close()


@pytest.mark.parametrize(("ending", "stamp"), [("cancelled", "cancelling_at"), ("expired", "expires_at"),
                                               ("completed", None)])
def test_a_batch_left_finalizing_ends_as_it_was_ending(tmp_path: Path, ending: str, stamp: str | None) -> None:
    """A worker that stops between setting a batch `finalizing` and its final status (or a second worker that sees
    it `finalizing` meanwhile) finishes it as the batch was ending: a cancelled batch never ends `completed`."""
    root = setup(tmp_path, "name: t\naccuracy: {min_accuracy: 0.7}\n")
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}",
                               batch={"store_url": f"sqlite:///{root / 'batches.sqlite3'}", "poll_s": 0.05})
    r = Router(config)
    try:
        handle = r.batch([{"messages": REVIEW}])
        assert handle.wait(timeout=60, poll_s=0.05)["status"] == "completed"
        doc = handle.retrieve()
    finally:
        r.close()
    # as a stop between _finalize's two writes leaves it (the stamp: what set the batch ending)
    finalizing_at = doc["completed_at"] if ending != "expired" else doc["expires_at"] + 1
    changes: dict[str, Any] = {"status": "finalizing", "completed_at": None, "finalizing_at": finalizing_at}
    if stamp == "cancelling_at":
        changes["cancelling_at"] = doc["created_at"]
    r = Router(config)
    try:
        r.batches.store.update_batch(handle.id, changes)
        again = BatchHandle(r.batches, handle.id, None)
        done = again.wait(timeout=60, poll_s=0.05)
        assert done["status"] == ending, done
        assert done[{"cancelled": "cancelled_at", "expired": "expired_at", "completed": "completed_at"}[ending]]
    finally:
        r.close()
