"""Whatever a card, policy, config, keys or outcomes file holds, only typed errors escape the loaders.

Property tests (hypothesis) start from valid documents and mutate them with values of random types (huge
integers, NaN and infinity, paths, nested lists and mappings), delete and add fields, corrupt bytes, and feed
random bytes. The loaders must either return something valid (checked: numbers finite and in range, files
found) or raise :class:`ConfigError` / :class:`OutcomesError`. Nothing may hang: every example is bounded in
size, and the whole file runs in a few seconds.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.cards import load_card, load_cards
from router.config import RouterConfig
from router.errors import ConfigError, RouterError
from router.keys import KeyStore
from router.policy.loader import load_policy
from router.simulate.outcomes import parse_outcomes_lines

FAST = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])

# -- random values ---------------------------------------------------------------------------------------------
TRICKY_TEXT = [".nan", ".inf", "-.inf", "1e-300", "1.0e-300", "../outside.onnx", "/", "/etc", "\x00", "", "~",
               "a" * 300, "2024-13-45", "tier:large", "*", "key-0123456789abcdef", "model.onnx"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=10**399, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e-300, 0.0, -0.0, 1e308]),
    st.text(max_size=12),
    st.sampled_from(TRICKY_TEXT),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from _paths(value, (*prefix, i))


def _apply(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> Any:
    """``doc`` with the value at ``path`` replaced, deleted, or given an extra sibling field."""
    if not path:
        return value if op == "set" else doc
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if op == "set":
        parent[last] = value
    elif op == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"extra_{len(parent)}"] = value
    return doc


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        doc = _apply(doc, path, draw(st.sampled_from(["set", "set", "delete", "add"])), draw(values))
    return doc


@st.composite
def file_bytes(draw: st.DrawFn, base: dict[str, Any]) -> bytes:
    """A mutated document as YAML, sometimes with bytes overwritten (non-UTF-8, broken syntax), or pure noise."""
    kind = draw(st.sampled_from(["yaml", "yaml", "yaml", "corrupt", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=200))
    data = yaml.safe_dump(draw(mutated(base)), allow_unicode=True).encode("utf-8")
    if kind == "corrupt" and data:
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


# -- documents to mutate ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A card folder holding the files the base cards name."""
    path = tmp_path_factory.mktemp("props")
    for name in ("model.onnx", "tok.json", "w.gguf"):
        (path / name).write_bytes(b"not really a model")
    return path


ENERGY = {"per_call_j": 0.5, "per_input_token_j": 0.01, "per_output_token_j": 0.1, "source": "estimate",
          "citation": "test"}
CARDS = [
    {"name": "remote", "tier": "large", "context_length": 4096, "energy": ENERGY, "aliases": ["r"],
     "prior_accuracy": {"chat": 0.7},
     "backend": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "timeout_s": 5.0,
                 "max_retries": 1, "default_max_tokens": 64}},
    {"name": "spec", "tier": "specialist", "tasks": ["sentiment"], "context_length": 512, "energy": ENERGY,
     "backend": {"type": "onnx", "path": "model.onnx", "tokenizer": "tok.json", "labels": ["neg", "pos"],
                 "max_length": 64}},
    {"name": "local", "tier": "small", "context_length": 2048, "energy": ENERGY,
     "backend": {"type": "llama_cpp", "weights": {"path": "w.gguf"}, "n_ctx": 2048, "temperature": 0.2,
                 "repeat_penalty": 1.1, "default_max_tokens": 32}},
]
POLICY = {
    "name": "p", "accuracy": {"relative_to_largest": 0.9},
    "budgets": [{"model": "tier:large", "joules": 1000.0, "per": "hour"}, {"joules": 5.0, "per": 30.0}],
    "on_budget_exhausted": "fallback",
    "cascade": {"enabled": True, "escalate_below": 0.5, "escalate_to": "next", "start": "target"},
    "pinned": {"sentiment": "spec"}, "output_tokens_estimate": 64,
    "keys": [{"key_hash": "key-0123456789abcdef", "accuracy": {"min_accuracy": 0.5},
              "budgets": [{"joules": 10.0, "per": "minute", "scope": "per_key"}]}],
    "calibrated": {"target_kind": "relative", "target": 0.9, "offsets": {"remote": -0.05}, "confidence": 0.9,
                   "n_calibration": 100, "achieved_calibration": 0.92, "held_out": {"n": 50, "achieved": 0.9}},
}
CONFIG = {"default_policy": "balanced", "ledger_retention_days": 30, "grid_g_per_kwh": 400.0,
          "deadline_s": 30.0, "max_prompt_chars": 10_000, "cpu_power": {"watts_per_busy_core": 12.0},
          "cooldown": {"failures": 3, "seconds": 30.0}, "proxy": {"max_body_bytes": 65536, "ledger_group_ms": 20},
          "journal": {"fsync": "group", "fsync_interval_ms": 50}, "keys": [{"name": "a", "sha256": "0" * 64}]}
KEYS = {"keys": [{"name": "a", "sha256": "ab" * 32, "policy": "eco"}, {"name": "b", "sha256": "cd" * 32}]}


def _finite_in(value: float, low: float, high: float) -> bool:
    return math.isfinite(value) and low <= value <= high


# -- properties ------------------------------------------------------------------------------------------------
@FAST
@given(data=st.data())
def test_any_card_file_loads_valid_or_raises_config_error(folder: Path, data: st.DataObject) -> None:
    file = folder / "card.yaml"
    file.write_bytes(data.draw(file_bytes(data.draw(st.sampled_from(CARDS)))))
    try:
        card = load_card(file)
    except ConfigError:
        return
    e = card.energy
    assert all(_finite_in(v, 0, 1e9) for v in (e.per_call_j, e.per_input_token_j, e.per_output_token_j))
    assert all(_finite_in(v, 0, 1) for v in card.prior_accuracy.values())
    assert 0 < card.context_length <= 100_000_000
    spec = card.backend
    if spec is not None and spec.type == "onnx":
        assert spec.model_file is not None and spec.model_file.is_file()
    if spec is not None and spec.type == "llama_cpp" and spec.weights.path:
        assert spec.weights.local_file is not None and spec.weights.local_file.is_file()
    if spec is not None and spec.type == "openai":
        assert _finite_in(spec.timeout_s, 0, 86_400)


@FAST
@given(data=st.data())
def test_any_policy_file_loads_valid_or_raises_config_error(folder: Path, data: st.DataObject) -> None:
    file = folder / "p.yaml"
    file.write_bytes(data.draw(file_bytes(POLICY)))
    try:
        policy = load_policy(file)
    except ConfigError:
        return
    budgets = [*policy.budgets, *(b for k in policy.keys for b in k.budgets)]
    assert all(math.isfinite(b.window_s) and b.window_s >= 1 and _finite_in(b.joules, 1e-320, math.inf)
               for b in budgets)
    assert _finite_in(policy.accuracy.value, 0, 1) and _finite_in(policy.cascade.escalate_below, 0, 1)
    if policy.calibrated is not None:
        assert all(_finite_in(v, -1, 1) for v in policy.calibrated.offsets.values())


@settings(deadline=None, max_examples=80)
@given(data=st.data())
def test_any_config_or_keys_file_loads_or_raises_config_error(folder: Path, data: st.DataObject) -> None:
    config, keys = folder / "router.yaml", folder / "keys.yaml"
    config.write_bytes(data.draw(file_bytes(CONFIG)))
    keys.write_bytes(data.draw(file_bytes(KEYS)))
    try:
        cfg = RouterConfig.load(config)
        assert _finite_in(cfg.deadline_s, 0, 86_400) and _finite_in(cfg.grid_g_per_kwh, 0, math.inf)
        assert _finite_in(cfg.cooldown.seconds, 0, 86_400) and _finite_in(cfg.journal.fsync_interval_ms, 0, 60_000)
    except ConfigError:
        pass
    with contextlib.suppress(ConfigError):
        KeyStore.from_file(keys)


@pytest.fixture(scope="module")
def hosted_cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from test_simulate_helpers import make_cards_dir

    return load_cards(make_cards_dir(tmp_path_factory.mktemp("outcomes")))


LINE = {"id": "r1", "prompt": "Q?", "task": "mmlu/x", "input_tokens": 12,
        "outcomes": {"mixtral-8x7b-instruct": {"correct": True, "output_tokens": 3},
                     "gpt-4-1106-preview": {"correct": 0.5, "energy_j": 2.5}}}


@st.composite
def outcome_line(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["good", "mutated", "mutated", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=80))
    if kind == "good":
        doc = {**LINE, "id": draw(st.text(min_size=1, max_size=4)), "task": draw(st.text(max_size=4))}
    else:
        doc = draw(mutated(LINE))
    return json.dumps(doc, allow_nan=True).encode()


@settings(deadline=None, max_examples=150)
@given(lines=st.lists(outcome_line(), min_size=1, max_size=6), skip_bad=st.booleans())
def test_any_outcome_lines_load_valid_or_raise_router_error(hosted_cards: dict[str, Any], lines: list[bytes],
                                                            skip_bad: bool) -> None:
    try:
        table = parse_outcomes_lines(lines, hosted_cards, skip_bad=skip_bad)
    except RouterError:
        return
    present = ~np.isnan(table.score)
    assert table.n >= 1 and table.n + table.skipped <= len(lines)
    assert np.isfinite(table.energy_j[present]).all() and (table.energy_j[present] >= 0).all()
    assert ((table.score[present] >= 0) & (table.score[present] <= 1)).all()
