"""Outcomes file reader: good lines, aliases, joules, and every kind of bad line with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_simulate_helpers import make_cards_dir

from router.cards import load_cards
from router.simulate.outcomes import OutcomesError, load_outcomes


@pytest.fixture
def cards(tmp_path: Path):
    return load_cards(make_cards_dir(tmp_path))


def line(rid: str, outcomes: dict, prompt: str = "Q?\nA. x\nB. y\nAnswer:", **extra) -> str:
    return json.dumps({"id": rid, "prompt": prompt, "task": "mmlu/x", "outcomes": outcomes, **extra})


GOOD = {"mixtral-8x7b-instruct": {"correct": True, "output_tokens": 1}, "gpt-4-1106-preview": {"correct": False}}


def write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "o.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_reads_scores_aliases_and_joules(tmp_path: Path, cards) -> None:
    p = write(tmp_path, [
        line("a", GOOD),
        # RouteLLM's own name, a fractional score, and a measured energy
        line("b", {"mistralai/Mixtral-8x7B-Instruct-v0.1": {"correct": 0.25, "energy_j": 3.5},
                   "GPT-4-1106-preview": {"correct": 1, "output_tokens": 7}}, prompt="x" * 40),
    ])
    t = load_outcomes(p, cards)
    assert t.n == 2 and t.ids == ["a", "b"]
    mix, gpt = t.models.index("mixtral-8x7b-instruct"), t.models.index("gpt-4-1106-preview")
    assert t.score[:, mix].tolist() == [1.0, 0.25]
    assert t.score[:, gpt].tolist() == [0.0, 1.0]
    # joules: the card's own formula with input tokens = ceil(chars / 4), or the measured figure
    tokens_a = -(-len("Q?\nA. x\nB. y\nAnswer:") // 4)
    assert t.energy_j[0, mix] == pytest.approx(cards["mixtral-8x7b-instruct"].energy.joules(tokens_a, 1))
    assert t.energy_j[0, gpt] == pytest.approx(cards["gpt-4-1106-preview"].energy.joules(tokens_a, 64))
    assert t.energy_j[1, mix] == 3.5 and t.measured[1, mix] and not t.measured[1, gpt]
    assert t.energy_j[1, gpt] == pytest.approx(cards["gpt-4-1106-preview"].energy.joules(10, 7))
    assert t.defaulted_output_tokens == 1


def test_missing_model_is_nan_and_groups_by_prompt(tmp_path: Path, cards) -> None:
    p = write(tmp_path, [line("a", GOOD), line("b", GOOD), line("c", {"mixtral-8x7b-instruct": {"correct": 1}})])
    t = load_outcomes(p, cards)
    assert np.isnan(t.score[2, t.models.index("gpt-4-1106-preview")])
    # same prompt and same models share a group; a different model set is its own group
    assert t.group.tolist() == [0, 0, 1] and len(t.prompts) == 2


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (line("x", {"llama-9000": {"correct": True}}), "unknown model `llama-9000`"),
        (line("x", {}), "missing outcomes"),
        (json.dumps({"id": "x", "prompt": "p"}), "missing outcomes"),
        (line("x", {"gpt-4-1106-preview": {"output_tokens": 3}}), "missing outcome `correct`"),
        (line("x", {"gpt-4-1106-preview": {"correct": 1.5}}), "outside [0, 1]"),
        (line("x", {"gpt-4-1106-preview": {"correct": -0.1}}), "outside [0, 1]"),
        (line("x", {"gpt-4-1106-preview": {"correct": "yes"}}), "true/false or a score"),
        (line("x", {"gpt-4-1106-preview": {"correct": True, "output_tokens": -2}}), "output_tokens"),
        (line("x", {"gpt-4-1106-preview": {"correct": True, "energy_j": "lots"}}), "energy_j"),
        (json.dumps({"prompt": "p", "outcomes": GOOD}), "missing `id`"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, cards, bad: str, message: str) -> None:
    p = write(tmp_path, [line("a", GOOD), "", line("b", GOOD), bad, line("c", GOOD)])
    with pytest.raises(OutcomesError) as info:
        load_outcomes(p, cards)
    assert info.value.line == 4
    assert f"{p}:4: " in str(info.value)
    assert message in str(info.value)


def test_skip_bad_counts_and_keeps_the_rest(tmp_path: Path, cards) -> None:
    p = write(tmp_path, [
        line("a", GOOD),
        "{oops",
        line("b", {"gpt-4-1106-preview": {"correct": 2}}),
        line("c", GOOD),
        line("d", {"nobody": {"correct": True}}),
    ])
    t = load_outcomes(p, cards, skip_bad=True)
    assert t.ids == ["a", "c"]
    assert t.skipped == 3 and t.lines_read == 5
    assert sum(t.skipped_reasons.values()) == 3
    assert t.skipped_examples[0].startswith("line 2: not valid JSON")
    assert any(e.startswith("line 3:") and "outside [0, 1]" in e for e in t.skipped_examples)


def test_empty_file_is_an_error(tmp_path: Path, cards) -> None:
    with pytest.raises(OutcomesError, match="no requests"):
        load_outcomes(write(tmp_path, [""]), cards)
    with pytest.raises(OutcomesError, match="does not exist"):
        load_outcomes(tmp_path / "nope.jsonl", cards)
