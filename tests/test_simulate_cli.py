"""`router simulate` end to end on small files: JSON shape, decisions file, plot, HTML, bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_simulate_helpers import CheapestAboveTarget, FixedClassifier, make_cards_dir
from typer.testing import CliRunner

from router.cli import app

ROOT = Path(__file__).resolve().parent.parent
MIX, GPT = "mixtral-8x7b-instruct", "gpt-4-1106-preview"
# prompt -> (mixtral correct, gpt-4 correct, predicted P(mixtral), predicted P(gpt-4))
ROWS = {
    "q0": (1, 1, 0.9, 0.95),
    "q1": (0, 1, 0.3, 0.9),
    "q2": (1, 0, 0.8, 0.6),
    "q3": (0, 0, 0.2, 0.4),
    "q4": (0, 1, 0.6, 0.8),
}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    cards_dir = make_cards_dir(tmp_path)
    table = {p: {MIX: r[2], GPT: r[3]} for p, r in ROWS.items()}
    monkeypatch.setattr("router.classify.onnx_classifier.load_default_classifier",
                        lambda *_a, **_k: FixedClassifier(table))
    monkeypatch.setattr("router.simulate.policy_bridge.PolicyEngineBridge", lambda *a, **k: CheapestAboveTarget(0.7))
    out = tmp_path / "o.jsonl"
    lines = [
        json.dumps({"id": f"r{i}", "prompt": p, "task": "mmlu/x",
                    "outcomes": {MIX: {"correct": bool(r[0]), "output_tokens": 1},
                                 GPT: {"correct": bool(r[1]), "output_tokens": 1}}})
        for i, (p, r) in enumerate(ROWS.items())
    ]
    out.write_text("\n".join(lines) + "\n")
    return out, cards_dir


def run(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["simulate", *args, "--no-progress"])
    return res.exit_code, res.output


def test_json_shape_and_numbers(setup: tuple[Path, Path]) -> None:
    out, cards = setup
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--json")
    assert code == 0, text
    d = json.loads(text)
    for key in ("accuracy", "quality_vs_large", "energy_j_total", "energy_j_per_request", "share_requests",
                "share_energy", "routing_metrics", "baselines", "requests", "skipped"):
        assert key in d
    # target 0.7: q0 -> mixtral (0.9), q1 -> gpt (0.9), q2 -> mixtral (0.8), q3 -> gpt (most likely), q4 -> gpt
    assert d["share_requests"] == {MIX: pytest.approx(0.4), GPT: pytest.approx(0.6)}
    # correct: q0 mix 1, q1 gpt 1, q2 mix 1, q3 gpt 0, q4 gpt 1 -> 4 / 5; always-large (gpt-4) gets 3 / 5
    assert d["accuracy"] == pytest.approx(0.8)
    assert d["baselines"]["always-large"]["accuracy"] == pytest.approx(0.6)
    assert d["baselines"]["always-small"]["accuracy"] == pytest.approx(0.4)
    assert d["baselines"]["oracle"]["accuracy"] == pytest.approx(0.8)  # q3: neither model is right
    assert d["quality_vs_large"] == pytest.approx(0.8 / 0.6)
    assert set(d["baselines"]) == {"always-small", "always-large", "always-best", "random (matched share)", "oracle",
                                   "threshold 0.6"}
    # GPT-4 scores 3 / 5 here, Mixtral 2 / 5: the best single model is also the largest
    assert d["best_single"] == {f"{MIX}+{GPT}": GPT} and d["quality_vs_best"] == pytest.approx(0.8 / 0.6)
    rm = d["routing_metrics"]
    assert rm["weak"] == MIX and rm["strong"] == GPT
    assert 0 <= rm["policy_sweep"]["cpt50"] <= 1 and "apgr" in rm["classifier_score"]
    assert sum(d["share_energy"].values()) == pytest.approx(1.0)


def test_decisions_plot_html_and_sweep(setup: tuple[Path, Path], tmp_path: Path) -> None:
    out, cards = setup
    dec, png, page = tmp_path / "d.jsonl", tmp_path / "p.png", tmp_path / "r.html"
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--decisions", str(dec),
                     "--plot", str(png), "--html", str(page), "--sweep", "--targets", "0.5,0.7,0.9")
    assert code == 0, text
    lines = [json.loads(x) for x in dec.read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"r{i}" for i in range(5)]
    assert lines[1] == {"id": "r1", "model": GPT, "p_correct": {MIX: 0.3, GPT: 0.9}, "reason": f"{GPT}: 0.90 >= 0.7"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text()
    assert "data:image/png;base64," in html and "always-large" in html and "<script" not in html
    assert "accuracy target sweep" in text and "APGR" in text


def test_bad_line_exit_code_and_skip_bad(setup: tuple[Path, Path]) -> None:
    out, cards = setup
    with open(out, "a") as f:
        f.write('{"id": "bad", "prompt": "q9", "outcomes": {"gpt-4-1106-preview": {"correct": 7}}}\n')
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--json")
    assert code == 2 and f"{out}:6: " in text and "outside [0, 1]" in text
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--json", "--skip-bad")
    assert code == 0, text
    d = json.loads(text)
    assert d["requests"] == 5 and d["skipped"] == 1 and "line 6:" in d["skipped_examples"][0]


def test_skip_bad_survives_a_400_digit_token_count_and_reports_it(setup: tuple[Path, Path]) -> None:
    out, cards = setup
    with open(out, "a") as f:
        f.write(json.dumps({"id": "huge", "prompt": "q0", "input_tokens": 10**400,
                            "outcomes": {GPT: {"correct": True, "output_tokens": 1}}}) + "\n")
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--json")
    assert code == 2 and f"{out}:6: " in text and "`input_tokens` must be an integer in" in text
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--skip-bad")
    assert code == 0, text
    assert "skipped 1 bad lines" in text and "line 6: request 'huge': `input_tokens`" in text


def test_every_line_bad_is_a_clear_error_even_with_skip_bad(setup: tuple[Path, Path], tmp_path: Path) -> None:
    _, cards = setup
    out = tmp_path / "bad.jsonl"
    out.write_text('{"id": "x"}\nnot json\n')
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--skip-bad")
    assert code == 2 and "no usable line: all 2 request lines are bad" in text and "reshape" not in text


def test_every_example_policy_loads() -> None:
    from router.policy.loader import load_policy

    for path in sorted((ROOT / "policies" / "examples").glob("*.yaml")):
        assert load_policy(path).name == path.stem


def test_on_the_48_alpaca_eval_models_the_relative_to_best_example_beats_balanced() -> None:
    """What README.md says of policies/examples/relative-to-best.yaml, on the shipped classifier and outcomes
    (in sample: the classifier's quality model was fitted on these rows)."""
    out = {}
    for policy in ("balanced", str(ROOT / "policies" / "examples" / "relative-to-best.yaml")):
        result = CliRunner().invoke(app, ["simulate", "--outcomes", str(ROOT / "data" / "alpaca_eval" /
                                                                       "outcomes.jsonl"), "--policy", policy,
                                          "--json", "--no-progress"])
        assert result.exit_code == 0, result.output
        out[policy] = json.loads(result.stdout)
    balanced, best = out.values()
    assert balanced["quality_vs_best"] < 0.5 and best["quality_vs_best"] > 1.0


def test_targets_imply_the_sweep(setup: tuple[Path, Path]) -> None:
    out, cards = setup
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--json",
                     "--targets", "0.5,0.9")
    assert code == 0, text
    assert [p["target"] for p in json.loads(text)["sweep"]] == [0.5, 0.9]


@pytest.mark.parametrize("option", [["--carbon-start", "2022-03-01"], ["--carbon-span", "24"]])
def test_carbon_placement_without_a_series_is_an_error(setup: tuple[Path, Path], option: list[str]) -> None:
    out, cards = setup
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), *option)
    assert code == 2 and f"Invalid value for '{option[0]}': needs --carbon" in text, text


def test_a_carbon_start_outside_the_series_says_where_it_lands(setup: tuple[Path, Path]) -> None:
    out, cards = setup
    res = CliRunner().invoke(app, ["simulate", "--outcomes", str(out), "--policy", "stub", "--models", str(cards),
                                   "--json", "--no-progress", "--carbon", "CA_2022_hourly.csv",
                                   "--carbon-start", "2030-01-01"])
    assert res.exit_code == 0, res.output
    note = ("note: --carbon-start 2030-01-01 00:00 UTC is outside the series (2022-01-01 00:00 UTC to 2022-12-31 "
            "23:00 UTC); the series repeats, so the workload starts at its hour 2022-01-03 00:00 UTC")
    assert note in res.stderr
    assert json.loads(res.stdout)["carbon"]["start_note"] == note.removeprefix("note: ")
    inside = CliRunner().invoke(app, ["simulate", "--outcomes", str(out), "--policy", "stub", "--models", str(cards),
                                      "--json", "--no-progress", "--carbon", "CA_2022_hourly.csv",
                                      "--carbon-start", "2022-03-01"])
    assert inside.exit_code == 0 and "note:" not in inside.stderr, inside.output


def test_an_outcomes_folder_is_called_a_folder(setup: tuple[Path, Path]) -> None:
    out, cards = setup
    code, text = run("--outcomes", str(out.parent), "--policy", "stub", "--models", str(cards))
    assert code == 2 and f"Invalid value for '--outcomes': file '{out.parent}' is a directory." in text, text
    assert "does not exist" not in text


def test_a_policy_with_a_grid_switch_is_simulated_by_its_own_rules_and_says_so(tmp_path: Path) -> None:
    """docs/policies.md's `balanced-green` example was refused ("grid.use_policy names 'eco', which is not a policy
    here"): simulation loads one policy, and has no live intensity to switch on anyway."""
    green = tmp_path / "balanced-green.yaml"
    green.write_text("name: balanced-green\naccuracy: {relative_to_largest: 0.95}\n"
                     "grid: {above_g_per_kwh: 300, use_policy: eco}\n")
    result = CliRunner().invoke(app, ["simulate", "--outcomes", str(ROOT / "data" / "alpaca_eval" / "outcomes.jsonl"),
                                      "--policy", str(green), "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert any(n.startswith("grid: not replayed (policy `eco` above 300 g/kWh")
               for n in json.loads(result.stdout)["notes"])


def test_simulation_refuses_a_policy_naming_a_model_without_a_card(tmp_path: Path) -> None:
    """The Router refused it (ConfigError) while `router simulate` ran it with the budget covering nothing."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: typo\naccuracy: {relative_to_largest: 0.95}\nbudgets: [{model: gpt-5, joules: 100, "
                    "per: hour}]\n")
    result = CliRunner().invoke(app, ["simulate", "--outcomes", str(ROOT / "data" / "alpaca_eval" / "outcomes.jsonl"),
                                      "--policy", str(typo), "--no-progress"])
    assert result.exit_code == 2 and "names unknown model(s) gpt-5" in result.output, result.output


def test_simulation_refuses_a_pin_to_a_model_that_does_not_serve_the_task(tmp_path: Path) -> None:
    """The Router refuses `pinned: {chat: sentiment-onnx}` (every chat request would get a sentiment label);
    `router simulate` checked only that the model had a card, and replayed chat on the specialist."""
    pin = tmp_path / "pin.yaml"
    pin.write_text("name: pin\naccuracy: {relative_to_largest: 0.95}\npinned: {chat: sentiment-onnx}\n")
    result = CliRunner().invoke(app, ["simulate", "--outcomes", str(ROOT / "data" / "alpaca_eval" / "outcomes.jsonl"),
                                      "--policy", str(pin), "--no-progress"])
    assert result.exit_code == 2 and "`sentiment-onnx` does not serve chat" in result.output, result.output


def test_a_policy_named_from_its_folder_may_be_a_yml_file(tmp_path: Path) -> None:
    """The Router reads .yml policies; `router simulate --policy NAME --policies FOLDER` looked for NAME.yaml only."""
    from router.simulate.policy_bridge import resolve_policy

    (tmp_path / "eco.yml").write_text((ROOT / "policies" / "eco.yaml").read_text())
    assert resolve_policy("eco", tmp_path).name == "eco"


def test_an_output_naming_an_input_is_refused_before_it_is_overwritten(
        setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--decisions` (or `--plot`, `--html`) naming the outcomes file or the carbon series exited 0 with the
    input replaced by decision lines, a PNG or an HTML page."""
    out, cards = setup
    series = tmp_path / "grid.csv"
    series.write_text("timestamp,g_co2e_per_kwh\n2022-01-01T00:00:00Z,200\n2022-01-01T01:00:00Z,300\n")
    (tmp_path / "alias.jsonl").symlink_to(out)
    monkeypatch.chdir(tmp_path)
    before = out.read_bytes(), series.read_bytes()
    for option, target, what in (("--decisions", str(out), "the --outcomes file"),
                                 ("--plot", "alias.jsonl", f"the --outcomes file ({out})"),
                                 ("--html", "grid.csv", f"the --carbon series ({series})")):
        code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--carbon", str(series),
                         option, target)
        assert code == 2, (option, text)
        assert f"Invalid value for '{option}': {target} is {what}; writing there would destroy it" in text, text
        assert "give another file" in text
    assert (out.read_bytes(), series.read_bytes()) == before


@pytest.mark.parametrize("span", ["inf", "1e300", "nan", "876001"])
def test_a_carbon_span_past_100_years_or_not_finite_is_refused(setup: tuple[Path, Path], span: str) -> None:
    """`--carbon-span inf` (or 1e300) printed numpy warnings and wrong CO2e figures."""
    out, cards = setup
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--json",
                     "--carbon", "CA_2022_hourly.csv", "--carbon-span", span)
    assert code == 2 and "Invalid value for '--carbon-span'" in text and "876000" in text, text
    assert "Warning" not in text


def test_the_carbon_span_help_states_its_range() -> None:
    res = CliRunner().invoke(app, ["simulate", "--help"])
    assert "1 to 876000 (100 years;" in " ".join(res.output.split())


def test_no_apgr_when_the_larger_model_scores_below_the_smaller(setup: tuple[Path, Path]) -> None:
    """PGR divides by (strong - weak): with the larger model worse, a router that sends it nothing would "recover"
    a negative gap. The metrics say why they are missing instead of printing numbers below zero."""
    out, cards = setup
    out.write_text("\n".join(
        json.dumps({"id": f"r{i}", "prompt": p, "task": "mmlu/x",
                    "outcomes": {MIX: {"correct": True, "output_tokens": 1},
                                 GPT: {"correct": i == 0, "output_tokens": 1}}})
        for i, p in enumerate(ROWS)) + "\n")
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--json")
    assert code == 0, text
    d = json.loads(text)
    rm = d["routing_metrics"]
    assert rm["strong"] == GPT and rm["strong_accuracy"] < rm["weak_accuracy"]
    assert "policy_sweep" not in rm and "scores below" in rm["note"]
    assert any(n.startswith("APGR/CPT: the larger model") for n in d["notes"])
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards))
    assert code == 0 and "APGR" in text and "scores below" in text.replace("\n", " ")


def test_paths_with_square_brackets_print_as_they_are(setup: tuple[Path, Path]) -> None:
    """`[v2]` in a path is a Rich markup tag unless escaped (it vanished), and `[/x]` a closing tag with no opening
    one (it crashed the command)."""
    out, cards = setup
    for name in ("runs[v2].jsonl", "a[/x].jsonl"):
        path = out.parent / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(out.read_text())
        decisions = out.parent / f"decisions[v2]-{path.name.replace('/', '_')}"
        res = CliRunner().invoke(app, ["simulate", "--outcomes", str(path), "--policy", "stub", "--models",
                                       str(cards), "--decisions", str(decisions), "--no-progress"],
                                 env={"COLUMNS": "400"})
        assert res.exit_code == 0, res.output
        assert f"requests from {path} (" in res.output and f"decisions: {decisions}\n" in res.output


def test_a_policy_in_the_configs_policies_folder_is_found_with_config(tmp_path: Path) -> None:
    """`router simulate` read no config file: `--policy NAME` of a policy in the configured policies_dir was an
    unknown policy unless `--policies` named the folder again. `--config` gives its folders; `--policies` wins."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "gemma-only.yaml").write_text(
        "name: gemma-only\naccuracy: {min_accuracy: 0.0}\nallowed_models: [gemma3-270m]\n")
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {ROOT / 'models'}\npolicies_dir: mine\n")  # relative to the config's folder
    outcomes = str(ROOT / "data" / "outcomes" / "math_local.jsonl")
    code, text = run("--outcomes", outcomes, "--policy", "gemma-only", "--config", str(config), "--json")
    assert code == 0, text
    report = json.loads(text)
    assert report["policy"] == "gemma-only" and report["share_requests"]["gemma3-270m"] == 1.0
    code, text = run("--outcomes", outcomes, "--policy", "gemma-only", "-c", str(config), "--policies",
                     str(ROOT / "policies"))
    assert code == 2 and "unknown policy 'gemma-only'" in text, text


def test_a_dash_is_stdout_for_text_outputs_and_stdin_for_outcomes(setup: tuple[Path, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`--decisions -` wrote a file named `-`; `--outcomes -` said "-: outcomes file does not exist"."""
    out, cards = setup
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["simulate", "--outcomes", "-", "--policy", "stub", "--models", str(cards),
                                   "--decisions", "-", "--no-progress"], input=out.read_text())
    assert res.exit_code == 0, res.output
    assert [json.loads(x)["id"] for x in res.stdout.splitlines()] == [f"r{i}" for i in range(5)]
    assert "router simulate" in res.stderr and "APGR" in res.stderr  # the tables, out of the decisions' way
    res = CliRunner().invoke(app, ["simulate", "--outcomes", str(out), "--policy", "stub", "--models", str(cards),
                                   "--html", "-", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert res.stdout.lstrip().startswith("<") and "always-large" in res.stdout
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("args", [["--plot", "-"], ["--json", "--decisions", "-"], ["--decisions", "-", "--html", "-"]])
def test_a_png_or_two_outputs_on_stdout_are_refused(setup: tuple[Path, Path], args: list[str]) -> None:
    out, cards = setup
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), *args)
    assert code == 2, text
    assert "stdout" in text and "fix: name a file" in text, text


def test_always_best_of_each_outcome_source_is_labelled_by_its_source(tmp_path: Path) -> None:
    """Outcomes from several sources, each measured on its own models (the shipped chat and math files on two
    small models, sentiment on three): always-best is a different model on each, and the report said
    "always-best: X (... measured on these rows)" once per source without saying which rows. Each line, the HTML
    report and the plot's legend now name the source (the real classifier and the shipped policy)."""
    from router.simulate.report import _best_label

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join((ROOT / "data" / "outcomes" / f"{name}_local.jsonl").read_text()
                             for name in ("chat", "math", "sentiment")))
    html = tmp_path / "report.html"
    code, text = run("--outcomes", str(mixed), "--json")
    assert code == 0, text
    d = json.loads(text)
    scope = d["best_single_rows"]
    assert sorted(tuple(s["sources"]) for s in scope.values()) == [("chat", "math"), ("sentiment",)], scope
    assert sum(s["rows"] for s in scope.values()) == d["requests"]
    code, text = run("--outcomes", str(mixed), "--html", str(html))
    assert code == 0, text
    page = html.read_text()
    for models, best in d["best_single"].items():
        s = scope[models]
        line = f"always-best on the {s['rows']:,} {', '.join(s['sources'])} rows: {best}"
        assert line in " ".join(text.split()), text  # the table printer may wrap a long line
        assert line in page
    from router.simulate.simulator import SimulationResult

    stub = SimulationResult.__new__(SimulationResult)
    stub.best_single, stub.best_single_rows = d["best_single"], scope
    label = _best_label(stub)
    assert all(f"{best} on {'+'.join(scope[m]['sources'])}" in label for m, best in d["best_single"].items())


def test_a_file_over_more_than_64_models_keeps_each_rows_own_models(tmp_path: Path) -> None:
    """The sets of models measured per row were told apart as one 64-bit number, one bit per model: every model
    past the 64th added nothing, so rows measured on (m00, m64) and (m00, m65) fell into one set. The policy was
    then offered m00 alone there and always-best scored a model the row has no outcome for. Each row is now
    decided and scored among its own models (real classifier, shipped policy, 70 cards)."""
    models = tmp_path / "models"
    (models / "catalogue").mkdir(parents=True)
    (models / "classifier").symlink_to(ROOT / "models" / "classifier")
    for i in range(70):  # m00 large, dear and always wrong; every other model cheap and right on its own rows
        (models / "catalogue" / f"m{i:02d}.yaml").write_text(
            f"name: m{i:02d}\ntier: {'large' if i == 0 else 'small'}\ncontext_length: 8192\n"
            f"energy: {{per_call_j: 1.0, per_input_token_j: 0.0, per_output_token_j: 0.0, source: estimate, "
            f"citation: test}}\n")
    outcomes = tmp_path / "many.jsonl"
    outcomes.write_text("".join(
        json.dumps({"id": f"r{i}", "prompt": f"Question {i}: what is {i} + {i}?",
                    "outcomes": {"m00": {"correct": False, "energy_j": 1000.0},
                                 f"m{i:02d}": {"correct": True, "energy_j": 1.0}}}) + "\n"
        for i in range(1, 70)))
    decisions = tmp_path / "decisions.jsonl"
    code, text = run("--outcomes", str(outcomes), "--models", str(models), "--json", "--decisions", str(decisions))
    assert code == 0, text
    d = json.loads(text)
    assert d["requests"] == 69 and len(d["models"]) == 70
    for name in ("always-best", "oracle", "always-small"):
        assert d["baselines"][name]["accuracy"] == 1.0 and d["baselines"][name]["energy_j_per_request"] == 1.0, name
    assert len(d["best_single"]) == 69  # one set of measured models per row
    for line in decisions.read_text().splitlines():  # offered both of its models, whichever it picks
        choice = json.loads(line)
        assert set(choice["p_correct"]) == {"m00", f"m{int(choice['id'][1:]):02d}"}, choice
        assert choice["model"] in choice["p_correct"]
    random = d["baselines"]["random (matched share)"]  # the policy's own counts, shuffled within each row's set
    assert (random["accuracy"], random["energy_j_per_request"]) == (d["accuracy"], d["energy_j_per_request"])


def test_the_tables_show_each_workload_segment_of_a_mixed_file(tmp_path: Path) -> None:
    """docs/simulation.md says a run reports per segment when the file mixes workloads; only --json and --html
    did, so the tables showed totals in which a segment where the policy does badly disappears. They now hold
    the policy per segment beside always-large, the same figures as the JSON (real classifier, shipped policy)."""
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join((ROOT / "data" / "outcomes" / f"{name}_local.jsonl").read_text()
                             for name in ("chat", "math", "sentiment")))
    code, text = run("--outcomes", str(mixed), "--json")
    assert code == 0, text
    segments = json.loads(text)["by_segment"]
    assert set(segments) == {"chat", "math", "sentiment"}
    code, text = run("--outcomes", str(mixed))
    assert code == 0, text
    assert "policy `balanced` per workload segment" in text
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in text.splitlines() if line.count("│") == 7}
    for name, v in segments.items():
        assert rows[name] == [f"{v['requests']:,}", f"{100 * v['accuracy']:.1f} %",
                              f"{100 * v['large_accuracy']:.1f} %", f"{v['energy_j_per_request']:,.3g}",
                              f"{v['large_energy_j_per_request']:,.3g}"], (name, rows)


@pytest.mark.parametrize("option", ["--plot", "--html", "--decisions"])
@pytest.mark.parametrize("fault", ["a folder", "under a file", "a folder not writable"])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(
        setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, fault: str) -> None:
    """`--plot reports/` (a folder) ended in a traceback, IsADirectoryError, once the whole simulation had run:
    minutes on a large file. Every output is now checked first: exit 2 naming the option, the path and the fix."""
    out, cards = setup
    folder, a_file = tmp_path / "reports", tmp_path / "notes.txt"
    folder.mkdir()
    a_file.write_text("x")
    path, said = {"a folder": (folder, f"{folder} is a folder; fix: name a file"),
                  "under a file": (a_file / "new" / "out.x", f"{a_file} is a file, so nothing can be made in it"),
                  "a folder not writable": (folder / "new" / "out.x",
                                            f"cannot write in the folder {folder} (permission denied)")}[fault]
    if fault == "a folder not writable":  # fault injection: the tests may run as root, whom no mode bit stops
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and not (
            Path(p) == folder and mode & os.W_OK))

    def must_not_run(*_args: object, **_kwargs: object) -> None:  # fault injection: the run is what must not start
        raise AssertionError("the simulation ran before its outputs were checked")

    monkeypatch.setattr("router.simulate.simulator.Simulator.run", must_not_run)
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), option, str(path))
    assert code == 2, text
    assert f"Invalid value for '{option}'" in text and said in " ".join(text.split()) and "fix: " in text, text
    assert not (folder / "new").exists(), "a refused output makes no folder"


def test_outputs_in_folders_not_there_yet_are_written(setup: tuple[Path, Path], tmp_path: Path) -> None:
    out, cards = setup
    new = tmp_path / "new" / "deeper"
    code, text = run("--outcomes", str(out), "--policy", "stub", "--models", str(cards), "--plot", str(new / "p.png"),
                     "--html", str(new / "r.html"), "--decisions", str(new / "d.jsonl"))
    assert code == 0, text
    assert sorted(p.name for p in new.iterdir()) == ["d.jsonl", "p.png", "r.html"]
