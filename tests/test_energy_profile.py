"""`router energy profile`: the NNLS fit, writing the profile into a card without losing its comments, and
(slow) the whole command on the shipped small model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from router.cards import EnergyProfile, load_card
from router.energy.profile import CallSample, fit_profile, load_prompts, write_profile

ROOT = Path(__file__).resolve().parent.parent


def _samples(per_call: float, per_in: float, per_out: float, noise: float = 0.0) -> list[CallSample]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(30):
        tin, tout = int(rng.integers(5, 400)), int(rng.integers(1, 128))
        j = per_call + per_in * tin + per_out * tout
        out.append(CallSample(f"p{i}", tin, tout, j * (1 + noise * rng.normal()), 1.0, "estimated:cpu-time"))
    return out


def test_fit_recovers_a_known_profile() -> None:
    fit = fit_profile(_samples(2.0, 0.01, 0.3))
    assert (fit.per_call_j, fit.per_input_token_j, fit.per_output_token_j) == pytest.approx((2.0, 0.01, 0.3), rel=1e-3)
    assert fit.spread["rel_error_p90"] < 1e-6 and fit.spread["r2"] == pytest.approx(1.0)


def test_fit_never_goes_negative_and_reports_spread() -> None:
    # input tokens cost nothing here; noise would push an ordinary least-squares fit below zero
    fit = fit_profile(_samples(5.0, 0.0, 0.5, noise=0.2))
    assert fit.per_input_token_j >= 0.0 and fit.per_call_j >= 0.0
    assert fit.per_output_token_j == pytest.approx(0.5, rel=0.2)
    assert fit.spread["per_output_token_j_sd"] > 0 and fit.spread["calls"] == 30
    assert 0.05 < fit.spread["rel_error_p50"] < 0.5


def test_fit_needs_three_calls() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        fit_profile(_samples(1, 1, 1)[:2])


def test_shipped_prompt_set() -> None:
    prompts = load_prompts()
    assert len(prompts) == 20 and len({p.id for p in prompts}) == 20
    assert len({p.max_tokens for p in prompts}) > 5, "varied lengths, so in/out tokens can be told apart"


def test_a_prompts_file_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """A file saved with a UTF-8 byte-order mark was refused: "Unexpected UTF-8 BOM (decode using utf-8-sig)"."""
    file = tmp_path / "p.jsonl"
    file.write_text("".join(f'{{"id": "p{i}", "prompt": "say {i}"}}\n' for i in range(3)), encoding="utf-8-sig")
    assert file.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [(p.id, p.prompt) for p in load_prompts(file)] == [("p0", "say 0"), ("p1", "say 1"), ("p2", "say 2")]


def test_write_profile_keeps_comments_and_other_fields(tmp_path: Path) -> None:
    card_file = tmp_path / "smollm2-135m.yaml"
    shutil.copy(ROOT / "models" / "smollm2-135m.yaml", card_file)
    before = load_card(card_file)
    profile = EnergyProfile(
        per_call_j=1.5, per_input_token_j=0.012, per_output_token_j=0.2, source="measured",
        citation="`router energy profile smollm2-135m`: test " + "x" * 90, meter="measured:rapl",
        measured_at="2025-01-01T00:00:00Z", spread={"r2": 0.98, "calls": 20.0},
    )  # fmt: skip
    text = write_profile(card_file, profile)
    assert text.startswith("# SmolLM2-135M-Instruct"), "the leading comment survives"
    after = load_card(card_file)
    assert after.energy == profile
    assert after.model_dump(exclude={"energy", "path"}) == before.model_dump(exclude={"energy", "path"})


def test_write_profile_refuses_to_break_a_card(tmp_path: Path) -> None:
    card_file = tmp_path / "c.yaml"
    shutil.copy(ROOT / "models" / "smollm2-135m.yaml", card_file)
    original = card_file.read_text()
    bad = EnergyProfile.model_construct(
        per_call_j=-1.0,
        per_input_token_j=0.0,
        per_output_token_j=0.0,
        source="measured",
        citation="x",
        meter=None,
        measured_at=None,
        spread=None,
    )
    with pytest.raises(Exception, match="per_call_j"):
        write_profile(card_file, bad)
    assert card_file.read_text() == original, "a failed write leaves the card as it was"


@pytest.mark.slow
def test_profile_command_on_the_small_model(tmp_path: Path) -> None:
    from router.cli import app

    models = tmp_path / "models"
    shutil.copytree(ROOT / "models", models)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(
        f'{{"id": "p{i}", "prompt": "{"Say yes. " * (1 + 6 * i)}", "max_tokens": {2 + 3 * i}}}\n' for i in range(4)
    ))  # fmt: skip
    args = ["energy", "profile", "smollm2-135m", "--models-dir", str(models), "--prompts-file", str(prompts),
            "--meter", "cpu-time"]  # fmt: skip
    before = (models / "smollm2-135m.yaml").read_text()
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "dry run" in dry.output and (models / "smollm2-135m.yaml").read_text() == before
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = load_card(models / "smollm2-135m.yaml")
    e = card.energy
    assert e.meter == "estimated:cpu-time" and e.source == "estimate", "a CPU-time profile is not 'measured'"
    assert e.spread and e.spread["calls"] == 4 and "router energy profile smollm2-135m" in e.citation
    # on a shared 2-core machine the split between terms is noisy; the energy itself must be accounted for
    assert min(e.per_call_j, e.per_input_token_j, e.per_output_token_j) >= 0.0
    assert e.joules(30, 5) > 0.0
    assert card.description == load_card(ROOT / "models" / "smollm2-135m.yaml").description
