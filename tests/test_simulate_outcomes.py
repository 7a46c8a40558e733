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
        (line("x", {"gpt-4-1106-preview": {"correct": True, "requests": 0}}), "`requests`"),
        (line("x", {"gpt-4-1106-preview": {"correct": True, "requests": 2.5}}), "`requests`"),
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


def test_huge_token_counts_are_bad_lines_not_crashes(tmp_path: Path, cards) -> None:
    huge = 10**400
    p = write(tmp_path, [
        line("a", GOOD),
        line("b", GOOD, input_tokens=huge),
        line("c", {"gpt-4-1106-preview": {"correct": True, "output_tokens": huge}}),
        line("d", {"gpt-4-1106-preview": {"correct": True, "energy_j": huge}}),
        line("e", GOOD),
    ])
    with pytest.raises(OutcomesError, match=r"o\.jsonl:2: request 'b': `input_tokens` must be an integer in") as info:
        load_outcomes(p, cards)
    assert "(401 characters)" in str(info.value)  # the number is cut short in the message, not printed whole
    t = load_outcomes(p, cards, skip_bad=True)
    assert t.ids == ["a", "e"] and t.skipped == 3
    assert any("line 3:" in e and "`output_tokens`" in e for e in t.skipped_examples)
    assert any("line 4:" in e and "`energy_j`" in e for e in t.skipped_examples)


def test_json_nested_too_deeply_is_a_bad_line(tmp_path: Path, cards) -> None:
    p = write(tmp_path, [line("a", GOOD), "[" * 100_000 + "]" * 100_000])
    with pytest.raises(OutcomesError, match=r"o\.jsonl:2: not valid JSON \(nested too deeply\)"):
        load_outcomes(p, cards)
    assert load_outcomes(p, cards, skip_bad=True).skipped == 1


def test_a_file_with_no_usable_line_is_a_clear_error(tmp_path: Path, cards) -> None:
    p = write(tmp_path, ["{oops", line("b", {"gpt-4-1106-preview": {"correct": 2}}), "[1]"])
    with pytest.raises(OutcomesError) as info:
        load_outcomes(p, cards, skip_bad=True)
    msg = str(info.value)
    assert "no usable line: all 3 request lines are bad" in msg and "first: line 1: not valid JSON" in msg


def test_more_tasks_than_a_16_bit_code_holds(tmp_path: Path, cards) -> None:
    n = 40_000
    rows = [json.dumps({"id": f"r{i}", "prompt": "Q?", "task": f"t{i}", "outcomes": GOOD}) for i in range(n)]
    t = load_outcomes(write(tmp_path, rows), cards)
    assert t.tasks.dtype == np.int32 and len(t.task_names) == n
    assert [t.task_names[c] for c in t.tasks[[0, 32_767, 32_768, n - 1]]] == ["t0", "t32767", "t32768", f"t{n - 1}"]


def test_simulation_reports_every_segment_even_tens_of_thousands(tmp_path: Path, cards) -> None:
    from test_simulate_helpers import CheapestAboveTarget, FixedClassifier

    from router.simulate.simulator import Simulator

    # three workload segments by hand: mixtral is right on a/x rows, gpt-4 everywhere but b/y
    small = [json.dumps({"id": f"{seg}{i}", "prompt": "Q?", "task": f"{seg}/z", "outcomes": {
        "mixtral-8x7b-instruct": {"correct": seg == "a", "energy_j": 1.0},
        "gpt-4-1106-preview": {"correct": seg != "b", "energy_j": 10.0 * (i + 1)}}})
        for seg, k in (("a", 2), ("b", 1), ("c", 3)) for i in range(k)]
    classifier = FixedClassifier({"Q?": {"mixtral-8x7b-instruct": 0.9, "gpt-4-1106-preview": 0.95}})
    t = load_outcomes(write(tmp_path, small), cards)
    stats = Simulator(t, cards, classifier, CheapestAboveTarget(0.8)).stats("all large", np.full(t.n, 1))
    assert stats.by_segment["a"] == {"requests": 2, "accuracy": 1.0, "large_accuracy": 1.0,
                                     "energy_j_per_request": 15.0, "large_energy_j_per_request": 15.0}
    assert stats.by_segment["b"]["accuracy"] == 0.0 and stats.by_segment["c"]["energy_j_per_request"] == 20.0
    n = 40_000
    rows = [json.dumps({"id": f"r{i}", "prompt": "Q?", "task": f"t{i}", "outcomes": GOOD}) for i in range(n)]
    big = load_outcomes(write(tmp_path, rows), cards)
    stats = Simulator(big, cards, classifier, CheapestAboveTarget(0.8)).stats("all small", np.zeros(n, np.int64))
    assert len(stats.by_segment) == n and stats.by_segment["t39999"]["requests"] == 1
    assert stats.by_segment["t32768"]["accuracy"] == 1.0


def test_skip_reasons_group_by_reason_not_by_request(tmp_path: Path, cards) -> None:
    p = write(tmp_path, [
        line("a", GOOD),
        line("x", {"gpt-4-1106-preview": {"correct": 2}}),
        line("y", {"gpt-4-1106-preview": {"correct": 3}}),
        line("z: w", {"gpt-4-1106-preview": {"correct": True, "output_tokens": -1}}),
        json.dumps({"id": "v", "outcomes": GOOD}),
        "{oops",
    ])
    t = load_outcomes(p, cards, skip_bad=True)
    assert dict(t.skipped_reasons) == {
        "score for model `gpt-4-1106-preview` is outside [0, 1]": 2,
        "`output_tokens` for model `gpt-4-1106-preview` must be an integer in [0, 100,000,000]": 1,
        "missing `prompt`": 1,
        "not valid JSON": 1,
    }
    assert "line 3: request 'y': score for model `gpt-4-1106-preview` is outside [0, 1], got 3" in t.skipped_examples


def test_a_folder_is_not_an_outcomes_file(tmp_path: Path, cards) -> None:
    with pytest.raises(OutcomesError, match="is a folder, not an outcomes file"):
        load_outcomes(tmp_path, cards)
