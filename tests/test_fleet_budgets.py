"""A per-key `reject` budget on a fleet (`router serve --workers 2` on one Redis ledger), seen by an openai SDK
client: the 429 says why the budget refused the call when most of it is left."""

from __future__ import annotations

import hashlib
import re
import time
from contextlib import closing
from pathlib import Path

import openai
import pytest
from conftest_redis import redis_server  # noqa: F401 - the fixture
from servers.procs import models_dir, policies_dir, remote_card, router_serve, upstream

from router.ledger import Ledger, hash_key, open_ledger

pytestmark = pytest.mark.slow

KEY = "sk-team-a"


@pytest.mark.redis
def test_a_429_from_a_budget_with_room_left_says_what_the_call_needs(tmp_path: Path, redis_server: str) -> None:  # noqa: F811
    """The card's 1.6 J calls are held at ~14 J (their answer length not yet learned) under a 20 J budget: after four
    calls 6.4 J is used and the next call's hold no longer fits. The refusal said `is spent (6.4 J of 20 J)`,
    which reads as a wrong figure; it now says what the call needs, as the reservation's refusal does."""
    ledger_url = f"{redis_server}/7"
    with upstream(tmp_path) as up:
        models = models_dir(tmp_path / "models", {"remote-echo": remote_card("remote-echo", up, "echo")},
                            specialist=False)
        policies = policies_dir(tmp_path / "policies", {"pa": (
            "name: pa\naccuracy: {min_accuracy: 0.0}\nallowed_models: [remote-echo]\non_budget_exhausted: reject\n"
            f"keys:\n  - key_hash: {hash_key(KEY)}\n    budgets: [{{model: remote-echo, joules: 20, per: hour}}]\n")})
        config = tmp_path / "config.yaml"
        config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\ndefault_policy: pa\n"
                          f"ledger_url: '{ledger_url}'\njournal: {{folder: {tmp_path / 'journal'}}}\n"
                          f"keys:\n  - {{name: a, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}, policy: pa}}\n")
        with router_serve(config, tmp_path, "--workers", "2") as url, closing(open_ledger(ledger_url)) as ledger:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)
            refusals: list[openai.APIStatusError] = []
            # 12 calls, not 8: where the hour's window rolls between the 4th and 5th, the new window refuses too
            for _ in range(12):
                try:
                    client.chat.completions.create(model="router", messages=[{"role": "user", "content": "hi"}])
                except openai.RateLimitError as exc:
                    refusals.append(exc)
                _wait_until_settled(ledger)
    assert refusals, "the budget never refused a call"
    for exc in refusals:
        message = exc.message
        assert "budget key:" in message and "the call needs ~" in message, message
        # every earlier call settled: the figure is the four calls' 1.6 J each, not a hold of a call still settling
        assert "(6.4 J of 20 J this window" in message, message
        said = re.search(r"retry in (\d+) s", message)
        assert said is not None, message
        retry_after = int(exc.response.headers["retry-after"])
        assert 0 < retry_after <= 3600 and abs(retry_after - int(said.group(1))) <= 1, (retry_after, message)


def _wait_until_settled(ledger: Ledger, timeout_s: float = 30.0) -> None:
    """Until no budget hold is left in the ledger: each worker's writer has applied the settlement of the call it
    answered (it queues them), so the next decision reads what the calls used; on a busy machine that takes
    longer than any fixed sleep allows for."""
    deadline = time.monotonic() + timeout_s
    while (counts := ledger.hold_counts()) is not None and counts.live + counts.unbounded:
        assert time.monotonic() < deadline, f"holds still unsettled after {timeout_s:g} s: {counts}"
        time.sleep(0.05)
