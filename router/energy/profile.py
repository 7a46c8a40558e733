"""Per-model energy profiles from this hardware: run a fixed prompt set, meter each call, fit
``J = per_call + per_input_token × in + per_output_token × out`` by non-negative least squares, and write the
result into the model's card (comments and the rest of the card kept).

Why non-negative least squares: a negative joules-per-token is physically meaningless and would make short
requests look free; NNLS (Lawson-Hanson, ``scipy.optimize.nnls``) keeps every coefficient ≥ 0. The spread is
given two ways: bootstrap standard deviations of each coefficient (how well the data pin it down) and the
median/90th-percentile relative error of the fitted profile on the calls themselves (how well one line fits).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..cards import EnergyProfile, ModelCard
from ..config import embedded_dir
from ..errors import ConfigError
from .base import EnergyReading, Meter


@dataclass(frozen=True)
class ProfilePrompt:
    id: str
    prompt: str
    max_tokens: int


@dataclass(frozen=True)
class CallSample:
    """One metered call: the tokens it used and the joules the meter gave."""

    prompt_id: str
    input_tokens: int
    output_tokens: int
    joules: float
    seconds: float
    source: str


@dataclass
class FitResult:
    per_call_j: float
    per_input_token_j: float
    per_output_token_j: float
    spread: dict[str, float] = field(default_factory=dict)

    def predict(self, input_tokens: int, output_tokens: int) -> float:
        return self.per_call_j + self.per_input_token_j * input_tokens + self.per_output_token_j * output_tokens


def prompts_file() -> Path:
    """The shipped prompt set (``data/energy_prompts.jsonl``)."""
    return embedded_dir("data") / "energy_prompts.jsonl"


MIN_PROMPTS = 3
"""The fit has three coefficients (per call, per input token, per output token): fewer prompts cannot pin them."""


def load_prompts(file: str | Path | None = None, limit: int | None = None) -> list[ProfilePrompt]:
    """The prompt set (JSON Lines of ``{id, prompt, max_tokens}``), first ``limit`` of them. A file that cannot be
    read, a bad line or fewer than :data:`MIN_PROMPTS` prompts is a ConfigError naming the file (and line)."""
    path = Path(file) if file is not None else prompts_file()
    try:
        text = path.read_text(encoding="utf-8-sig")  # an editor's byte-order mark is not part of the first line
    except (OSError, UnicodeDecodeError) as exc:
        problem = "is a folder" if path.is_dir() else getattr(exc, "strerror", None) or str(exc)
        raise ConfigError.at(path, None, f"cannot read the prompts file: {problem}",
                             "give a JSON Lines file of {id, prompt, max_tokens}") from None
    out = [_prompt(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    out = out[:limit] if limit is not None else out
    if len(out) < MIN_PROMPTS:
        raise ConfigError.at(path, None, f"{len(out)} prompt(s); a profile fits 3 coefficients, so it needs at least "
                             f"{MIN_PROMPTS}", "add prompts (one JSON object a line)")
    return out


def _prompt(path: Path, lineno: int, line: str) -> ProfilePrompt:
    """One line of a prompts file, or a ConfigError naming the file and line."""
    try:
        d = json.loads(line)
    except ValueError as exc:
        raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or d.get("id") is None:
        raise ConfigError(f"{path}:{lineno}: each line must be a JSON object with `id` and `prompt` (a string)")
    max_tokens = d.get("max_tokens", 64)
    if type(max_tokens) is not int or max_tokens < 1:
        raise ConfigError(f"{path}:{lineno}: `max_tokens` must be a positive integer, got {max_tokens!r}")
    return ProfilePrompt(str(d["id"]), d["prompt"], max_tokens)


def fit_profile(samples: list[CallSample], bootstrap: int = 200, seed: int = 0) -> FitResult:
    """Non-negative least squares of joules on [1, input tokens, output tokens], with its spread."""
    from scipy.optimize import nnls

    if len(samples) < 3:
        raise ValueError(f"need at least 3 metered calls to fit 3 coefficients, got {len(samples)}")
    x = np.array([[1.0, s.input_tokens, s.output_tokens] for s in samples])
    y = np.array([s.joules for s in samples])
    # scale columns so the solver treats per-call and per-token terms alike
    scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
    coef = nnls(x / scale, y)[0] / scale
    fitted = x @ coef
    rel = np.abs(fitted - y) / np.maximum(np.abs(y), 1e-12)
    ss_res = float(((y - fitted) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(bootstrap):
        idx = rng.integers(0, len(samples), len(samples))
        boots.append(nnls(x[idx] / scale, y[idx])[0] / scale)
    sd = np.std(np.array(boots), axis=0) if boots else np.zeros(3)
    spread = {
        "per_call_j_sd": _sig(sd[0]),
        "per_input_token_j_sd": _sig(sd[1]),
        "per_output_token_j_sd": _sig(sd[2]),
        "rel_error_p50": _sig(float(np.percentile(rel, 50))),
        "rel_error_p90": _sig(float(np.percentile(rel, 90))),
        "r2": _sig(1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0,
        "calls": float(len(samples)),
    }
    return FitResult(_sig(coef[0]), _sig(coef[1]), _sig(coef[2]), spread)


def _sig(v: float, digits: int = 4) -> float:
    """Round to ``digits`` significant digits: the cards should not pretend to more precision than that."""
    v = float(v)
    return 0.0 if v == 0 else float(f"{v:.{digits}g}")


def run_profile(
    call: Callable[[ProfilePrompt], tuple[int, int]],
    meter: Meter,
    prompts: Iterable[ProfilePrompt],
    repeats: int = 1,
    on_call: Callable[[CallSample], None] | None = None,
) -> list[CallSample]:
    """Meter ``call(prompt) -> (input_tokens, output_tokens)`` for each prompt ``repeats`` times."""
    import time

    samples = []
    for p in prompts:
        for _ in range(repeats):
            t0 = time.perf_counter()
            span = meter.start()
            tokens_in, tokens_out = call(p)
            reading: EnergyReading = span.stop()
            s = CallSample(p.id, tokens_in, tokens_out, reading.joules, time.perf_counter() - t0, reading.source)
            samples.append(s)
            if on_call is not None:
                on_call(s)
    return samples


def profile_from_fit(card: ModelCard, fit: FitResult, meter: Meter, samples: list[CallSample]) -> EnergyProfile:
    """The card's new energy block. ``measured`` only when the meter measured (RAPL, NVML); a profile fitted
    from the CPU-time model stays an ``estimate`` and says so."""
    measured = meter.kind == "measured"
    source = samples[0].source if samples else f"{meter.kind}:{meter.name}"
    what = "measured by" if measured else "estimated with"
    return EnergyProfile(
        per_call_j=fit.per_call_j,
        per_input_token_j=fit.per_input_token_j,
        per_output_token_j=fit.per_output_token_j,
        source="measured" if measured else "estimate",
        citation=(
            f"`router energy profile {card.name}`: {len(samples)} calls of the shipped prompt set "
            f"{what} the {meter.name} meter on {_machine()}; non-negative least squares fit"
            + ("" if measured else " (CPU-time model constants: see docs/energy.md)")
        ),
        meter=source,
        measured_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        spread=fit.spread,
    )


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def write_profile(card_file: str | Path, profile: EnergyProfile) -> str:
    """Replace the ``energy`` block of a card YAML, keeping its comments, key order and other fields.
    The result is validated as a card before it replaces the file (atomically). Returns the new text."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.scalarstring import FoldedScalarString

    path = Path(card_file)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 110
    yaml.indent(mapping=2, sequence=4, offset=2)
    data = yaml.load(path.read_text(encoding="utf-8"))
    new = profile.model_dump(exclude_none=True)
    energy = data.get("energy")
    if not isinstance(energy, CommentedMap):
        energy = CommentedMap()
        data["energy"] = energy
    for key in list(energy):
        if key not in new:
            del energy[key]
    for key, value in new.items():
        if key == "citation" and len(value) > 80:
            value = FoldedScalarString(value)
        elif key == "spread":
            value = CommentedMap(value)
        energy[key] = value
    buf = _dump(yaml, data)
    # the card must still load: validate the written text with the project's own loader
    from ..cards import load_card

    fd, tmp = tempfile.mkstemp(suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(buf)
        load_card(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return buf


def _dump(yaml: Any, data: Any) -> str:
    import io

    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()
