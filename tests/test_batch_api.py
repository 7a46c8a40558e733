"""The Batch API end to end: the official openai SDK against a real `router serve`, the scheduler's clock driven by
the test (a clock file), the shipped California series as the grid; and `kill -9` of the proxy mid-batch."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from conftest_postgres import postgres_server  # noqa: F401 - the fixture
from conftest_redis import redis_server  # noqa: F401 - the fixture
from forking import FORK, in_a_forked_child
from prometheus_client.parser import text_string_to_metric_families
from servers.procs import free_port, models_dir, policies_dir, remote_card, router_serve, stop, upstream, wait_ready

from router import Router
from router.batch.service import NOT_PLANNED
from router.carbon import SeriesIntensity
from router.carbon.grid import shipped_series
from router.carbon.schedule import plan
from router.config import RouterConfig
from router.errors import BadRequestError
from router.keys import hash_key

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NIGHT = 1656633600 + 3 * 3600  # 2022-07-01 03:00 UTC (20:00 in California): a dirty evening hour
KEYS = {"sk-team-a": "a", "sk-team-b": "b"}


def _config(tmp: Path, up: str, model: str = "sleep:0.02", *, lease_s: float = 30, concurrency: int = 2) -> Path:
    models = models_dir(tmp / "models", {"deferrable": remote_card("deferrable", up, model, tier="large")})
    keys = "".join(f"  - {{name: {n}, sha256: {hashlib.sha256(k.encode()).hexdigest()}}}\n" for k, n in KEYS.items())
    (tmp / "clock").write_text(str(NIGHT))
    cfg = tmp / "router.yaml"
    cfg.write_text(f"""ledger_url: sqlite:///{tmp}/ledger.sqlite3
models_dir: {models}
proxy: {{warm_up: false}}
keys:
{keys}carbon:
  zone: US-CAL
  hosted_zone: US-CAL
  zones: {{US-CAL: {{type: file, path: CA_2022_hourly.csv}}}}
  clock_file: {tmp / 'clock'}
batch: {{poll_s: 0.1, lease_s: {lease_s}, concurrency: {concurrency}}}
""")
    return cfg


def _serve(cfg: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    router_bin = str(Path(os.sys.executable).parent / "router")
    with log.open("ab") as fh:
        proc = subprocess.Popen([router_bin, "serve", "--port", str(port), "--config", str(cfg)], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)
    wait_ready(f"http://127.0.0.1:{port}/health", proc, log)
    return proc


def _jsonl(n: int, text: str = "Summarise: the meeting moved to Tuesday") -> bytes:
    return "".join(json.dumps({"custom_id": f"doc-{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": "deferrable", "messages": [{"role": "user", "content": f"{text} {i}"}],
                                        "max_tokens": 16}}) + "\n" for i in range(n)).encode()


def _wait(client: openai.OpenAI, batch_id: str, until: tuple[str, ...], timeout: float = 60) -> openai.types.Batch:
    deadline = time.time() + timeout
    while time.time() < deadline:
        b = client.batches.retrieve(batch_id)
        if b.status in until:
            return b
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {b.status} ({b.request_counts})")


def test_sdk_files_batches_retrieve_content_cancel_with_the_clock_driven(tmp_path: Path) -> None:
    with upstream(tmp_path) as up:
        cfg = _config(tmp_path, up)
        port = free_port()
        proc = _serve(cfg, tmp_path / "serve.log", port)
        try:
            base = f"http://127.0.0.1:{port}/v1"
            a = openai.OpenAI(base_url=base, api_key="sk-team-a", max_retries=0)
            b_client = openai.OpenAI(base_url=base, api_key="sk-team-b", max_retries=0)
            f = a.files.create(file=("docs.jsonl", _jsonl(12)), purpose="batch")
            assert f.purpose == "batch" and f.bytes == len(_jsonl(12))
            batch = a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                     metadata={"job": "nightly"})
            assert batch.status == "in_progress" and batch.request_counts.total == 12
            assert batch.expires_at - batch.created_at == 86_400 and batch.metadata == {"job": "nightly"}

            # at 03:00 UTC the Californian grid is dirty: the scheduler waits for the cleanest hour of the window
            time.sleep(1.0)
            waiting = a.batches.retrieve(batch.id)
            assert waiting.status == "in_progress" and waiting.request_counts.completed == 0
            series = SeriesIntensity(shipped_series("CA_2022_hourly.csv"))
            want = plan(series.forecast(NIGHT, NIGHT + 86_400, NIGHT), now=NIGHT, deadline=NIGHT + 86_400,
                        lines_left=12, lines_per_hour=1e6)
            carbon = waiting.model_extra["carbon"]
            assert carbon["hours"] == [int(h) for h in want.hours] and not want.run_now
            clean_hour = carbon["hours"][0]
            assert series.intensity(clean_hour).g_per_kwh < 0.6 * series.intensity(NIGHT).g_per_kwh

            # another key sees nothing of it; a bad window is a 400
            with pytest.raises(openai.NotFoundError):
                b_client.batches.retrieve(batch.id)
            with pytest.raises(openai.NotFoundError):
                b_client.files.content(f.id)
            with pytest.raises(openai.BadRequestError, match="completion_window"):
                a.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")

            (tmp_path / "clock").write_text(str(clean_hour + 120))  # the test moves time to the clean hour
            done = _wait(a, batch.id, ("completed",))
            assert done.request_counts.completed == 12 and done.request_counts.failed == 0
            assert done.error_file_id is None
            lines = [json.loads(x) for x in a.files.content(done.output_file_id).text.splitlines()]
            assert sorted(x["custom_id"] for x in lines) == sorted(f"doc-{i}" for i in range(12))
            for x in lines:
                assert x["id"].startswith("batch_req_") and x["error"] is None
                assert x["response"]["status_code"] == 200
                body = x["response"]["body"]
                assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
                assert body["routing"]["model"] == "deferrable"
                assert x["router"]["runs"] == 1 and x["router"]["ran_at"] >= clean_hour
            assert [b.id for b in a.batches.list().data] == [batch.id]
            assert b_client.batches.list().data == []

            # the ledger: every line's record carries the zone and the intensity of the hour it ran at
            with sqlite3.connect(tmp_path / "ledger.sqlite3") as db:
                db_rows = db.execute("SELECT zone, grid_g_per_kwh, co2e_g, energy_j FROM records "
                                     "WHERE request_id LIKE 'batch-%'").fetchall()
            assert len(db_rows) == 12
            g = series.intensity(clean_hour + 120).g_per_kwh
            for zone, grid, co2e, joules in db_rows:
                assert zone == "US-CAL" and grid == pytest.approx(g)
                assert co2e == pytest.approx(joules / 3.6e6 * g)

            # cancel: lines not started are reported cancelled, in the error file, as OpenAI writes them
            (tmp_path / "clock").write_text(str(NIGHT + 86_400))  # night again: a new batch waits
            f2 = a.files.create(file=("more.jsonl", _jsonl(5)), purpose="batch")
            second = a.batches.create(input_file_id=f2.id, endpoint="/v1/chat/completions", completion_window="24h")
            cancelled = a.batches.cancel(second.id)
            assert cancelled.status in ("cancelling", "cancelled")
            end = _wait(a, second.id, ("cancelled",))
            assert end.output_file_id is None and end.request_counts.failed == 5
            errors = [json.loads(x) for x in a.files.content(end.error_file_id).text.splitlines()]
            assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
            assert all(x["response"] is None for x in errors)
        finally:
            stop(proc)


def test_kill_9_mid_batch_then_restart_every_line_once(tmp_path: Path) -> None:
    n = 60
    with upstream(tmp_path) as up:
        cfg = _config(tmp_path, up, model="sleep:0.05", lease_s=2, concurrency=2)
        series = SeriesIntensity(shipped_series("CA_2022_hourly.csv"))
        t = NIGHT + 60  # the first hour that is the cleanest of its own window: the lines run at once
        while not plan(series.forecast(t, t + 86_400, t), now=t, deadline=t + 86_400, lines_left=n,
                       lines_per_hour=1e6).run_now:
            t += 3600
        (tmp_path / "clock").write_text(str(t))
        port = free_port()
        proc = _serve(cfg, tmp_path / "serve.log", port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-team-a", max_retries=0)
        try:
            f = client.files.create(file=("docs.jsonl", _jsonl(n)), purpose="batch")
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            deadline = time.time() + 60
            while client.batches.retrieve(batch.id).request_counts.completed < 10:
                assert time.time() < deadline
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)  # mid-batch: lines are running, leased to this process
            proc.wait(10)
            before = sqlite3.connect(tmp_path / "batches.sqlite3").execute(
                "SELECT COUNT(*) FROM lines WHERE state = 'ok'").fetchone()[0]
            assert 10 <= before < n
        finally:
            if proc.poll() is None:
                stop(proc)
        proc = _serve(cfg, tmp_path / "serve.log", port)  # a restart resumes the batch
        try:
            done = _wait(client, batch.id, ("completed",), timeout=90)
            errors = client.files.content(done.error_file_id).text if done.error_file_id else ""
            assert done.request_counts.completed == n and done.request_counts.failed == 0, errors
            lines = [json.loads(x) for x in client.files.content(done.output_file_id).text.splitlines()]
            ids = [x["custom_id"] for x in lines]
            assert sorted(ids) == sorted(f"doc-{i}" for i in range(n)), "every line exactly once"
            rerun = [x for x in lines if x["router"]["runs"] > 1]
            assert len(rerun) <= 2, "only the lines cut off by the kill (at most the concurrency) ran again"
        finally:
            stop(proc)


def _one_model_config(tmp_path: Path, up: str, name: str, upstream_model: str, batch: str) -> Path:
    """A config with one remote model on the instant upstream (its ``model`` picks what the upstream does), a SQLite
    ledger in ``tmp_path`` and these batch settings."""
    models = models_dir(tmp_path / "models", {name: remote_card(name, up, upstream_model, tier="large")})
    cfg = tmp_path / "router.yaml"
    cfg.write_text(f"ledger_url: sqlite:///{tmp_path}/ledger.sqlite3\nmodels_dir: {models}\n"
                   f"proxy: {{warm_up: false}}\nbatch: {batch}\n")
    return cfg


def test_a_batch_cancelled_while_lines_run_ends_cancelled_after_kill_9_and_a_restart(tmp_path: Path) -> None:
    with upstream(tmp_path) as up:
        cfg = _one_model_config(tmp_path, up, "slow", "sleep:15", "{poll_s: 0.1, lease_s: 1, concurrency: 2}")
        port = free_port()
        proc = _serve(cfg, tmp_path / "serve.log", port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-any", max_retries=0)
        try:
            content = _jsonl(4).replace(b'"deferrable"', b'"slow"')
            f = client.files.create(file=("slow.jsonl", content), purpose="batch")
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            deadline = time.time() + 30
            while sqlite3.connect(tmp_path / "batches.sqlite3").execute(
                    "SELECT COUNT(*) FROM lines WHERE state = 'running'").fetchone()[0] < 2:
                assert time.time() < deadline
                time.sleep(0.05)
            assert client.batches.cancel(batch.id).status == "cancelling"  # two lines are running
            os.kill(proc.pid, signal.SIGKILL)  # they never end: their worker is gone
            proc.wait(10)
        finally:
            if proc.poll() is None:
                stop(proc)
        proc = _serve(cfg, tmp_path / "serve.log", port)
        try:  # was cancelling for ever: only an expiring batch took over the lines of a dead worker
            done = _wait(client, batch.id, ("cancelled",), timeout=30)
            assert done.request_counts.failed == 4 and done.output_file_id is None
            errors = [json.loads(x) for x in client.files.content(done.error_file_id).text.splitlines()]
            assert sorted(x["custom_id"] for x in errors) == [f"doc-{i}" for i in range(4)]
            assert {x["error"]["code"] for x in errors} == {"batch_cancelled"}
        finally:
            stop(proc)


def test_the_batch_routes_wait_for_a_locked_store_off_the_event_loop(tmp_path: Path) -> None:
    """Every batch and file route reads the store on a worker thread: while another process holds the store's
    write lock, those calls wait, and the proxy goes on answering everything else."""
    with upstream(tmp_path) as up:
        cfg = _one_model_config(tmp_path, up, "deferrable", "echo", "{poll_s: 0.1}")
        port = free_port()
        proc = _serve(cfg, tmp_path / "serve.log", port)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-any", max_retries=0, timeout=30)
        try:
            f = client.files.create(file=("in.jsonl", _jsonl(2)), purpose="batch")
            spare = client.files.create(file=("spare.jsonl", _jsonl(1)), purpose="batch")
            batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            calls = {"retrieve": lambda: client.batches.retrieve(batch.id),
                     "file": lambda: client.files.retrieve(f.id),
                     "delete": lambda: client.files.delete(spare.id),
                     "cancel": lambda: client.batches.cancel(batch.id)}
            answered: dict[str, object] = {}
            holder = sqlite3.connect(tmp_path / "batches.sqlite3", isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # another process writing to the store, for longer than usual
            try:
                threads = [threading.Thread(target=lambda n=n, c=c: answered.__setitem__(n, c())) for n, c in
                           calls.items()]
                for t in threads:
                    t.start()
                time.sleep(0.5)  # the four calls are waiting for the lock
                started = time.monotonic()
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=3)
                took = time.monotonic() - started
                assert not answered, answered
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            for t in threads:
                t.join(30)
            assert health.status_code == 200 and took < 1.0, took
            assert set(answered) == set(calls)  # and each got its answer once the lock was free
        finally:
            stop(proc)


# -- a flat grid (the static default): every batch runs at once --------------------------------------------------
MAX_FILE = 32 * 1024
TIGHT = "name: tight\naccuracy: {min_accuracy: 0.0}\nbudgets:\n  - model: \"*\"\n    joules: 0.001\n    per: day\n" \
        "on_budget_exhausted: reject\n"


class Flat:
    def __init__(self, url: str) -> None:
        self.url = url

    def client(self, key: str = "sk-team-a") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=20)

    def run(self, bodies: list[dict[str, object]], key: str = "sk-team-a") -> list[dict[str, object]]:
        """Each body as a batch line, the batch run to its end: the lines' results in input order."""
        client = self.client(key)
        content = "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                      "body": b}) + "\n" for i, b in enumerate(bodies)).encode()
        f = client.files.create(file=("in.jsonl", content), purpose="batch")
        batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
        assert batch.status == "in_progress", batch.errors
        done = _wait(client, batch.id, ("completed",))
        results = {}
        for file_id in (done.output_file_id, done.error_file_id):
            if file_id:
                for raw in client.files.content(file_id).text.splitlines():
                    x = json.loads(raw)
                    results[x["custom_id"]] = x
        return [results[f"r{i}"] for i in range(len(bodies))]


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flat]:
    tmp = tmp_path_factory.mktemp("flat")
    with upstream(tmp) as up:
        models = models_dir(tmp / "models", {"deferrable": remote_card("deferrable", up, "echo", tier="large")})
        policies = policies_dir(tmp / "policies", {"tight": TIGHT})
        keys = "".join(f"  - {{name: {n}, sha256: {hashlib.sha256(k.encode()).hexdigest()}}}\n"
                       for k, n in KEYS.items())
        cfg = tmp / "router.yaml"
        cfg.write_text(f"ledger_url: sqlite:///{tmp}/ledger.sqlite3\nmodels_dir: {models}\npolicies_dir: {policies}\n"
                       f"proxy: {{warm_up: false}}\nkeys:\n{keys}batch: {{poll_s: 0.1, max_file_bytes: {MAX_FILE}}}\n")
        port = free_port()
        proc = _serve(cfg, tmp / "serve.log", port)
        try:
            yield Flat(f"http://127.0.0.1:{port}")
        finally:
            stop(proc)


HI = [{"role": "user", "content": "Summarise: the meeting moved to Tuesday"}]


def test_a_line_is_refused_exactly_as_the_chat_route_refuses_the_same_body(flat: Flat) -> None:
    bodies: list[dict[str, object]] = [
        {"model": "deferrable", "messages": HI, "request_id": "mine"},  # was a 500 (TypeError)
        {"model": "deferrable", "messages": HI, "api_key": "sk-team-b"},  # was a 500 (TypeError)
        {"model": "deferrable", "messages": HI, "request_id": None},
        {"model": "deferrable", "messages": HI, "timeout": 5},  # ran
        {"model": "router", "messages": HI, "extra_body": {"policy": "eco"}},  # ran, under eco
        {"model": "deferrable", "messages": HI, "extra_headers": {"x-a": "b"}},  # ran
        {"model": "deferrable", "messages": HI, "cancel": True},  # the library's wording
        {"model": "deferrable", "messages": HI, "temperature": "hot"},
        {"model": "deferrable", "messages": HI, "stream_options": {"include_usage": "false"}},
        {"model": "deferrable"},  # failed the whole batch at creation
        {"model": "router:nope", "messages": HI},
        {"model": "deferrable", "messages": HI, "stream": False},  # was a 400 in a batch, a 200 in chat
        {"model": "deferrable", "messages": HI, "frobnicate": 1},
        {"model": "deferrable", "messages": HI},
    ]
    lines = flat.run(bodies)
    for body, line in zip(bodies, lines, strict=True):
        chat = httpx.post(f"{flat.url}/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-team-a"},
                          timeout=20)
        response = line["response"]
        assert response["status_code"] == chat.status_code, (body, response, chat.text)
        if chat.status_code != 200:
            want, got = chat.json()["error"], response["body"]["error"]
            assert got == want, body
            assert 400 <= chat.status_code < 500 and line["error"] is None
    assert [line["response"]["status_code"] for line in lines] == [400] * 10 + [404, 200, 400, 200]


def _samples(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{url}/metrics", headers={"authorization": "Bearer sk-team-a"}, timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_batch_lines_are_counted_in_the_metrics_as_chat_requests_are(flat: Flat) -> None:
    key = hash_key("sk-team-a")
    answered = ("router_requests_total", frozenset({"model": "deferrable", "tier": "large", "key": key,
                                                    "outcome": "ok"}.items()))
    joules = ("router_energy_joules_total", frozenset({"model": "deferrable", "tier": "large", "key": key}.items()))
    refused = ("router_errors_total", frozenset({"type": "budget_exhausted", "status": "429"}.items()))
    bad = ("router_errors_total", frozenset({"type": "invalid_request", "status": "400"}.items()))
    before = _samples(flat.url)
    lines = flat.run([{"model": "deferrable", "messages": HI}, {"model": "deferrable", "messages": HI},
                      {"model": "router:tight", "messages": HI},
                      {"model": "deferrable", "messages": HI, "temperature": "hot"}])
    assert [x["response"]["status_code"] for x in lines] == [200, 200, 429, 400]
    after = _samples(flat.url)
    assert after[answered] - before.get(answered, 0) == 2, "each answered line, under its key's label"
    spent = sum(x["response"]["body"]["routing"]["energy_j"] for x in lines[:2])
    assert after[joules] - before.get(joules, 0) == pytest.approx(spent)
    assert after[refused] - before.get(refused, 0) == 1, "the budget's 429 inside the batch"
    assert after[bad] - before.get(bad, 0) == 1


def test_every_file_over_max_file_bytes_is_a_413(flat: Flat) -> None:
    client = flat.client()
    for size in (MAX_FILE + 1, MAX_FILE + 200 * 1024):  # the first was a 400: under the upload's framing room
        with pytest.raises(openai.APIStatusError) as info:
            client.files.create(file=("big.jsonl", b"x" * size), purpose="batch")
        err = info.value.response.json()["error"]
        assert info.value.status_code == 413 and err["code"] == "request_too_large", err
        assert f"at most {MAX_FILE:,}" in err["message"] and err["param"] == "file"
    assert client.files.create(file=("ok.jsonl", b"x" * MAX_FILE), purpose="batch").bytes == MAX_FILE


def test_the_carbon_block_is_there_from_creation(flat: Flat, tmp_path: Path) -> None:
    client = flat.client()
    f = client.files.create(file=("in.jsonl", _jsonl(1)), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    carbon = batch.model_extra["carbon"]  # the scheduler plans it at its next look
    assert set(carbon) == {"plan", "forecast", "zone", "hours", "expected_g_per_kwh"} and carbon["zone"]
    bad = client.files.create(file=("bad.jsonl", b"not json\n"), purpose="batch")
    failed = client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert failed.status == "failed" and failed.model_extra["carbon"]["plan"].startswith("not planned")

    # the library, with no scheduler in the process: the block is there, saying it is not planned yet
    cfg = RouterConfig.model_validate({"ledger_url": f"sqlite:///{tmp_path}/ledger.sqlite3",
                                       "journal": {"enabled": False}, "batch": {"scheduler": False}})
    with Router(cfg) as r:
        doc = r.batch([{"messages": HI}]).retrieve()
        assert doc["carbon"]["plan"] == NOT_PLANNED and doc["carbon"]["hours"] == []
        assert doc["carbon"]["zone"] == r.grid.host_zone and doc["carbon"]["forecast"] == "provider"


def test_files_list_pages_orders_and_filters_as_openai_documents(flat: Flat) -> None:
    client = flat.client("sk-team-b")  # the other tests upload as team a
    mine = [client.files.create(file=(f"f{i}.jsonl", _jsonl(1)), purpose="batch") for i in range(3)]
    newest_first = [f.id for f in sorted(mine, key=lambda f: (f.created_at, f.id), reverse=True)]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == newest_first[:2] and page.has_more
    rest = client.files.list(limit=2, after=page.data[-1].id)
    assert [f.id for f in rest.data] == newest_first[2:] and not rest.has_more
    assert [f.id for f in client.files.list(order="asc").data] == newest_first[::-1]
    assert client.files.list(purpose="batch_output").data == []
    assert len(client.files.list(purpose="batch").data) == 3
    theirs = flat.client().files.create(file=("a.jsonl", _jsonl(1)), purpose="batch")
    for query, param in (("limit=abc", "limit"), ("limit=0", "limit"), ("limit=10001", "limit"),
                         ("order=sideways", "order"), ("purpose=nope", "purpose"), ("after=file-nope", "after"),
                         (f"after={theirs.id}", "after")):
        r = httpx.get(f"{flat.url}/v1/files?{query}", headers={"authorization": "Bearer sk-team-b"}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (query, r.text)


def test_an_uploaded_file_keeps_its_name(flat: Flat) -> None:
    client = flat.client()
    # the SDK sends names as UTF-8 in a quoted string, a backslash escaped: they were read as Latin-1 and cut
    # at the first ";" ("donnÃ©es.jsonl", "notes")
    for name in ("données.jsonl", "notes; v2.jsonl", "run\\7.jsonl", "月报.jsonl"):
        f = client.files.create(file=(name, _jsonl(1)), purpose="batch")
        assert f.filename == name and client.files.retrieve(f.id).filename == name


def test_a_limit_that_is_not_one_integer_is_a_400_naming_limit(flat: Flat) -> None:
    for path in ("/v1/batches", "/v1/files"):
        # "--5" and 5,000 digits were 500s: int() refused what the check let by
        for limit in ("--5", "-", "5-", "-+5", "٣", "1e3", "9" * 5000, "-" + "9" * 5000):
            r = httpx.get(f"{flat.url}{path}", params={"limit": limit}, headers={"authorization": "Bearer sk-team-a"},
                          timeout=10)
            err = r.json()["error"]
            assert r.status_code == 400 and err["param"] == "limit", (path, limit, r.text)
            assert "`limit`" in err["message"], err


def test_a_missing_or_mistyped_parameter_is_openai_s_400_in_openai_s_words(flat: Flat) -> None:
    """An upload without `purpose` was refused with "`purpose` '' is not supported here: only `batch`", which
    names a value nobody sent, and a batch with `input_file_id: 5` with "`input_file_id` is required", though it
    was given. Each is now OpenAI's 400, worded as OpenAI words it, with `param` and `code` naming what is wrong;
    through the openai SDK and through raw HTTP."""
    client = flat.client()
    uploaded = client.files.create(file=("in.jsonl", _jsonl(1)), purpose="batch")
    missing, mistyped = "missing_required_parameter", "invalid_type"

    def refused(call: object) -> dict[str, object]:
        with pytest.raises(openai.BadRequestError) as info:
            call()  # type: ignore[operator]
        return info.value.response.json()["error"]  # type: ignore[no-any-return]

    assert refused(lambda: client.files.create(file=("in.jsonl", _jsonl(1)), purpose=openai.NOT_GIVEN)) == {
        "message": "Missing required parameter: 'purpose'.", "type": "invalid_request_error", "param": "purpose",
        "code": missing}
    assert refused(lambda: client.batches.create(input_file_id=5, endpoint="/v1/chat/completions",  # type: ignore[arg-type]
                                                 completion_window="24h")) == {
        "message": "Invalid type for 'input_file_id': expected a string, but got an integer instead.",
        "type": "invalid_request_error", "param": "input_file_id", "code": mistyped}
    headers = {"authorization": "Bearer sk-team-a"}
    purpose = (None, b"batch")  # a multipart part without a filename: a plain field
    uploads = (({"file": ("in.jsonl", _jsonl(1))}, "purpose", "Missing required parameter: 'purpose'."),
               ({"purpose": purpose}, "file", "Missing required parameter: 'file'."),
               ({"purpose": purpose, "file": (None, b"not a file")}, "file",
                "Missing required parameter: 'file'. The body's `file` part has no filename: send it as a file."))
    for files, param, message in uploads:
        r = httpx.post(f"{flat.url}/v1/files", files=files, headers=headers, timeout=10)
        assert r.status_code == 400 and r.json()["error"] == {
            "message": message, "type": "invalid_request_error", "param": param, "code": missing}, r.text
    good = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    for name in good:
        for value, code, message in (
                (None, missing, f"Missing required parameter: '{name}'."),
                (5, mistyped, f"Invalid type for '{name}': expected a string, but got an integer instead."),
                ([good[name]], mistyped, f"Invalid type for '{name}': expected a string, but got an array instead.")):
            for body in ({**good, name: value}, {k: v for k, v in good.items() if k != name}):
                if body.get(name, None) is None and value is not None:
                    continue  # the absent form is tried once, with None
                r = httpx.post(f"{flat.url}/v1/batches", json=body, headers=headers, timeout=10)
                assert r.status_code == 400 and r.json()["error"] == {
                    "message": message, "type": "invalid_request_error", "param": name, "code": code}, (body, r.text)
    assert client.batches.create(**good).status == "in_progress"  # type: ignore[arg-type]


def test_an_expiry_asked_for_is_refused_not_ignored(flat: Flat) -> None:
    """`files.create(..., expires_after={"anchor": "created_at", "seconds": 3600})` was answered 200 with the file
    stored for good (`expires_at: null`): an app that asked for its data to be gone in an hour had it kept. It is
    now a 400 naming `expires_after` and nothing is stored, as `batches.create(output_expires_after=...)` is a 400
    naming that parameter."""
    client = flat.client()
    hour = {"anchor": "created_at", "seconds": 3600}
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("expiring.jsonl", _jsonl(1)), purpose="batch",
                            expires_after=hour)  # type: ignore[arg-type]
    err = info.value.response.json()["error"]
    assert err["param"] == "expires_after" and err["code"] == "unsupported_parameter", err
    assert "kept until it is deleted" in err["message"], err
    assert all(f.filename != "expiring.jsonl" for f in client.files.list())  # other tests' batches add files
    uploaded = client.files.create(file=("in.jsonl", _jsonl(1)), purpose="batch")
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                              output_expires_after=hour)  # type: ignore[arg-type]
    err = info.value.response.json()["error"]
    assert err["param"] == "output_expires_after" and err["code"] == "unsupported_parameter", err
    assert all(b.input_file_id != uploaded.id for b in client.batches.list())


def test_router_batch_of_nothing_says_no_requests_given(tmp_path: Path) -> None:
    cfg = RouterConfig.model_validate({"ledger_url": f"sqlite:///{tmp_path}/ledger.sqlite3",
                                       "journal": {"enabled": False}, "batch": {"scheduler": False}})
    with Router(cfg) as r:
        for nothing in ([], iter(())):
            with pytest.raises(BadRequestError) as info:
                r.batch(nothing)
            assert info.value.message == "no requests given" and info.value.param == "requests"


def test_router_batch_takes_what_router_complete_takes_and_refuses_the_rest_with_a_400(tmp_path: Path) -> None:
    """`Router.batch` with a conversation holding message objects (a response's `choices[0].message` put back
    into the history, a `ChatMessage`), which `Router.complete` takes, raised `TypeError: Object of type
    ChatMessage is not JSON serializable`; so did any value JSON cannot hold (a `Decimal`), where bad input is a
    `BadRequestError`. And a batch refused for its window or metadata left its input file in the store, which
    no caller could see or delete. Message objects now go in as their dicts and the batch runs; another value is
    a 400 naming the request; a refused batch leaves no file."""
    from decimal import Decimal

    from openai.types.chat import ChatCompletionMessage

    from router import ChatMessage

    history = [ChatMessage(role="user", content="Is this review positive or negative? 'a gorgeous, witty film'"),
               ChatCompletionMessage(role="assistant", content="positive"),
               {"role": "user", "content": "And this one? 'a dull, tedious film'"}]
    cfg = RouterConfig.model_validate({"ledger_url": f"sqlite:///{tmp_path}/ledger.sqlite3",
                                       "journal": {"enabled": False}, "batch": {"poll_s": 0.05}})
    with Router(cfg) as r:
        r.complete(history)  # the conversation Router.complete takes
        done = r.batch([{"messages": history}]).wait(timeout=60, poll_s=0.05)
        assert done["status"] == "completed" and done["request_counts"]["completed"] == 1, done
        files = r.batches.service.list_files(None)["data"]
        for requests, kw, param in (([{"messages": history}, {"messages": history, "temperature": Decimal("0.5")}],
                                     {}, "requests[1]"),
                                    ([{"messages": history}], {"completion_window": "1h"}, "completion_window"),
                                    ([{"messages": history}], {"metadata": {"a": 1}}, "metadata")):
            with pytest.raises(BadRequestError) as info:
                r.batch(requests, **kw)
            assert info.value.param == param, info.value
        assert r.batches.service.list_files(None)["data"] == files  # no file left behind


def test_a_forked_child_runs_its_batches_with_a_scheduler_of_its_own(tmp_path: Path) -> None:
    """A Router made before the process forks (gunicorn --preload, multiprocessing's fork, Celery's prefork pool),
    its scheduler started: the child's batches run on a scheduler and line workers of its own (a fork copies no
    thread: without them they waited for another process's scheduler, and with none they never ran)."""
    review = [{"role": "user", "content": "Is this review positive or negative? 'a gorgeous, witty film'"}]
    cfg = RouterConfig.model_validate({"ledger_url": f"sqlite:///{tmp_path}/ledger.sqlite3",
                                       "journal": {"enabled": False}, "batch": {"poll_s": 0.05}})
    with Router(cfg) as r:
        assert r.batch([{"messages": review}]).wait(timeout=60, poll_s=0.05)["status"] == "completed"
        parents_scheduler_stopped = FORK.Event()

        def in_the_child() -> None:  # a failed assert or an exception ends the child with exit code 1
            assert parents_scheduler_stopped.wait(30)
            done = r.batch([{"messages": review}]).wait(timeout=30, poll_s=0.05)
            assert done["status"] == "completed" and done["request_counts"]["completed"] == 1, done

        def in_the_parent() -> None:
            # the parent stops running lines (a master that only supervises its workers): only the child's own
            # scheduler may run the child's batch
            r.batches.scheduler.close()
            parents_scheduler_stopped.set()

        in_a_forked_child(in_the_child, "the child's batch ran", meanwhile=in_the_parent, timeout_s=90)


@pytest.mark.redis
def test_serve_with_a_redis_ledger_says_where_batches_go(redis_server: str, tmp_path: Path) -> None:  # noqa: F811
    cfg = tmp_path / "router.yaml"
    cfg.write_text(f"ledger_url: '{redis_server}/0?prefix=batchwarn:'\nproxy: {{warm_up: false}}\n")
    data = tmp_path / "data"
    with router_serve(cfg, tmp_path, env={"XDG_DATA_HOME": str(data)}) as url:
        log = (tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()
    where = data / "router" / "batches.sqlite3"
    assert f"router serve: warning: batches are stored in sqlite:///{where}" in log, log
    assert "batch.store_url to PostgreSQL" in log

    cfg.write_text(cfg.read_text() + f"batch: {{store_url: sqlite:///{tmp_path}/b.sqlite3}}\n")
    with router_serve(cfg, tmp_path, env={"XDG_DATA_HOME": str(data)}) as url:
        log = (tmp_path / f"serve-{url.rsplit(':', 1)[1]}.log").read_text()
    assert "warning" not in log and "ready in" in log, log


@pytest.mark.postgres
def test_serve_starts_with_the_batch_store_down_and_answers_503_until_it_is_back(
        postgres_server, tmp_path: Path) -> None:  # noqa: ANN001, F811
    url = f"{postgres_server.url}?schema=batchdown"
    cfg = tmp_path / "router.yaml"
    cfg.write_text(f"ledger_url: '{url}'\nproxy: {{warm_up: false}}\nbatch: {{store_url: '{url}', poll_s: 0.05}}\n")
    postgres_server.stop()  # the ledger waits in its journal; the batch store is an outage: workers start anyway
    down = True
    try:
        with router_serve(cfg, tmp_path, "--workers", "2", env={"XDG_DATA_HOME": str(tmp_path / "data")}) as base:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-any", max_retries=0, timeout=20)
            for _ in range(4):  # either worker
                with pytest.raises(openai.APIStatusError) as info:
                    client.batches.list()
                err = info.value.response.json()["error"]
                assert info.value.status_code == 503 and err["code"] == "batch_store_unavailable", err
                # the scheduler tries the store again every poll_s (0.05 s): a client is told that, in whole seconds
                assert info.value.response.headers["retry-after"] == "1", info.value.response.headers
                assert err["message"].startswith("the server's batch store is unavailable"), err
            time.sleep(1.0)  # the schedulers poll the store twenty times meanwhile
            postgres_server.start()
            down = False
            for _ in range(4):
                assert client.batches.list().data == []  # each worker reconnects at its next call
            log = (tmp_path / f"serve-{base.rsplit(':', 1)[1]}.log").read_text()
    finally:
        if down:
            postgres_server.start()
    assert "Traceback" not in log, log
    assert 1 <= log.count("the Batch API answers 503") <= 2, log  # once per worker, not once per poll
    assert "is back after" in log, log
