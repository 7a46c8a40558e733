"""Several processes, one budget: ``router serve --workers 4`` sharing a real Redis ledger, 200 concurrent requests
against a small energy budget. Afterwards the ledger total stays within the budget plus the reservation bound,
and every request got an answer (200) or a clear refusal (429): none is lost.

The reservation bound: a request holds its *estimated* joules (``output_tokens_estimate`` tokens) against the
budget before the call and settles to the actual figure after it, atomically in Redis, so processes can
overspend only by ``sum(max(0, actual - reserved))`` over the requests in flight together. With the instant test
upstream every actual (10 prompt + 5 output tokens) is below its reservation, so the bound here is 0 J.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest_redis import redis_server  # noqa: F401 - the fixture
from servers.procs import ROOT, models_dir, remote_card, router_serve, upstream

from router.ledger import open_ledger

BUDGET_J = 40.0
REQUESTS = 200
WORKERS = 4
QUESTION = "What is the capital of France?"

pytestmark = [pytest.mark.slow, pytest.mark.redis]


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream(tmp_path_factory.mktemp("upstream")) as url:
        yield url


def _config(tmp: Path, up: str, ledger_url: str) -> Path:
    models = models_dir(tmp / "models", {"remote-echo": remote_card("remote-echo", up, "echo", tier="small")},
                        specialist=False)
    policies = tmp / "policies"
    policies.mkdir()
    (policies / "tight.yaml").write_text(
        "name: tight\n"
        "description: test policy with one small shared budget\n"
        "accuracy: {min_accuracy: 0.0}\n"
        f"budgets:\n  - {{model: remote-echo, joules: {BUDGET_J}, per: day}}\n"
        "on_budget_exhausted: reject\n"
    )
    config = tmp / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\ndefault_policy: tight\n"
                      f"ledger_url: {ledger_url}\n")
    return config


def _enforces_budgets(config: Path) -> bool:
    from router import Router, RouterConfig

    router = Router(RouterConfig.load(config))
    try:
        return type(router.engine).__name__ != "FirstRuleEngine"
    finally:
        router.close()


async def _fire(url: str) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        body = {"model": "router", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
        return await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(REQUESTS)))


def test_four_workers_share_one_budget(redis_server: str, upstream_url: str, tmp_path: Path) -> None:  # noqa: F811
    import redis

    ledger_url = f"{redis_server}/3"
    redis.Redis.from_url(ledger_url).flushdb()
    config = _config(tmp_path, upstream_url, ledger_url)
    if not _enforces_budgets(config):
        pytest.skip("the policy engine with energy budgets (issue 6) is not wired into Router yet")

    with router_serve(config, tmp_path, "--workers", str(WORKERS), timeout=120) as url:
        responses = asyncio.run(_fire(url))
        statuses = Counter(r.status_code for r in responses)

    assert sum(statuses.values()) == REQUESTS
    assert set(statuses) <= {200, 429}, statuses  # no request lost to a 5xx or a dropped connection
    assert statuses[200] >= 1 and statuses[429] >= 1, statuses
    for r in responses:
        if r.status_code == 429:
            err = r.json()["error"]
            assert err["code"] == "budget_exhausted" and err["message"]
            assert int(r.headers["retry-after"]) >= 1
    ok_ids = {r.json()["id"] for r in responses if r.status_code == 200}

    ledger = open_ledger(ledger_url)
    try:
        records = ledger.records()
    finally:
        ledger.close()
    ok = [r for r in records if r.outcome == "ok" and r.model == "remote-echo"]
    assert {r.request_id for r in ok} == ok_ids  # every answer is in the shared ledger, once
    spent = sum(r.energy_j for r in ok)
    reservation_bound_j = 0.0  # see the module docstring
    print(f"\n4 workers, {REQUESTS} requests: {dict(statuses)}; ledger total {spent:.2f} J of {BUDGET_J} J budget")
    assert spent <= BUDGET_J + reservation_bound_j + 1e-9, (spent, statuses)


def test_four_workers_record_every_request_in_one_redis_ledger(
    redis_server: str, upstream_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """Without budget pressure: 200 concurrent requests over 4 processes, every one answered and recorded once."""
    import redis

    ledger_url = f"{redis_server}/4"
    redis.Redis.from_url(ledger_url).flushdb()
    config = _config(tmp_path, upstream_url, ledger_url)
    text = config.read_text().replace("default_policy: tight\n", "")
    (tmp_path / "policies" / "tight.yaml").unlink()
    config.write_text(text)
    with router_serve(config, tmp_path, "--workers", str(WORKERS), timeout=120) as url:
        responses = asyncio.run(_fire(url))
    assert Counter(r.status_code for r in responses) == {200: REQUESTS}
    ledger = open_ledger(ledger_url)
    try:
        ids = [r.request_id for r in ledger.records() if r.outcome == "ok"]
    finally:
        ledger.close()
    assert sorted(ids) == sorted(r.json()["id"] for r in responses)


def test_worker_processes_log_in_the_cli_format_at_the_chosen_level(
    redis_server: str, upstream_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """uvicorn's spawned workers inherit no logging: their router lines came without the time and logger name,
    and only from warnings up whatever --log-level said. Each worker's info line (which classifier it loaded)
    is now on stderr as the main process writes its lines."""
    import re
    import time

    config = _config(tmp_path, upstream_url, f"{redis_server}/5")
    with router_serve(config, tmp_path, "--workers", "2", "--log-level", "info", timeout=120) as url:
        log = tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log"
        deadline = time.monotonic() + 60  # /health answers once one worker is ready
        while log.read_text().count(" ready in ") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        text = log.read_text()
    line = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} router\.classify classifier: the trained ONNX classifier in "
    assert len(re.findall(rf"^{line}", text, re.MULTILINE)) == 2, text  # one per worker
    assert not re.search(r"^classifier:", text, re.MULTILINE), text


def test_several_workers_refuse_a_sqlite_ledger(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "config.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp_path / 'l.sqlite3'}\nmodels_dir: {ROOT / 'models'}\n")
    out = subprocess.run([sys.executable, "-m", "router", "serve", "--workers", "2", "--config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "Redis" in out.stderr and "--workers 1" in out.stderr


def test_several_workers_stop_with_one_error_line_when_the_config_is_wrong(
    redis_server: str, tmp_path: Path  # noqa: F811
) -> None:
    """A worker that cannot build its Router (here: the model card folder is not there) died with a traceback,
    and uvicorn's supervisor started it again, for ever: `router serve --workers 2` never ended. Each worker now
    says what is wrong in one line and the command ends with exit 2."""
    import subprocess
    import sys

    from servers.procs import free_port

    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {tmp_path / 'no-cards'}\nledger_url: {redis_server}/6\n")
    out = subprocess.run([sys.executable, "-m", "router", "serve", "--workers", "2", "--port", str(free_port()),
                          "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert f"error: {tmp_path / 'no-cards'}: model card folder does not exist" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def _requests_counted(url: str) -> float:
    """``router_requests_total`` summed over its series, scraped on a new connection (so by either worker)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=30).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "router_requests_total")


async def _send(url: str, requests: int, connections: int) -> list[int]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        body = {"model": "router", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}
        responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=body) for _ in range(requests)))
    return [r.status_code for r in responses]


def _snapshots(folder: Path) -> dict[int, dict[str, object]]:
    import json

    found = {}
    for path in folder.glob("*.json"):
        snapshot = json.loads(path.read_text())
        found[snapshot["pid"]] = snapshot
    return found


def test_every_worker_answers_metrics_for_the_whole_server(
    redis_server: str, upstream_url: str, tmp_path: Path  # noqa: F811
) -> None:
    """A scrape reaches whichever worker accepts it. Each worker's /metrics counted only its own requests, so
    router_requests_total jumped between the workers' figures and Prometheus read each drop as a reset. Every
    scrape now sums all workers: it never goes down, ends at the number of requests sent, and keeps the counts of
    a worker that was killed (uvicorn starts another in its place)."""
    import os
    import signal
    import time

    import redis

    from router.proxy.metrics_shared import SNAPSHOT_INTERVAL_S

    ledger_url = f"{redis_server}/7"
    redis.Redis.from_url(ledger_url).flushdb()
    config = _config(tmp_path, upstream_url, ledger_url)
    config.write_text(config.read_text().replace("default_policy: tight\n", ""))
    (tmp_path / "policies" / "tight.yaml").unlink()
    temp = tmp_path / "tmp"  # where the server makes its metrics folder
    temp.mkdir()
    settle_s = 2.5 * SNAPSHOT_INTERVAL_S  # every worker has written its counts since the last request
    sent, scraped = 0, []

    def traffic(rounds: int) -> None:
        nonlocal sent
        for _ in range(rounds):
            assert set(asyncio.run(_send(url, 64, 16))) == {200}
            sent += 64
            scraped.extend(_requests_counted(url) for _ in range(4))

    with router_serve(config, tmp_path, "--workers", "2", env={"TMPDIR": str(temp)}, timeout=120) as url:
        [folder] = temp.glob("router-metrics-*")
        traffic(3)
        time.sleep(settle_s)
        before_kill = _snapshots(folder)
        served = {pid: sum(c[1] for c in s["counts"]["router_requests"]) for pid, s in before_kill.items()}  # type: ignore[index]
        assert len(served) == 2 and all(served.values()), served  # both workers answered requests
        settled = [_requests_counted(url) for _ in range(6)]
        assert settled == [sent] * 6, (settled, served)

        victim = min(before_kill)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 90
        while not set(_snapshots(folder)) - set(before_kill):  # its replacement, under a new pid
            assert time.monotonic() < deadline, "no worker replaced the killed one"
            scraped.append(_requests_counted(url))
            time.sleep(0.2)
        traffic(2)
        time.sleep(settle_s)
        settled = [_requests_counted(url) for _ in range(6)]
        assert settled == [sent] * 6, settled
    assert scraped == sorted(scraped), scraped  # a counter never goes down, across the kill too
    assert not folder.exists()  # removed when the server stops


def test_every_worker_lists_the_same_created_time_for_each_model(
        redis_server: str, upstream_url: str, tmp_path: Path) -> None:  # noqa: F811
    """`created` in GET /v1/models was each worker's start time, so under `router serve --workers 2` the list said
    one time or another for the same model depending on the worker that answered (and a new one at each
    restart). It is now the time of the file that defines the entry: the card's, the policy's for `router` and
    `router:<policy>`, the same in every worker."""
    config = _config(tmp_path, upstream_url, f"{redis_server}/9")
    card_time, policy_time = 1_700_000_000, 1_710_000_000
    os.utime(tmp_path / "models" / "remote-echo.yaml", (card_time, card_time))
    os.utime(tmp_path / "policies" / "tight.yaml", (policy_time, policy_time))
    with router_serve(config, tmp_path, "--workers", "2", timeout=120) as url:
        lists = []
        for _ in range(12):  # a new connection each time: either worker answers
            with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=20) as client:
                lists.append({m.id: m.created for m in client.models.list().data})
                assert client.models.retrieve("remote-echo").created == card_time
    assert all(listed == lists[0] for listed in lists), lists
    assert lists[0]["remote-echo"] == card_time and lists[0]["router:tight"] == lists[0]["router"] == policy_time
