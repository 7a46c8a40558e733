"""Energy estimates learned from the ledger: the card is the prior, measurements decide, every process sharing
the ledger learns from all of them, and the upper figure covers what calls actually take."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from forking import in_a_forked_child

from router.cards import ModelCard, load_cards
from router.energy import EnergyReading
from router.energy.estimates import UNMEASURED_HOLD, EnergyEstimates
from router.ledger import LedgerRecord, SQLiteLedger

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cards():
    return {n: c for n, c in load_cards(ROOT / "models").items() if c.callable}


class Clock:
    """Test double for the monotonic clock: time moves when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _remote(card: ModelCard) -> ModelCard:
    data = {**card.model_dump(exclude={"path", "backend"}), "name": "remote",
            "backend": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}}
    return ModelCard.model_validate(data)


def _call(model: str, joules: float, *, task: str = "chat", inp: int = 20, out: int = 30,
          source: str = "estimated:cpu-time", ts: float = 1.0) -> LedgerRecord:
    return LedgerRecord(request_id="r", model=model, tier="small", energy_j=joules, energy_source=source, task=task,
                        input_tokens=inp, output_tokens=out, ts=ts)


def test_a_model_without_calls_has_no_estimate_and_a_generous_hold(tmp_path, cards) -> None:
    est = EnergyEstimates(SQLiteLedger(tmp_path / "l.sqlite3"), cards)
    small = cards["smollm2-135m"]
    assert est.estimate(small, "chat", 20) is None  # the engine uses the card
    assert est.upper_for_card(small, 10.0) == 10.0 * UNMEASURED_HOLD
    assert est.upper_for_card(_remote(small), 10.0) == 10.0  # a remote card's figure is exact for its token counts


def test_measurements_decide_and_the_card_is_only_the_prior(tmp_path, cards) -> None:
    """SmolLM2's card says ~0.26 J per output token; this machine measures ~2.5 J per call more than that."""
    ledger = SQLiteLedger(tmp_path / "l.sqlite3")
    small = cards["smollm2-135m"]
    rng = random.Random(1)
    calls = []
    for i in range(60):
        out = rng.randint(10, 60)
        calls.append(_call("smollm2-135m", 3.0 + 0.5 * out * rng.uniform(0.9, 1.1), out=out, ts=1.0 + i))
    ledger.record_many(calls)
    est = EnergyEstimates(ledger, cards, clock=Clock())
    got = est.estimate(small, "chat", 20)
    assert got is not None and got.source == "ledger:60 calls"
    typical_out = sorted(c.output_tokens for c in calls)[len(calls) // 2]
    assert got.joules == pytest.approx(3.0 + 0.5 * typical_out, rel=0.15)
    covered = sum(c.energy_j <= got.upper_j for c in calls) / len(calls)
    assert covered >= 0.9  # the hold covers what calls take, nearly always
    assert est.estimate(small, "chat", 20, max_tokens=5).joules < got.joules  # a short cap, a cheaper call


def test_output_length_is_learned_per_task(tmp_path, cards) -> None:
    ledger = SQLiteLedger(tmp_path / "l.sqlite3")
    ledger.record_many([_call("gemma3-270m", 1.0 + 0.1 * 40, task="chat", out=40, ts=1.0 + i) for i in range(10)]
                       + [_call("gemma3-270m", 1.0 + 0.1 * 2, task="sentiment", out=2, ts=20.0 + i)
                          for i in range(10)])
    est = EnergyEstimates(ledger, cards, clock=Clock())
    large = cards["gemma3-270m"]
    chat, senti = est.estimate(large, "chat", 10), est.estimate(large, "sentiment", 10)
    assert chat is not None and senti is not None and senti.joules < chat.joules
    math_ = est.estimate(large, "math", 10)  # no math calls yet: the model's calls on any task stand in
    assert math_ is not None and senti.joules < math_.joules < chat.joules


def test_this_process_learns_at_once_and_other_processes_at_the_next_refresh(tmp_path, cards) -> None:
    path = tmp_path / "l.sqlite3"
    clock = Clock()
    mine = EnergyEstimates(SQLiteLedger(path), cards, refresh_s=10, refit_s=1, clock=clock)
    other_ledger = SQLiteLedger(path)  # another process writing to the same ledger
    spec = cards["sentiment-onnx"]
    assert mine.estimate(spec, "sentiment", 10) is None
    for i in range(6):
        rec = _call("sentiment-onnx", 0.5, task="sentiment", out=1, ts=1.0 + i)
        SQLiteLedger(path).record(rec)
        mine.observe(rec)
    clock.now += 1.5  # the refit interval
    got = mine.estimate(spec, "sentiment", 10)
    card_j = spec.energy.joules(10, 1)
    # six calls move the estimate most of the way from the card (the prior counts as three calls)
    assert got is not None and card_j + 0.5 * (0.5 - card_j) < got.joules < 0.5
    other_ledger.record_many([_call("sentiment-onnx", 2.0, task="sentiment", out=1, ts=10.0 + i) for i in range(40)])
    assert mine.estimate(spec, "sentiment", 10).joules < 0.5  # not yet: the other process's calls are unseen
    clock.now += 10  # the refresh interval: the ledger is read on a thread of its own, not the caller's
    mine.estimate(spec, "sentiment", 10)
    assert mine.refreshing is not None
    mine.refreshing.join()
    assert 1.4 < mine.estimate(spec, "sentiment", 10).joules < 2.0


def test_a_gpu_measured_with_its_host_modelled_is_learned_from(tmp_path, cards) -> None:
    """``meter: nvml`` where RAPL is not readable sums the GPU's measured joules with the CPU-time model's, and the
    sum reads ``estimated:nvml+cpu-time``: these are meter readings of this host, so the model's estimate is learned
    from them (they were taken for card figures, and a GPU model's estimate never left its card)."""
    gpu_and_host = (EnergyReading(0.0, "measured", "nvml") + EnergyReading(0.0, "estimated", "cpu-time")).source
    assert gpu_and_host == "estimated:nvml+cpu-time"
    ledger = SQLiteLedger(tmp_path / "l.sqlite3")
    ledger.record_many([_call("smollm2-135m", 40.0, out=30, source=gpu_and_host, ts=1.0 + i) for i in range(20)])
    small = cards["smollm2-135m"]
    got = EnergyEstimates(ledger, {"smollm2-135m": small}, clock=Clock()).estimate(small, "chat", 20)
    assert got is not None and got.source == "ledger:20 calls"
    assert got.joules > 2 * small.energy.joules(20, 30)  # the measurements, not the card, decide


def test_remote_models_learn_answer_lengths_only(tmp_path, cards) -> None:
    """A remote model's joules are its card's token profile; what the ledger teaches is how long its answers are."""
    remote = _remote(cards["smollm2-135m"])
    ledger = SQLiteLedger(tmp_path / "l.sqlite3")
    ledger.record_many([_call("remote", remote.energy.joules(20, 7), out=7, source="estimated:token-profile",
                              ts=1.0 + i) for i in range(8)])
    got = EnergyEstimates(ledger, {"remote": remote}, clock=Clock()).estimate(remote, "chat", 20)
    assert got is not None and got.joules == pytest.approx(remote.energy.joules(20, 7))
    assert got.source.startswith("card, answer length from ledger")


def test_a_remote_estimate_is_its_card_at_whole_answer_lengths(tmp_path, cards) -> None:
    """A remote model's estimate is exactly its card's profile at the typical answer length rounded and the upper
    one rounded up (the card counts whole tokens), capped by max_tokens first; a local model whose calls were not
    metered has none; ``for_request`` gives every model what ``estimate`` gives it."""
    remote, local = _remote(cards["smollm2-135m"]), cards["gemma3-270m"]
    outs = [3, 4, 7, 8, 9, 9, 30, 31]  # median 8.5 (rounds to even: 8), 95th percentile 30.65 (up: 31)
    ledger = SQLiteLedger(tmp_path / "l.sqlite3")
    ledger.record_many([_call("remote", remote.energy.joules(20, out), out=out, source="estimated:token-profile",
                              ts=1.0 + i) for i, out in enumerate(outs)]
                       + [_call("gemma3-270m", 1.0, out=5, source="estimated:token-profile", ts=20.0 + i)
                          for i in range(8)])
    est = EnergyEstimates(ledger, {"remote": remote, "gemma3-270m": local}, clock=Clock())
    for max_tokens, typical, upper in [(None, 8, 31), (20, 8, 20), (5, 5, 5)]:
        got = est.estimate(remote, "chat", 20, max_tokens)
        assert got is not None
        assert (got.joules, got.upper_j) == (remote.energy.joules(20, typical), remote.energy.joules(20, upper))
        assert est.for_request("chat", 20, max_tokens) == {"remote": got}
    assert est.estimate(local, "chat", 20) is None


def test_a_call_without_output_does_not_blow_up_the_spread_or_the_hold(tmp_path, cards) -> None:
    """A card that charges only output tokens (per call and per input token 0), calls whose joules the fit can only
    put on their output, and one answered call with no output: the fit puts that call at 0 J, and its measured
    joules over ~0 J once made the spread ~1e12, so the hold was the whole budget."""
    gemma = cards["gemma3-270m"]
    card = gemma.model_copy(update={"energy": gemma.energy.model_copy(
        update={"per_call_j": 0.0, "per_input_token_j": 0.0})})
    ledger = SQLiteLedger(tmp_path / "l.sqlite3")
    rng = random.Random(3)
    calls = [_call("gemma3-270m", (0.5 * out - 3.0) * rng.uniform(0.9, 1.1), out=out, ts=1.0 + i)
             for i, out in enumerate(rng.randint(10, 60) for _ in range(9))]
    calls.append(_call("gemma3-270m", 2.0, out=0, ts=20.0))
    ledger.record_many(calls)
    got = EnergyEstimates(ledger, {"gemma3-270m": card}, clock=Clock()).estimate(card, "chat", 20)
    assert got is not None and got.source == "ledger:10 calls"
    dearest = max(c.energy_j for c in calls)
    assert 0 < got.joules < dearest
    assert got.upper_j < 3 * dearest  # what a reservation holds stays the size of a call


def test_a_forked_child_records_and_estimates_with_a_lock_of_its_own(tmp_path, cards) -> None:
    """Estimates made before the process forks (a Router in gunicorn --preload, Celery's prefork pool), forked
    while the parent's refresh thread holds their lock (it does as it takes in what it read from the ledger): the
    child's calls are recorded and learned from, not left waiting forever for the parent's lock."""
    ledger = SQLiteLedger(tmp_path / "l.sqlite3")
    small = cards["smollm2-135m"]
    clock = Clock()
    est = EnergyEstimates(ledger, cards, clock=clock, min_calls=2)

    def in_the_child() -> None:  # a failed assert ends the child with exit code 1
        for i in range(3):
            est.observe(_call("smollm2-135m", 2.0, ts=1.0 + i))
        clock.now += 2.0  # past refit_s: the next decision refits what the child observed
        got = est.estimate(small, "chat", 20)
        assert got is not None and got.source == "ledger:3 calls", got

    est._lock.acquire()  # as the parent's refresh thread holds it at the fork
    try:
        in_a_forked_child(in_the_child, "the child learned from its calls", timeout_s=15, meanwhile=est._lock.release)
    finally:
        if est._lock.locked():
            est._lock.release()
