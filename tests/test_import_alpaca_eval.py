"""AlpacaEval results/ folder -> outcomes file: scores, token estimates, the alias and variant rules, the reference."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from router.cards import load_cards, load_catalogue
from router.cli import app
from router.simulate.alpaca_eval import base_of, import_alpaca_eval, instruction_id
from router.simulate.outcomes import OutcomesError, load_outcomes

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).parent / "data" / "alpaca_eval_results"


def _annotations(model: str) -> list[dict]:
    return json.loads((FIXTURE / model / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json").read_text())


def test_import_fixture(tmp_path: Path) -> None:
    cards = load_catalogue(ROOT / "models")
    out = tmp_path / "o.jsonl"
    report = import_alpaca_eval(FIXTURE, out, cards)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert report.rows == len(lines) == 4
    # the reference is left out; the together.ai variant is skipped because its base model is present
    assert report.models == {"Mixtral-8x7B-Instruct-v0.1_concise": "mixtral-8x7b-instruct", "phi-2": "phi-2",
                             "vicuna-13b-v1.5": "vicuna-13b-v1.5"}
    assert report.variants_skipped == {"vicuna-13b-v1.5-togetherai": "vicuna-13b-v1.5"}
    phi = {a["instruction"]: a for a in _annotations("phi-2")}
    for line in lines:
        a = phi[line["prompt"]]
        assert line["id"] == instruction_id(line["prompt"]) and line["task"] == f"alpaca_eval/{a['dataset']}"
        got = line["outcomes"]["phi-2"]
        assert got["correct"] == pytest.approx(min(1.0, max(0.0, a["preference"] - 1)), abs=1e-6)
        assert got["output_tokens"] == max(1, len(a["output_2"].strip().encode()) // 4)  # UTF-8 bytes / 4
        assert set(line["outcomes"]) == {"phi-2", "vicuna-13b-v1.5", "mixtral-8x7b-instruct"}
    table = load_outcomes(out, cards)  # the simulator reads what the importer wrote
    assert table.n == 4 and set(table.models) == {"phi-2", "vicuna-13b-v1.5", "mixtral-8x7b-instruct"}


def test_reference_tokenizer_and_cli(tmp_path: Path) -> None:
    cards = load_catalogue(ROOT / "models")
    out = tmp_path / "o.jsonl"
    report = import_alpaca_eval(FIXTURE, out, cards, include_reference=True, tokenizers={"phi-2": lambda s: 7})
    line = json.loads(out.read_text().splitlines()[0])
    assert line["outcomes"]["gpt-4-1106-preview"]["correct"] == pytest.approx(0.5)
    assert line["outcomes"]["phi-2"]["output_tokens"] == 7 and report.tokens_from["phi-2"] == "tokenizer"
    res = CliRunner().invoke(app, ["data", "import-alpaca-eval", str(FIXTURE), "-o", str(tmp_path / "c.jsonl"),
                                   "--models", str(ROOT / "models")])
    assert res.exit_code == 0, res.output
    assert "wrote 4 instructions" in res.output and "skipped vicuna-13b-v1.5-togetherai" in res.output


def test_unknown_generator_and_variant_rule(tmp_path: Path) -> None:
    assert base_of("vicuna-13b-v1.5-togetherai") == "vicuna-13b-v1.5" and base_of("phi-2") is None
    with pytest.raises(OutcomesError, match="unknown model"):  # the embedded default's cards know none of them
        import_alpaca_eval(FIXTURE, tmp_path / "o.jsonl", load_cards(ROOT / "models"))
    with pytest.raises(OutcomesError, match="no such folder"):
        import_alpaca_eval(tmp_path / "nothing", tmp_path / "o.jsonl", load_catalogue(ROOT / "models"))


def test_shipped_copy_matches_the_catalogue() -> None:
    """data/alpaca_eval/outcomes.jsonl names only catalogue cards, and every catalogue card of an AlpacaEval model
    with a public size carries the energy method's numbers."""
    cards = load_catalogue(ROOT / "models", with_models=False)
    table = load_outcomes(ROOT / "data" / "alpaca_eval" / "outcomes.jsonl", cards)
    assert table.n == 536 and len(table.models) == 48
    for name in table.models:
        card = cards[name]
        assert card.backend is None
        if card.active_parameters_b is not None and name != "mixtral-8x7b-instruct":
            assert card.energy.per_output_token_j == pytest.approx(2 * card.active_parameters_b * 1e9 / 1.41e11 * 1.2,
                                                                   rel=1e-3)
        else:
            assert card.simulation_only or name == "mixtral-8x7b-instruct"


def test_a_non_ascii_answer_counts_its_utf8_bytes_as_the_router_does(tmp_path: Path) -> None:
    """An answer in Thai counted as characters / 4 came out 3x short of what the Router estimates for the same text
    served (UTF-8 bytes / 4), so a simulation charged it a third of the output energy."""
    thai = "คำตอบคือสิบหกฟอง"  # 16 characters, 48 bytes
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)
    items = _annotations("phi-2")
    items[0]["output_2"] = thai
    (results / "phi-2" / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json").write_text(json.dumps(items))
    out = tmp_path / "o.jsonl"
    report = import_alpaca_eval(results, out, load_catalogue(ROOT / "models"))
    line = next(x for x in map(json.loads, out.read_text().splitlines()) if x["prompt"] == items[0]["instruction"])
    assert line["outcomes"]["phi-2"]["output_tokens"] == 48 // 4
    assert report.tokens_from["phi-2"] == "utf8-bytes/4"


def _fixture_with_preference(tmp_path: Path, k: int, preference: object) -> tuple[Path, Path]:
    """A copy of the fixture whose phi-2 annotation ``k`` has ``preference``, one annotation per line: the file and
    the copy's results folder."""
    results = tmp_path / "results"
    shutil.copytree(FIXTURE, results)
    items = _annotations("phi-2")
    items[k]["preference"] = preference
    file = results / "phi-2" / "weighted_alpaca_eval_gpt4_turbo" / "annotations.json"
    file.write_text("[\n" + ",\n".join(json.dumps(x) for x in items) + "\n]\n")  # item k on line k + 2
    return file, results


@pytest.mark.parametrize("preference", ["very", float("nan"), float("inf"), 2.5, 0.2, True, [1.5]],
                         ids=["text", "nan", "inf", "above", "below", "bool", "list"])
def test_a_preference_that_is_no_number_in_range_stops_the_import_naming_the_line(tmp_path: Path,
                                                                                  preference: object) -> None:
    file, results = _fixture_with_preference(tmp_path, 2, preference)
    out = tmp_path / "o.jsonl"
    res = CliRunner().invoke(app, ["data", "import-alpaca-eval", str(results), "-o", str(out),
                                   "--models", str(ROOT / "models")])
    assert res.exit_code == 2, res.output
    assert f"error: {file}:4: `preference` " in res.output and "is not a number in [1, 2]" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not out.exists()


def test_a_preference_a_rounding_step_outside_its_range_is_kept(tmp_path: Path) -> None:
    _file, results = _fixture_with_preference(tmp_path, 0, 2.0000000001)
    out = tmp_path / "o.jsonl"
    import_alpaca_eval(results, out, load_catalogue(ROOT / "models"))
    prompt = _annotations("phi-2")[0]["instruction"]
    line = next(x for x in map(json.loads, out.read_text().splitlines()) if x["prompt"] == prompt)
    assert line["outcomes"]["phi-2"]["correct"] == 1.0
