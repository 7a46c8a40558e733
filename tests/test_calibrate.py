"""`router calibrate`: the risk-control fit keeps its promise on fresh data, and the command writes the block."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from cli_helpers import router_main
from typer.testing import CliRunner

from router.cli.calibrate import _infeasible_line
from router.policy.calibration import CalibrationData, choose, fit, lower_confidence, quality
from router.policy.loader import load_policy

ROOT = Path(__file__).resolve().parent.parent


def synthetic(n: int, rng: np.random.Generator) -> CalibrationData:
    """Two models; the small one is right with probability q (its score is a noisy view of q), the large with 0.8."""
    q = rng.uniform(0.2, 1.0, n)
    small = rng.random(n) < q
    large = rng.random(n) < 0.8
    p = np.stack([np.clip(q + rng.normal(0, 0.15, n), 0, 1), np.full(n, 0.8)], axis=1)
    return CalibrationData(["s", "l"], p, np.stack([small, large], 1).astype(float), np.tile([1.0, 20.0], (n, 1)),
                           np.zeros(n, dtype=object))


def test_guarantee_holds_on_fresh_data_at_the_stated_rate():
    rng = np.random.default_rng(0)
    fresh = synthetic(200_000, rng)
    misses, taus = 0, []
    for _ in range(60):
        f = fit(synthetic(3000, rng), "relative", 0.9, confidence=0.9, bound="bernstein")
        taus.append(f.tau)
        misses += quality(fresh, choose(fresh, "relative", 0.9, f.tau), "relative") < 0.9
    assert misses / 60 <= 0.1 + 0.05  # at most delta (plus sampling slack) of fits break the target
    assert min(taus) < 1.0  # and it does route to the small model: not a trivial always-large answer


def test_bounds_order_and_infeasible_target():
    z = np.r_[np.ones(900), -np.ones(100)] * 0.1
    assert lower_confidence(z, 2.0, 0.1, "bernstein") > lower_confidence(z, 2.0, 0.1, "hoeffding")
    data = synthetic(2000, np.random.default_rng(1))
    f = fit(data, "absolute", 0.99, confidence=0.9)  # nobody reaches 99 %: no tau is certified
    assert not f.feasible and f.tau == 1.0


def _six_subjects(tmp_path):
    """Six MMLU subjects' outcomes in a folder of their own."""
    data = tmp_path / "mmlu"
    data.mkdir()
    for subject in ("anatomy", "astronomy", "marketing", "virology", "sociology", "philosophy"):
        shutil.copy(ROOT / "data" / "routellm_mmlu" / f"mmlu_{subject}.csv", data)
    return data


def test_cli_writes_calibrated_blocks_and_reports_held_out(tmp_path):
    from router.cli import app

    data = _six_subjects(tmp_path)
    pol = tmp_path / "pol"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "balanced.yaml", pol / "balanced.yml")  # named without its suffix, .yml too
    missing = CliRunner().invoke(app, ["calibrate", "balance", "--outcomes", str(data), "--policies-dir", str(pol)])
    assert missing.exit_code == 2 and "balanced" in missing.output, missing.output  # says which policies exist
    res = CliRunner().invoke(app, ["calibrate", "balanced", "--outcomes", str(data), "--policies-dir", str(pol),
                                   "--json", "--held-out-share", "0.34"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    r = out["policies"]["balanced"]["mmlu"]
    assert out["sources"]["mmlu"]["models"] == ["mixtral-8x7b-instruct", "gpt-4-1106-preview"]
    assert len(r["held_out_subjects"]) == 2 and r["held_out"]["n"] > 100 and "achieved" in r["held_out"]
    from router.policy.loader import load_policy

    cal = load_policy(pol / "balanced.yml").calibrated
    assert cal.offsets["gpt-4-1106-preview"] == -1.0 and cal.offsets["mixtral-8x7b-instruct"] == r["tau"]
    assert "# balanced:" in (pol / "balanced.yml").read_text()  # the documentation comments survive
    # the held-out groups are named as the scores line groups them: tasks (MMLU's subjects), not "subjects"
    assert cal.scores.endswith("grouped by task") and cal.held_out["tasks"] == 2 and "subjects" not in cal.held_out


def test_calibrating_a_shipped_policy_again_rewrites_only_the_fitted_figures(tmp_path):
    """The shipped blocks use the words the command writes ("grouped by task", held-out "tasks"), so a rerun on the
    same outcomes changes figures, not wording: it rewrote "grouped by subject" and "subjects: 12.0" every time."""
    pol = tmp_path / "pol"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "eco.yaml", pol / "eco.yaml")
    code, out = router_main("calibrate", "eco", "--outcomes", str(_six_subjects(tmp_path)), "--policies-dir",
                            str(pol))
    assert code == 0, out
    shipped = load_policy(ROOT / "policies" / "eco.yaml").calibrated
    again = load_policy(pol / "eco.yaml").calibrated
    assert again.scores == shipped.scores, (again.scores, shipped.scores)
    assert set(again.held_out) == set(shipped.held_out), (again.held_out, shipped.held_out)
    assert all(type(again.held_out[k]) is type(shipped.held_out[k]) for k in shipped.held_out), shipped.held_out



def test_cli_names_the_policy_files_it_wrote(tmp_path):
    """The command rewrites policy files (by default the config's policies_dir): it says which, not only how many
    ('wrote the calibrated block of 1 file(s)' left the user to guess where)."""
    data = _six_subjects(tmp_path)
    pol = tmp_path / "pol"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "balanced.yaml", pol / "balanced.yaml")
    args = ("calibrate", "balanced", "--outcomes", str(data), "--policies-dir", str(pol))
    code, out = router_main(*args)
    assert code == 0 and f"wrote the calibrated block into {pol / 'balanced.yaml'}" in out, out
    code, out = router_main(*args, "--json")
    assert code == 0 and json.loads(out)["written"] == [str(pol / "balanced.yaml")], out
    code, out = router_main(*args, "--json", "--dry-run")
    assert code == 0 and json.loads(out)["written"] == [], out

def test_cli_calibrates_each_outcome_source_on_its_own(tmp_path):
    """Two sources (MMLU right/wrong and AlpacaEval judge scores) are fitted separately and the block keeps each
    source's margins and held-out figures; `--models` picks the models to route among."""
    from router.cli import app
    from router.policy.loader import load_policy

    data = _six_subjects(tmp_path)
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "best.yaml").write_text("name: best\naccuracy:\n  relative_to_best: 0.9\n")
    alpaca = ROOT / "data" / "alpaca_eval" / "outcomes.jsonl"
    models = "fusechat-llama-3.2-3b,fusechat-gemma-2-9b,mixtral-8x7b-instruct,gpt-4-1106-preview"
    res = CliRunner().invoke(app, ["calibrate", "best", "--outcomes", str(data), "--outcomes", str(alpaca),
                                   "--models", models, "--policies-dir", str(pol), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # Mixtral is in both sources (its concise variant in AlpacaEval); GPT-4 is the judge's reference there, left out
    assert set(out["sources"]["outcomes.jsonl"]["models"]) == {"fusechat-llama-3.2-3b", "mixtral-8x7b-instruct",
                                                               "fusechat-gemma-2-9b"}
    assert set(out["policies"]["best"]) == {"mmlu", "outcomes.jsonl"}
    cal = load_policy(pol / "best.yaml").calibrated
    assert cal.target_kind == "relative_best" and cal.fitted_on == "mmlu, outcomes.jsonl"
    assert {"mixtral-8x7b-instruct", "fusechat-llama-3.2-3b"} <= set(cal.offsets)
    assert any(k.startswith("outcomes.jsonl:") for k in cal.held_out)


def test_cli_refuses_a_bad_bound_or_scores_before_computing_scores(tmp_path, monkeypatch):
    from router.cli import app

    def no_scores(*_a, **_k):
        raise AssertionError("scores were computed before the options were checked")

    monkeypatch.setattr("router.cli.calibrate.load_calibration_data", no_scores)
    for option, value, choices in (("--bound", "bogus", "'bernstein', 'hoeffding'"),
                                   ("--scores", "oracle", "'oof', 'classifier'")):
        res = CliRunner().invoke(app, ["calibrate", "--dry-run", option, value, "--outcomes", str(tmp_path)])
        assert res.exit_code == 2, res.output
        assert f"Invalid value for '{option}': '{value}' is not one of {choices}." in res.output


def _strict_json(text: str) -> dict:
    """The report of ``--json`` (stdout), from stdout and stderr together: after it, only the stderr line that
    says why no policy could be calibrated, when none could."""
    def no_nan(name: str) -> None:
        raise AssertionError(f"{name} in the report")

    report, end = json.JSONDecoder(parse_constant=no_nan).raw_decode(text, len(text) - len(text.lstrip()))
    assert text[end:].strip() in ("", _infeasible_line(report.get("infeasible") or [])), text[end:]
    return report


def test_cli_calibrates_on_the_shipped_local_outcomes_of_one_task_each(tmp_path):
    """Each data/outcomes/*_local.jsonl holds one task: whole tasks cannot be held out (GroupKFold refused one
    group, and holding the one task out left nothing to fit on: NaN in the block), so requests are. Offsets are
    per model, so a fit on one task is reported but not written: it would route every task (the sentiment fit
    sent chat to gemma3-270m); the three tasks together are written."""
    pol = tmp_path / "pol"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "balanced.yaml", pol / "balanced.yaml")
    before = (pol / "balanced.yaml").read_text()
    local = [ROOT / "data" / "outcomes" / f"{name}_local.jsonl" for name in ("chat", "math", "sentiment")]
    for path in local:
        code, out = router_main("calibrate", "balanced", "--outcomes", str(path), "--policies-dir", str(pol),
                                "--json", "--dry-run")
        report = _strict_json(out)
        assert code == (0 if report["policies"]["balanced"][path.name]["feasible"] else 1), out
        assert "grouped by request" in report["sources"][path.name]["scores"]
        r = report["policies"]["balanced"][path.name]
        assert r["grouped_by"] == "request" and r["n_calibration"] >= 2
        code, out = router_main("calibrate", "balanced", "--outcomes", str(path), "--policies-dir", str(pol))
        assert code == 2 and "one task only" in out and "every task" in out and "Traceback" not in out, out
        assert (pol / "balanced.yaml").read_text() == before
    args = [a for path in local for a in ("--outcomes", str(path))]
    code, out = router_main("calibrate", "balanced", *args, "--policies-dir", str(pol), "--json")
    report = _strict_json(out)
    feasible = all(r["feasible"] for r in report["policies"]["balanced"].values())
    assert code == (0 if feasible else 1), out
    if feasible:
        cal = load_policy(pol / "balanced.yaml").calibrated
        for value in (cal.achieved_calibration, *cal.held_out.values()):
            assert value is None or np.isfinite(value), cal
        # each source held requests out, one by one: counted as requests, never as "subjects"
        assert {k.split(":")[1] for k in cal.held_out} == {"target", "achieved", "n", "energy_vs_large", "requests"}
    # math: the largest model is right on almost nothing, so a relative figure may have no value: shown as n/a
    code, out = router_main("calibrate", "balanced", "--outcomes", str(ROOT / "data" / "outcomes" /
                            "math_local.jsonl"), "--policies-dir", str(pol), "--dry-run")
    assert code in (0, 1) and "nan" not in out.lower() and "one task only, so requests" in out, out


def test_cli_leaves_the_policy_untouched_when_no_threshold_is_certified(tmp_path):
    """A target no τ certifies (τ = 1, always the largest, included) is said, exits 1, and writes nothing: the
    written τ = 1 block sent all traffic to the source's largest model, and the table said 'met: yes'."""
    good = [{"id": f"r{i}", "prompt": f"what is {i} plus {i}", "task": f"t{i % 3}",
             "outcomes": {"smollm2-135m": {"correct": i % 2 == 0}, "gemma3-270m": {"correct": i % 3 != 0}}}
            for i in range(60)]
    path = tmp_path / "o.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in good))
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "acc.yaml").write_text("name: acc\naccuracy: {min_accuracy: 0.6}\n")  # gemma is right on 2/3
    before = (pol / "acc.yaml").read_text()
    code, out = router_main("calibrate", "acc", "--outcomes", str(path), "--policies-dir", str(pol))
    assert code == 1 and "infeasible" in out and "unchanged" in out and "yes" not in out, out
    assert (pol / "acc.yaml").read_text() == before
    code, out = router_main("calibrate", "acc", "--outcomes", str(path), "--policies-dir", str(pol), "--json")
    assert code == 1 and (pol / "acc.yaml").read_text() == before
    report = json.loads(out[:out.rindex("}") + 1])
    assert report["infeasible"] == ["acc"] and "held_out" not in report["policies"]["acc"]["o.jsonl"]
    assert "infeasible: no τ certifies the target of acc" in out[out.rindex("}"):], "why it failed, on stderr too"


def test_cli_refuses_outcomes_too_small_to_fit_with_a_clear_error(tmp_path):
    line = {"id": "a", "prompt": "hi", "task": "chat",
            "outcomes": {"smollm2-135m": {"correct": True}, "gemma3-270m": {"correct": False}}}
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(line) + "\n")
    code, out = router_main("calibrate", "--outcomes", str(one), "--dry-run")
    assert code == 2 and "calibration needs at least two requests" in out and "Traceback" not in out, out
    two = tmp_path / "two.jsonl"
    two.write_text(json.dumps(line) + "\n" + json.dumps({**line, "id": "b"}) + "\n")
    code, out = router_main("calibrate", "--outcomes", str(two), "--dry-run", "--held-out-share", "0.5")
    assert code == 2 and "leaves 1 to fit on, and a fit needs at least 2" in out, out


def test_cli_reads_outcomes_as_simulate_does(tmp_path):
    """One reader for both commands: a line `router simulate` refuses, `router calibrate` refuses with the same
    words (calibrate took a line without an id, and `"correct": "1"` as right)."""
    from router.cards import load_catalogue
    from router.simulate.outcomes import OutcomesError, load_outcomes

    good = [{"id": f"r{i}", "prompt": f"what is {i} plus {i}", "task": f"t{i % 3}",
             "outcomes": {"smollm2-135m": {"correct": i % 2 == 0}, "gemma3-270m": {"correct": i % 3 == 0}}}
            for i in range(30)]
    first = good[0]
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "acc.yaml").write_text("name: acc\naccuracy: {min_accuracy: 0.3}\n")
    for bad in ({k: v for k, v in first.items() if k != "id"},
                {**first, "id": "b", "outcomes": {"smollm2-135m": {"correct": "1"}, "gemma3-270m": {"correct": 0}}},
                {**first, "id": "b", "outcomes": {**first["outcomes"], "SmolLM2-135M": {"correct": True}}}):
        path = tmp_path / "bad.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in [*good, bad]))
        try:
            load_outcomes(path, load_catalogue(ROOT / "models"))
            raise AssertionError(f"simulate's reader took {bad}")
        except OutcomesError as exc:
            want = exc.message
        code, out = router_main("calibrate", "--outcomes", str(path), "--policies-dir", str(pol), "--dry-run")
        assert code == 2 and want in " ".join(out.split()), (want, out)
    path.write_text("".join(json.dumps(x) + "\n" for x in good))
    code, out = router_main("calibrate", "--outcomes", str(path), "--policies-dir", str(pol), "--dry-run")
    assert code in (0, 1) and "router calibrate" in out, out  # read and fitted (30 rows certify no τ: exit 1)


def test_cli_refuses_a_policies_dir_without_policies_before_fitting(tmp_path, monkeypatch):
    """A missing or empty --policies-dir fitted for seconds, printed an empty table and "wrote the calibrated
    block of 0 file(s)", exit 0."""
    from router.cli import app

    def no_fit(*_a, **_k):  # TEST DOUBLE: fails the test if the outcomes are read and scored at all
        raise AssertionError("the outcomes were read before the policies were found")

    monkeypatch.setattr("router.cli.calibrate.load_calibration_data", no_fit)
    (tmp_path / "empty").mkdir()
    for folder, problem in ((tmp_path / "empty", "holds no policy files (.yaml or .yml)"),
                            (tmp_path / "nonexist", "is not a folder")):
        res = CliRunner().invoke(app, ["calibrate", "--dry-run", "--policies-dir", str(folder)])
        assert res.exit_code == 2, res.output
        assert f"{folder} (--policies-dir) {problem}; fix:" in " ".join(res.output.split()), res.output


def test_cli_shows_progress_on_a_terminal_and_keeps_stdout_clean(tmp_path):
    """The command printed nothing for ~25 s before its table."""
    from router.cli import app

    data = _six_subjects(tmp_path)
    pol = tmp_path / "pol"
    pol.mkdir()
    shutil.copy(ROOT / "policies" / "balanced.yaml", pol)
    args = ["calibrate", "--outcomes", str(data), "--policies-dir", str(pol), "--dry-run", "--json",
            "--held-out-share", "0.34"]
    res = CliRunner().invoke(app, args, env={"TTY_COMPATIBLE": "1"})  # rich draws its bar as on a terminal
    assert res.exit_code == 0, res.output
    assert "scoring mmlu" in res.stderr and "fitting balanced on mmlu" in res.stderr, res.stderr
    assert json.loads(res.stdout)["policies"]["balanced"]["mmlu"]["target_kind"]



def test_a_relative_target_is_fitted_against_the_model_the_engine_calls_largest(tmp_path):
    """Two large models whose parameters and measured joules order differently: the engine's reference of
    `relative_to_largest` is llama-3-70b-instruct (70.6 B parameters on its card), while calibrate took the last by
    tier then mean joules, falcon-40b-instruct (41.8 B, dearer on these rows), measured the target against it and
    wrote it the always-adequate offset -1."""
    from router.cards import load_catalogue
    from router.cli.calibrate import calibrate_policy, load_calibration_data
    from router.policy.steps import largest

    cards = load_catalogue(ROOT / "models")
    joules = {"smollm2-135m": 30.0, "llama-3-70b-instruct": 100.0, "falcon-40b-instruct": 300.0}
    lines = [{"id": f"r{i}", "prompt": f"what is {i} plus {i}", "task": f"t{i % 6}",
              "outcomes": {m: {"correct": m == "llama-3-70b-instruct" or i % (k + 2) == 0, "energy_j": j}
                           for k, (m, j) in enumerate(joules.items())}}
             for i in range(120)]
    path = tmp_path / "two-large.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert largest(cards[m] for m in joules).name == "llama-3-70b-instruct"
    data = load_calibration_data(path)
    assert data.largest == "llama-3-70b-instruct"
    block, report = calibrate_policy(data, "relative", 0.5, confidence=0.9, bound="hoeffding",
                                     held_out_share=0.3, seed=0)
    assert report["feasible"], report
    assert block.offsets["llama-3-70b-instruct"] == -1.0 and block.offsets["falcon-40b-instruct"] > -1.0
    # an absolute target has no reference: its always-adequate model stays the dearest of the highest tier
    absolute, _ = calibrate_policy(data, "absolute", 0.3, confidence=0.9, bound="hoeffding",
                                   held_out_share=0.3, seed=0)
    assert absolute.offsets["falcon-40b-instruct"] == -1.0
