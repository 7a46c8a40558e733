"""``/metrics`` against the ledger: a real ``router serve`` subprocess and the instant TEST UPSTREAM
(tests/servers/instant_upstream.py), driven with the official ``openai`` client and raw httpx; the ledger is the
SQLite file the proxy writes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from servers.procs import models_dir, only_policy, policies_dir, remote_card, router_serve, upstream

from router import Router
from router.config import RouterConfig
from router.errors import LedgerError
from router.keys import KeyStore, digest, hash_key
from router.ledger import LedgerRecord, SQLiteLedger, open_ledger
from router.proxy.app import create_app


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


class Served:
    def __init__(self, url: str, ledger_url: str) -> None:
        self.url = url
        self.ledger_url = ledger_url

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=20)

    def records(self, wanted: int = 0, timeout: float = 15.0) -> list[LedgerRecord]:
        """The ledger's records, once it holds at least ``wanted`` (the proxy writes from a background thread)."""
        deadline = time.time() + timeout
        while True:
            ledger = open_ledger(self.ledger_url)
            try:
                records = ledger.records()
            finally:
                ledger.close()
            if len(records) >= wanted or time.time() > deadline:
                return records
            time.sleep(0.05)

    def metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """Each sample name's ``(labels, value)`` pairs."""
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics").text):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("metrics_ledger")
    with upstream(tmp) as up:
        models = models_dir(tmp / "models", {
            "remote-echo": remote_card("remote-echo", up, "echo", tier="small"),
            "remote-slow": remote_card("remote-slow", up, "slow", tier="large", per_call_j=5.0),
            "remote-broken": remote_card("remote-broken", up, "broken", tier="large", per_call_j=7.0),
        })
        policies = policies_dir(tmp / "policies", {
            "onlybroken": only_policy("remote-broken"),
            "tiny": "name: tiny\naccuracy: {min_accuracy: 0.0}\nallowed_models: [remote-echo]\n"
                    "budgets: [{model: remote-echo, joules: 0.001, per: 3600}]\non_budget_exhausted: reject\n"})
        ledger_url = f"sqlite:///{tmp / 'ledger.sqlite3'}"
        config = tmp / "config.yaml"
        config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\nledger_url: {ledger_url}\n")
        with router_serve(config, tmp) as url:
            yield Served(url, ledger_url)


def test_metrics_joules_and_failures_add_up_to_the_ledger(served: Served) -> None:
    """Answered, failed-then-answered, failed with no fallback, and client-cancelled requests (JSON and stream):
    ``router_energy_joules_total`` per model sums to the ledger's joules per model, ``router_backend_failures_total``
    to its ``error`` records, and both cancelled requests count in ``router_requests_total``."""
    client = served.client()
    client.chat.completions.create(model="remote-echo", messages=user("hello"))
    resp = client.chat.completions.create(model="remote-broken", messages=user("What is the capital of France?"))
    assert [a["outcome"] for a in resp.model_extra["routing"]["attempts"]][0] == "error"  # a fallback answered
    with pytest.raises(openai.InternalServerError):  # no fallback allowed: the request fails
        client.chat.completions.create(model="remote-broken", messages=user("hello"),
                                       extra_body={"policy": "onlybroken"})
    with pytest.raises(httpx.ReadTimeout):  # the client gives up on a JSON answer
        httpx.post(f"{served.url}/v1/chat/completions", timeout=httpx.Timeout(0.5),
                   json={"model": "remote-slow", "messages": user("hi"), "max_tokens": 200})
    with httpx.stream("POST", f"{served.url}/v1/chat/completions", timeout=20,
                      json={"model": "remote-slow", "messages": user("hi"), "stream": True, "max_tokens": 200}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break  # hang up after the first token

    records = served.records(wanted=6)
    assert sorted(r.outcome for r in records) == ["cancelled", "cancelled", "error", "error", "ok", "ok"]
    ledger_j: dict[str, float] = {}
    for r in records:
        ledger_j[r.model] = ledger_j.get(r.model, 0.0) + r.energy_j
    assert ledger_j["remote-broken"] > 0  # failed calls are charged for what they were estimated to use

    m = served.metrics()
    metric_j: dict[str, float] = {}
    for labels, value in m["router_energy_joules_total"]:
        metric_j[labels["model"]] = metric_j.get(labels["model"], 0.0) + value
    assert metric_j.keys() == {m for m, j in ledger_j.items() if j}
    for model, joules in ledger_j.items():
        assert metric_j.get(model, 0.0) == pytest.approx(joules), model
    failures = {labels["model"]: value for labels, value in m["router_backend_failures_total"]}
    assert failures == {"remote-broken": sum(r.outcome == "error" for r in records)} == {"remote-broken": 2}
    cancelled = [(labels["model"], value) for labels, value in m["router_requests_total"]
                 if labels["outcome"] == "cancelled"]
    assert cancelled == [("remote-slow", 2.0)]


def test_requests_total_counts_every_request_by_outcome(served: Served) -> None:
    """Failed and refused requests count in ``router_requests_total`` too (outcome ``error`` for a 5xx,
    ``rejected`` for a 4xx), under the model decided for them, or ``-`` when they ended before a decision; so
    an error rate is one counter's ratio. ``router_errors_total`` still counts them by type."""

    def requests() -> dict[tuple[str, str, str], float]:
        return {(labels["model"], labels["tier"], labels["outcome"]): value
                for labels, value in served.metrics().get("router_requests_total", [])}

    before = requests()
    client = served.client()
    client.chat.completions.create(model="remote-echo", messages=user("hello"))
    with pytest.raises(openai.InternalServerError):  # decided, then failed with no fallback: a 503
        client.chat.completions.create(model="remote-broken", messages=user("hello"),
                                       extra_body={"policy": "onlybroken"})
    with pytest.raises(openai.InternalServerError):  # the same as a stream, before its first chunk
        client.chat.completions.create(model="remote-broken", messages=user("hello"), stream=True,
                                       extra_body={"policy": "onlybroken"})
    with pytest.raises(openai.RateLimitError):  # refused in the decision, on the model whose budget it would spend
        client.chat.completions.create(model="router", messages=user("hello"), extra_body={"policy": "tiny"})
    with pytest.raises(openai.BadRequestError):  # refused before a decision
        client.chat.completions.create(model="router", messages=[])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=user("hello"))
    after = requests()
    added = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert added == {("remote-echo", "small", "ok"): 1.0, ("remote-broken", "large", "error"): 2.0,
                     ("remote-echo", "small", "rejected"): 1.0, ("-", "-", "rejected"): 2.0}
    refused = [r for r in served.records() if r.outcome == "rejected" and r.policy == "tiny"]
    assert [(r.model, r.tier) for r in refused] == [("remote-echo", "small")]  # where the ledger files it too


def test_remaining_budget_of_a_per_key_budget_for_keys_no_policy_names(tmp_path: Path) -> None:
    """A policy-wide ``scope: per_key`` budget gives every API key its own counter, including keys that have no
    entry of their own in the policy: ``/metrics`` has ``router_budget_remaining_joules`` for each such key's
    counter (the limit minus what the key used), not only ``router_budget_used_joules``, so an alert on the
    remaining budget sees every key; the dashboard's budget table shows the same limit and remainder."""
    api_keys = {"alice": "sk-metrics-alice", "bob": "sk-metrics-bob"}
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text("keys:\n" + "".join(f"  - {{name: {name}, sha256: {digest(key)}}}\n"
                                             for name, key in api_keys.items())
                         + f"  - {{name: admin, sha256: {digest('sk-metrics-admin')}, admin: true}}\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "perkey.yaml").write_text(
        "name: perkey\naccuracy: {min_accuracy: 0.0}\nallowed_models: [remote-echo]\n"
        "budgets:\n  - {model: 'tier:small', joules: 1000, per: hour, scope: per_key}\n")
    with upstream(tmp_path) as up:
        models = models_dir(tmp_path / "models", {"remote-echo": remote_card("remote-echo", up, "echo", tier="small")})
        ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        config = tmp_path / "config.yaml"
        config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\nledger_url: {ledger_url}\n"
                          "default_policy: perkey\n")
        with router_serve(config, tmp_path, "--keys", str(keys_file)) as url:
            served = Served(url, ledger_url)
            for key in api_keys.values():
                client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)
                resp = client.chat.completions.create(model="router", messages=user("hello"))
                assert resp.model == "remote-echo"
            records = served.records(wanted=2)
            auth = {"authorization": f"Bearer {api_keys['alice']}"}
            admin = {"authorization": "Bearer sk-metrics-admin"}
            text = httpx.get(f"{url}/metrics", headers=auth).text
            shown = httpx.get(f"{url}/dashboard/api/budgets", headers=admin).json()["budgets"]
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    for key in api_keys.values():
        budget = f"key:{hash_key(key)}:tier:small:3600s"
        spent = sum(r.energy_j for r in records if r.key_hash == hash_key(key))
        assert spent > 0
        assert samples["router_budget_used_joules"][(("budget", budget),)] == pytest.approx(spent)
        remaining = samples.get("router_budget_remaining_joules", {})
        assert remaining.get((("budget", budget), ("policy", "perkey"))) == pytest.approx(1000 - spent), budget
        row = next(r for r in shown if r["budget"] == budget)  # the dashboard shows the same limit and remainder
        assert (row["policy"], row["limit"], row["remaining"]) == ("perkey", 1000, pytest.approx(1000 - spent))


def _per_key_budget_setup(tmp_path: Path, up: str, joules: float, on_exhausted: str = "fallback") -> tuple[Path, Path]:
    """A config whose one policy gives every API key its own ``joules`` per hour (``scope: per_key``) on the one
    model, and a keys file whose keys have no policy entry of their own: ``(config, keys file)``."""
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(f"keys:\n  - {{name: carol, sha256: {digest('sk-restart-carol')}}}\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "perkey.yaml").write_text(
        f"name: perkey\naccuracy: {{min_accuracy: 0.0}}\nallowed_models: [remote-echo]\n"
        f"on_budget_exhausted: {on_exhausted}\n"
        f"budgets:\n  - {{model: 'tier:small', joules: {joules}, per: hour, scope: per_key}}\n")
    models = models_dir(tmp_path / "models", {"remote-echo": remote_card("remote-echo", up, "echo", tier="small")})
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\n"
                      f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\ndefault_policy: perkey\n")
    return config, keys_file


def _budget_samples(url: str, key: str) -> dict[str, dict[str, float]]:
    """``router_budget_used_joules`` and ``router_budget_remaining_joules`` by budget key (read with ``key``: a
    scrape is no chat request, so it meets no budget)."""
    out: dict[str, dict[str, float]] = {}
    scraped = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {key}"})
    assert scraped.status_code == 200, scraped.text
    for family in text_string_to_metric_families(scraped.text):
        for s in family.samples:
            if s.name in ("router_budget_used_joules", "router_budget_remaining_joules"):
                out.setdefault(s.name, {})[s.labels["budget"]] = s.value
    return out


def test_per_key_budgets_in_use_are_in_metrics_right_after_a_restart(tmp_path: Path) -> None:
    """A key's ``scope: per_key`` budget with use in its current window is in ``/metrics`` (used and remaining)
    as soon as ``router serve`` restarts on the same ledger, before that key sends another request: an alert on
    the remaining budget keeps its series across a restart."""
    key = "sk-restart-carol"
    budget = f"key:{hash_key(key)}:tier:small:3600s"
    with upstream(tmp_path) as up:
        config, keys_file = _per_key_budget_setup(tmp_path, up, joules=1000)
        ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        with router_serve(config, tmp_path, "--keys", str(keys_file)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)
            assert client.chat.completions.create(model="router", messages=user("hello")).model == "remote-echo"
            spent = sum(r.energy_j for r in Served(url, ledger_url).records(wanted=1))
            assert spent > 0
            before = _budget_samples(url, key)
        with router_serve(config, tmp_path, "--keys", str(keys_file)) as url:
            after = _budget_samples(url, key)
    assert before["router_budget_used_joules"][budget] == pytest.approx(spent)
    assert after.get("router_budget_used_joules", {}).get(budget) == pytest.approx(spent)
    assert after.get("router_budget_remaining_joules", {}).get(budget) == pytest.approx(1000 - spent)


def test_a_budget_refused_in_the_decision_is_in_metrics(tmp_path: Path) -> None:
    """A request refused (429) because its key's budget cannot pay for the call lists that budget in
    ``/metrics``, as a decided request's budgets are, though no call was prepared for it."""
    key = "sk-restart-carol"
    budget = f"key:{hash_key(key)}:tier:small:3600s"
    with upstream(tmp_path) as up:
        config, keys_file = _per_key_budget_setup(tmp_path, up, joules=0.001, on_exhausted="reject")
        with router_serve(config, tmp_path, "--keys", str(keys_file)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=20)
            with pytest.raises(openai.RateLimitError) as refused:
                client.chat.completions.create(model="router", messages=user("hello"))
            assert "budget_exhausted" in str(refused.value)
            samples = _budget_samples(url, key)
    assert samples.get("router_budget_used_joules", {}).get(budget) == 0.0
    assert samples.get("router_budget_remaining_joules", {}).get(budget) == pytest.approx(0.001)


class _BudgetKeysDown(SQLiteLedger):
    """TEST DOUBLE: a SQLite ledger whose store cannot list its budget counters (a store down at start)."""

    def budget_keys(self, since: float) -> list[str]:
        raise LedgerError("ledger sqlite:///x: could not list the budget counters: down; fix: bring it back")


def test_the_proxy_starts_when_the_ledger_cannot_list_its_budgets(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Reading the budgets in use at start is no reason to refuse to start: it is logged, and the per-key
    budgets show once requests meet them."""
    with upstream(tmp_path) as up:
        config_file, keys_file = _per_key_budget_setup(tmp_path, up, joules=1000)
    config = RouterConfig.load(config_file)
    router = Router(config, ledger=_BudgetKeysDown(tmp_path / "down.sqlite3"), keys=KeyStore.from_file(keys_file))
    try:
        with caplog.at_level("WARNING", logger="router.proxy"):
            app = create_app(router)
        assert len(app.state.proxy.metrics.budgets_seen) == 0
        assert "could not read the budgets in use" in caplog.text
    finally:
        router.close()


class _RouterStub:
    """TEST DOUBLE: what :class:`ProxyMetrics` reads of a Router: configured keys, no cards, and at scrape time no
    backends, no cooldowns and no budgets."""

    keys = {"a-key": None}
    cards: dict[str, object] = {}
    engine = None
    ledger = None

    def cooling_down(self) -> frozenset[str]:
        return frozenset()

    def loaded_backends(self) -> dict[str, object]:
        return {}


def _record(model: str, tier: str, energy_j: float, outcome: str = "ok", key_hash: str | None = "kh") -> LedgerRecord:
    return LedgerRecord(request_id="r", model=model, tier=tier, energy_j=energy_j, energy_source="estimated",
                        outcome=outcome, key_hash=key_hash)  # type: ignore[arg-type]


def test_metrics_render_as_prometheus_client_counters_and_histograms_would(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The counts ProxyMetrics keeps itself are written as prometheus-client's own ``Counter`` and ``Histogram``
    write the same observations: samples, bucket bounds (a value on a bound counts in it), ``+Inf``, ``_sum``,
    ``_count``, and ``_created`` (time.time counts its calls here, so both stamp alike when they stamp in the same
    order: each series when first counted, each histogram when made)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from router.errors import BackendError, CancelledError, UnknownModelError
    from router.proxy.metrics import ProxyMetrics, failure_outcome

    def clock_counting_calls() -> Callable[[], float]:
        calls = iter(range(1, 1_000_000))
        return lambda: 1_700_000_000 + 0.25 * next(calls)

    failures = (BackendError("down"), CancelledError("gone"), UnknownModelError("who"))
    seconds = [0.0, 0.0001, 0.00012, 0.001, 0.05, 0.1, 1, 1.5, 60, 61.0, 1e6]
    monkeypatch.setattr(time, "time", clock_counting_calls())
    ours = ProxyMetrics(_RouterStub())  # type: ignore[arg-type]
    for i, s in enumerate(seconds):
        ours.observe_prepared(s * 1000, ())
        ours.observe_answered("small", "s", "kh" if i % 2 else None, s)
        ours.observe_record(_record("small", "s", 0.5 * i, "error" if i % 3 == 0 else "ok"))
        ours.observe_failed_request(failures[i % 3], None, None, "kh")

    monkeypatch.setattr(time, "time", clock_counting_calls())
    registry = CollectorRegistry()
    requests, joules, errors, failed = (
        Counter(c.name, c.documentation, c.labelnames, registry=registry)
        for c in (ours.requests, ours.joules, ours.errors, ours.failed_attempts))
    decision, latency = (Histogram(h.name, h.documentation, buckets=h.upper_bounds, registry=registry)
                         for h in (ours.decision, ours.latency))
    for i, s in enumerate(seconds):
        decision.observe(s * 1000 / 1000)
        requests.labels("small", "s", "kh" if i % 2 else "-", "ok").inc()
        latency.observe(s)
        if i:  # no joules, no series
            joules.labels("small", "s", "kh").inc(0.5 * i)
        if i % 3 == 0:
            failed.labels("small").inc()
        exc = failures[i % 3]
        requests.labels("-", "-", "kh", failure_outcome(exc)).inc()
        errors.labels(exc.code or exc.error_type, str(exc.http_status)).inc()

    expected = generate_latest(registry).decode()
    assert ours.render().decode().startswith(expected)
    assert 'router_request_seconds_bucket{le="+Inf"} 11.0' in expected and "_created" in expected


def test_metrics_leave_out_created_samples_when_prometheus_client_is_told_to() -> None:
    """``disable_created_metrics()`` (or PROMETHEUS_DISABLE_CREATED_SERIES) drops ``_created`` from
    prometheus-client's own counters and histograms; ours follow the switch at each scrape, as theirs do."""
    from prometheus_client import disable_created_metrics, enable_created_metrics

    from router.proxy.metrics import ProxyMetrics

    ours = ProxyMetrics(_RouterStub())  # type: ignore[arg-type]
    ours.observe_answered("small", "s", "kh", 0.1)
    ours.observe_record(_record("small", "s", 2.0))
    assert b"router_requests_created{" in ours.render() and b"router_request_seconds_created " in ours.render()
    disable_created_metrics()
    try:
        text = ours.render()
    finally:
        enable_created_metrics()
    assert b"_created" not in text and b"router_requests_total{" in text
    assert b"router_request_seconds_created " in ours.render()


def test_metrics_lose_no_count_to_threads_counting_at_once() -> None:
    """The event loop, batch-line threads and ledger-writing threads count into one ProxyMetrics: no increment
    may be lost between them (threads switch every microsecond here, so a count without the lock would be)."""
    import sys
    import threading

    from prometheus_client.parser import text_string_to_metric_families

    from router.proxy.metrics import ProxyMetrics

    metrics = ProxyMetrics(_RouterStub())  # type: ignore[arg-type]
    threads, each = 8, 3000
    start = threading.Barrier(threads)

    def count() -> None:
        start.wait()
        for _ in range(each):
            metrics.observe_answered("small", "s", "kh", 0.003)
            metrics.observe_record(_record("small", "s", 1.0))
            metrics.observe_prepared(0.2, ())

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=count) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(interval)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(metrics.render().decode()) for s in family.samples}
    total = threads * each
    assert samples["router_requests_total", (("key", "kh"), ("model", "small"), ("outcome", "ok"),
                                             ("tier", "s"))] == total
    assert samples["router_energy_joules_total", (("key", "kh"), ("model", "small"), ("tier", "s"))] == total
    assert samples["router_request_seconds_count", ()] == total
    assert samples["router_request_seconds_bucket", (("le", "0.005"),)] == total
    assert samples["router_decision_seconds_count", ()] == total


class _CoolingRouterStub(_RouterStub):
    """TEST DOUBLE: :class:`_RouterStub` with one model passed over (its backend could not start)."""

    def __init__(self, model: str) -> None:
        self.model = model

    def cooling_down(self) -> frozenset[str]:
        return frozenset({self.model})


def test_a_worker_scrape_adds_the_other_workers_snapshots(tmp_path: Path) -> None:
    """Under ``router serve --workers N`` any worker may answer a scrape: it adds the latest snapshot of every
    other worker to its own live counts. A worker that stopped, or was killed (its snapshot no longer refreshed),
    still adds its counts, or the totals would drop when it goes; its cooldown gauge no longer counts."""
    from prometheus_client.parser import text_string_to_metric_families

    from router.errors import UnknownModelError
    from router.proxy.metrics import ProxyMetrics

    ours = ProxyMetrics(_RouterStub())  # type: ignore[arg-type]
    live = ProxyMetrics(_CoolingRouterStub("live-cooling"))  # type: ignore[arg-type]
    stopped = ProxyMetrics(_CoolingRouterStub("stopped-cooling"))  # type: ignore[arg-type]
    killed = ProxyMetrics(_CoolingRouterStub("killed-cooling"))  # type: ignore[arg-type]
    for n, worker in enumerate((ours, live, stopped, killed), start=1):
        for _ in range(n):
            worker.observe_answered("small", "s", "kh", 0.003 * n)
            worker.observe_prepared(0.2, ())
        worker.observe_record(_record("small", "s", 0.5 * n))
        worker.observe_failed_request(UnknownModelError("who"), None, None, "kh")
    hour = 3600.0  # no snapshot but the first and the last in this test
    for worker in (live, stopped, killed):
        worker.share_through(tmp_path, interval_s=hour)
    stopped.stop_sharing()
    killed_file = killed._snapshots.path  # type: ignore[union-attr]
    snapshot = json.loads(killed_file.read_text())
    snapshot["written"] -= 60  # TEST DOUBLE: a worker killed a minute ago leaves its snapshot as it was
    killed_file.write_text(json.dumps(snapshot))
    (tmp_path / "99999-1.json").write_text('{"counts": ')  # a torn file is passed over
    ours.share_through(tmp_path, interval_s=hour)
    ours.observe_answered("small", "s", "kh", 0.003)  # live counts of the scraped worker, after its snapshot
    try:
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(ours.render().decode()) for s in family.samples}
    finally:
        for worker in (ours, live, killed):
            worker.stop_sharing()
    answered = 1 + 1 + 2 + 3 + 4
    assert samples["router_requests_total", (("key", "kh"), ("model", "small"), ("outcome", "ok"),
                                             ("tier", "s"))] == answered
    assert samples["router_requests_total", (("key", "kh"), ("model", "-"), ("outcome", "rejected"),
                                             ("tier", "-"))] == 4
    assert samples["router_errors_total", (("status", "404"), ("type", "model_not_found"))] == 4
    assert samples["router_energy_joules_total", (("key", "kh"), ("model", "small"), ("tier", "s"))] == 5.0
    assert samples["router_request_seconds_count", ()] == answered
    assert samples["router_request_seconds_sum", ()] == pytest.approx(0.003 * (1 + 1 + 4 + 9 + 16))
    assert samples["router_decision_seconds_count", ()] == 1 + 2 + 3 + 4
    assert samples["router_request_seconds_created", ()] == min(
        w.latency.created for w in (ours, live, stopped, killed))
    cooling = {labels: value for (name, labels), value in samples.items() if name == "router_backend_cooling_down"}
    assert cooling == {(("model", "live-cooling"),): 1.0}
