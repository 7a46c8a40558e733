"""RouteLLM CSV -> outcomes file: on a real shipped CSV, on a GSM8K-shaped file, and on bad CSVs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_simulate_helpers import ROOT, make_cards_dir
from typer.testing import CliRunner

from router.cards import load_cards
from router.cli import app
from router.simulate.importers import import_routellm
from router.simulate.outcomes import OutcomesError, load_outcomes

ANATOMY = ROOT / "data" / "routellm_mmlu" / "mmlu_anatomy.csv"


@pytest.fixture
def cards_dir(tmp_path: Path) -> Path:
    return make_cards_dir(tmp_path)


def test_real_mmlu_csv(tmp_path: Path, cards_dir: Path) -> None:
    out = tmp_path / "anatomy.jsonl"
    report = import_routellm(ANATOMY, out, load_cards(cards_dir))
    with open(ANATOMY, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert report.rows == len(rows) == len(lines) and report.files == 1
    assert report.models == {
        "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b-instruct",
        "gpt-4-1106-preview": "gpt-4-1106-preview",
    }
    rec = lines[17]
    assert rec["id"] == "mmlu-anatomy-17" and rec["task"] == "mmlu/anatomy"
    assert rec["prompt"] == rows[17]["prompt"]
    assert rec["outcomes"]["mixtral-8x7b-instruct"] == {
        "correct": rows[17]["mistralai/Mixtral-8x7B-Instruct-v0.1"] == "True", "output_tokens": 1}
    assert rec["outcomes"]["gpt-4-1106-preview"]["correct"] == (rows[17]["gpt-4-1106-preview"] == "True")
    # and the simulator's reader accepts what the importer wrote
    table = load_outcomes(out, load_cards(cards_dir))
    assert table.n == len(rows)
    assert table.score[:, table.models.index("gpt-4-1106-preview")].mean() == pytest.approx(
        sum(r["gpt-4-1106-preview"] == "True" for r in rows) / len(rows))


def test_folder_and_cli(tmp_path: Path, cards_dir: Path) -> None:
    folder = tmp_path / "csvs"
    folder.mkdir()
    (folder / ANATOMY.name).write_bytes(ANATOMY.read_bytes())
    (folder / "mmlu_virology.csv").write_bytes((ANATOMY.parent / "mmlu_virology.csv").read_bytes())
    out = tmp_path / "o.jsonl"
    res = CliRunner().invoke(app, ["data", "import-routellm", str(folder), "-o", str(out), "--models", str(cards_dir)])
    assert res.exit_code == 0, res.output
    ids = [json.loads(x)["id"] for x in out.read_text(encoding="utf-8").splitlines()]
    assert ids[0] == "mmlu-anatomy-0" and any(i.startswith("mmlu-virology-") for i in ids)
    assert "mixtral-8x7b-instruct" in res.output


GSM8K = (
    "prompt,mixtral-8x7b-instruct-v0.1,gpt-4-1106-preview,mixtral-8x7b-instruct-v0.1_response,"
    "gpt-4-1106-preview_response\n"
    '"Janet has 16 eggs.\nHow many?",True,False,"She has 16.\n#### 16","Twelve, I think"\n'
    "Two plus two?,False,True,five,4\n"
)


def test_gsm8k_response_columns(tmp_path: Path, cards_dir: Path) -> None:
    src = tmp_path / "gsm8k_responses.csv"
    src.write_text(GSM8K, encoding="utf-8")
    out = tmp_path / "g.jsonl"
    report = import_routellm(src, out, load_cards(cards_dir), keep_responses=True)
    recs = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert report.rows == 2
    assert recs[0]["id"] == "gsm8k-0" and recs[0]["task"] == "gsm8k"
    assert recs[0]["prompt"] == "Janet has 16 eggs.\nHow many?"
    mix = recs[0]["outcomes"]["mixtral-8x7b-instruct"]  # lower-case RouteLLM name, no org prefix
    assert mix["correct"] is True and mix["answer"] == "She has 16.\n#### 16"
    assert mix["output_tokens"] == len("She has 16.\n#### 16") // 4  # 19 bytes: the Router's estimate, rounded down
    assert recs[1]["outcomes"]["gpt-4-1106-preview"] == {"correct": True, "output_tokens": 1, "answer": "4"}
    assert set(recs[1]["outcomes"]) == {"mixtral-8x7b-instruct", "gpt-4-1106-preview"}  # no *_response models


def test_a_non_ascii_response_counts_its_utf8_bytes_as_the_router_does(tmp_path: Path, cards_dir: Path) -> None:
    """GSM8K answers in Chinese, Hindi or Thai counted as characters / 4 came out 3x short of what the Router
    estimates for the same text served (UTF-8 bytes / 4), so a simulation charged those answers a third of the
    output energy."""
    chinese = "珍妮有十六个鸡蛋，她吃了三个，还剩十三个。"  # 21 characters, 63 bytes
    hindi = "उत्तर सोलह है"  # 13 characters, 35 bytes
    src = tmp_path / "gsm8k_responses.csv"
    src.write_text("prompt,mixtral-8x7b-instruct-v0.1,gpt-4-1106-preview,mixtral-8x7b-instruct-v0.1_response,"
                   f"gpt-4-1106-preview_response\nJanet has 16 eggs.,True,True,{chinese},{hindi}\n", encoding="utf-8")
    out = tmp_path / "g.jsonl"
    import_routellm(src, out, load_cards(cards_dir))
    outcomes = json.loads(out.read_text(encoding="utf-8"))["outcomes"]
    assert outcomes["mixtral-8x7b-instruct"]["output_tokens"] == 63 // 4
    assert outcomes["gpt-4-1106-preview"]["output_tokens"] == 35 // 4


def test_unknown_model_column(tmp_path: Path, cards_dir: Path) -> None:
    src = tmp_path / "mmlu_x.csv"
    src.write_text("prompt,llama-9000,gpt-4-1106-preview\nq,True,False\n")
    with pytest.raises(OutcomesError, match=r"mmlu_x.csv:1: column `llama-9000`: unknown model"):
        import_routellm(src, tmp_path / "o.jsonl", load_cards(cards_dir))
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_value_reports_csv_line(tmp_path: Path, cards_dir: Path) -> None:
    src = tmp_path / "mmlu_x.csv"
    # the first prompt spans 3 physical lines, so the bad row starts on line 5
    src.write_text('prompt,gpt-4-1106-preview\n"a\nb\nc",True\nq2,maybe\n')
    with pytest.raises(OutcomesError, match=r"mmlu_x.csv:5: column `gpt-4-1106-preview`: expected True/False"):
        import_routellm(src, tmp_path / "o.jsonl", load_cards(cards_dir))
    src.write_text("prompt,gpt-4-1106-preview\nq1,1.5\n")
    with pytest.raises(OutcomesError, match=r"mmlu_x.csv:2: .*outside \[0, 1\]"):
        import_routellm(src, tmp_path / "o.jsonl", load_cards(cards_dir))
    src.write_text("question,gpt-4-1106-preview\nq1,True\n")
    with pytest.raises(OutcomesError, match="first column must be `prompt`"):
        import_routellm(src, tmp_path / "o.jsonl", load_cards(cards_dir))


def test_a_csv_with_a_byte_order_mark_imports(tmp_path: Path, cards_dir: Path) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte-order mark; it was refused with "first column must be
    `prompt`, got ['\\ufeffprompt']", though the first column is `prompt`."""
    src = tmp_path / ANATOMY.name
    src.write_bytes(b"\xef\xbb\xbf" + ANATOMY.read_bytes())
    plain, marked = tmp_path / "plain.jsonl", tmp_path / "marked.jsonl"
    import_routellm(ANATOMY, plain, load_cards(cards_dir))
    res = CliRunner().invoke(app, ["data", "import-routellm", str(src), "-o", str(marked), "--models", str(cards_dir)])
    assert res.exit_code == 0, res.output
    assert marked.read_text(encoding="utf-8") == plain.read_text(encoding="utf-8")


def test_an_output_naming_an_input_csv_is_refused(tmp_path: Path, cards_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`import-routellm a.csv -o a.csv` (or a folder and one of its CSVs) replaced the CSV with JSONL, exit 0."""
    folder = tmp_path / "csvs"
    folder.mkdir()
    src = folder / ANATOMY.name
    src.write_bytes(ANATOMY.read_bytes())
    monkeypatch.chdir(tmp_path)
    for path, out in ((str(src), str(src)), ("csvs", f"csvs/../csvs/{ANATOMY.name}")):
        res = CliRunner().invoke(app, ["data", "import-routellm", path, "-o", out, "--models", str(cards_dir)])
        assert res.exit_code == 2, res.output
        assert f"Invalid value for '-o' / '--out': {out} is a RouteLLM CSV being imported" in res.output
        assert "give another file" in res.output
        assert src.read_bytes() == ANATOMY.read_bytes()
