"""The policy file format (``policies/*.yaml``), validated by pydantic.

A policy says how good an answer must be (an accuracy target, absolute or relative to the largest model),
how much energy each model may spend per window (globally and per API key), what happens when a budget is
spent, whether to cascade (cheap model first, escalate on low confidence), which models are allowed or
pinned per task, and the thresholds that ``router calibrate`` fitted. See ``docs/policies.md``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from ..types import Tier
from ..yaml_files import no_boolean_for_a_number

WINDOWS: dict[str, float] = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
MIN_WINDOW_S = 1.0
"""The shortest budget window. A shorter one is a unit mistake (one request takes longer than that), and windows
like 1e-300 s each make a ledger counter of their own that never holds anything."""
OnExhausted = Literal["fallback", "reject", "allow_and_flag"]


class _Strict(BaseModel):
    # NaN and infinity pass `ge`/`le` checks unnoticed (NaN compares false) and then fail every request that
    # reaches the ledger, so no number in a policy may be either
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        return no_boolean_for_a_number(cls, v, info)  # `joules: true` would be a 1 J budget, `per: true` a 1 s window


class AccuracyTarget(_Strict):
    """Exactly one of: ``min_accuracy`` (expected accuracy ≥ x), ``relative_to_largest`` (≥ x × the largest
    candidate's predicted accuracy for the same request) or ``relative_to_best`` (≥ x × the best predicted
    candidate's: on real data the largest model is not always the best)."""

    min_accuracy: float | None = Field(None, ge=0, le=1)
    relative_to_largest: float | None = Field(None, gt=0, le=1)
    relative_to_best: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> AccuracyTarget:
        given = [x for x in (self.min_accuracy, self.relative_to_largest, self.relative_to_best) if x is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `min_accuracy` (e.g. 0.8), `relative_to_largest` (e.g. 0.95) or "
                             "`relative_to_best` (e.g. 0.95)")
        return self

    @property
    def kind(self) -> Literal["absolute", "relative", "relative_best"]:
        if self.min_accuracy is not None:
            return "absolute"
        return "relative" if self.relative_to_largest is not None else "relative_best"

    @property
    def value(self) -> float:
        if self.min_accuracy is not None:
            return float(self.min_accuracy)
        if self.relative_to_largest is not None:
            return float(self.relative_to_largest)
        return float(self.relative_to_best)  # type: ignore[arg-type]  # exactly one is set (validated)


CARBON_PREFIX = "gco2e:"
"""Ledger keys of carbon budgets start with this; their amounts are grams CO2e (a joule budget's key never does)."""


def budget_unit(key: str) -> str:
    """The unit of a budget's amounts, told by its ledger key: ``J``, or ``gCO2e`` for a carbon budget."""
    return "gCO2e" if key.startswith(CARBON_PREFIX) else "J"


KEY_HASH = r"key-[0-9a-f]{16}"
"""An API key's id (:func:`router.keys.key_id`), as policies and per-key budget keys name it."""
_PER_KEY = re.compile(rf"^(?:{re.escape(CARBON_PREFIX)})?key:({KEY_HASH}):")


def budget_key_hash(key: str) -> str | None:
    """The API key a per-key budget's ledger key (:meth:`Budget.key`) counts for, None for a global budget."""
    found = _PER_KEY.match(key)
    return found.group(1) if found else None


def budget_window_s(key: str) -> float | None:
    """The window in seconds a budget's ledger key (:meth:`Budget.key`) ends in (``...:3600s``), None when it
    ends in none."""
    try:
        return float(key.rsplit(":", 1)[1].removesuffix("s"))
    except (IndexError, ValueError):
        return None


class Budget(_Strict):
    """``joules`` (or ``g_co2e``, grams CO2e) per window for ``model`` (a card name, ``tier:<tier>`` for a whole
    tier, or ``*`` for each model separately). ``scope: per_key`` gives every API key its own budget of that
    size. A carbon budget is charged each call's joules at the grid intensity of the model's zone at that time."""

    model: str = "*"
    joules: float | None = Field(None, gt=0)
    g_co2e: float | None = Field(None, gt=0, description="grams CO2e per window instead of joules")
    per: Literal["minute", "hour", "day"] | float = Field(
        "hour", description="minute | hour | day, or a window length in seconds"
    )
    scope: Literal["global", "per_key"] = "global"

    @field_validator("model")
    @classmethod
    def _known_tier(cls, v: str) -> str:
        # a misspelt tier covers no model, so the budget would never be charged: refused here, not ignored
        if v.startswith("tier:") and v[5:] not in get_args(Tier):
            tiers = ", ".join(f"`tier:{t}`" for t in get_args(Tier))
            raise ValueError(f"unknown tier `{v[5:]}`; use one of {tiers}, a model name, or `*`")
        return v

    @field_validator("per")
    @classmethod
    def _at_least_a_second(cls, v: str | float) -> str | float:
        if not isinstance(v, str) and not v >= MIN_WINDOW_S:
            raise ValueError(
                f"a window in seconds must be positive and at least {MIN_WINDOW_S:g} s (or use minute / hour / day)"
            )
        return v

    @model_validator(mode="after")
    def _one_unit(self) -> Budget:
        if (self.joules is None) == (self.g_co2e is None):
            raise ValueError("give exactly one of `joules` (energy) or `g_co2e` (grams CO2e) per window")
        return self

    @property
    def window_s(self) -> float:
        return WINDOWS[self.per] if isinstance(self.per, str) else float(self.per)

    @property
    def unit(self) -> str:
        return "J" if self.joules is not None else "gCO2e"

    @property
    def limit(self) -> float:
        return float(self.joules if self.joules is not None else self.g_co2e)  # type: ignore[arg-type]

    def covers(self, model: str, tier: str) -> bool:
        if self.model == "*":
            return True
        if self.model.startswith("tier:"):
            return self.model[5:] == tier
        return self.model == model

    def key(self, model: str, key_hash: str | None = None) -> str:
        """The ledger key: one counter per (subject, window), shared by every policy that names it."""
        subject = f"model:{model}" if self.model == "*" else (
            self.model if self.model.startswith("tier:") else f"model:{self.model}"
        )
        window = f"{self.window_s:g}s"
        key = f"key:{key_hash}:{subject}:{window}" if self.scope == "per_key" else f"{subject}:{window}"
        return key if self.joules is not None else CARBON_PREFIX + key


class Cascade(_Strict):
    """Answer with a cheap model first; escalate when its own confidence is below ``escalate_below``."""

    enabled: bool = False
    escalate_below: float = Field(0.6, ge=0, le=1, description="confidence under which to escalate")
    escalate_to: str = Field("next", description="next | specialist | small | large | a model name")
    start: Literal["target", "cheapest"] = Field(
        "target", description="target: first try the model the accuracy target picks; cheapest: the cheapest one"
    )


class Calibrated(_Strict):
    """Written by ``router calibrate``: margin thresholds fitted so the achieved quality meets the target with
    the stated confidence. A model ``m`` is adequate when ``P(correct)[m] - target ≥ offsets[m]``."""

    target_kind: Literal["absolute", "relative", "relative_best"]
    target: float = Field(ge=0, le=1)
    offsets: dict[str, Annotated[float, Field(ge=-1, le=1)]] = Field(
        description="per model: P(correct) minus the target must reach this margin; in [-1, 1] like both terms"
    )
    confidence: float = Field(gt=0, lt=1, description="1 - delta: probability that the guarantee holds")
    bound: str = "hoeffding"
    method: str = "learn-then-test, fixed-sequence"
    n_calibration: int = Field(ge=0)
    achieved_calibration: float | None = Field(None, ge=0, le=1)
    held_out: dict[str, float | int] | None = Field(
        None, description="target vs achieved on the tasks (or requests) not used to fit")
    fitted_on: str = ""
    fitted_at: str = ""
    scores: str = ""


class KeyPolicy(_Strict):
    """Overrides for one API key, named by its hash (``router ledger report --by key`` shows them;
    ``router.ledger.hash_key`` computes one)."""

    key_hash: str = Field(pattern=rf"^{KEY_HASH}$")
    accuracy: AccuracyTarget | None = None
    budgets: list[Budget] = Field(default_factory=list, description="budgets for this key only")
    allowed_models: list[str] | None = None
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _policy_is_set_with_the_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "policy" in data:
            raise ValueError("a key's policy is given where the key is configured (the config's `keys:` entry, "
                             "e.g. `- {sha256: ..., policy: eco}`), not in a policy file; remove `policy` here")
        return data


class GridSwitch(_Strict):
    """Follow the grid: while this host's zone is above ``above_g_per_kwh``, decide with ``use_policy`` instead
    (e.g. a balanced policy that turns eco when the grid is dirty)."""

    above_g_per_kwh: float = Field(ge=0, le=10_000)
    use_policy: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Policy(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    accuracy: AccuracyTarget
    budgets: list[Budget] = Field(default_factory=list)
    on_budget_exhausted: OnExhausted = "fallback"
    cascade: Cascade = Field(default_factory=Cascade)
    allowed_models: list[str] | None = Field(None, description="only these models may answer (None: all)")
    pinned: dict[str, str] = Field(default_factory=dict, description="task -> model that always answers it")
    keys: list[KeyPolicy] = Field(default_factory=list)
    deadline_s: float | None = Field(
        None, gt=0, le=86_400, description="seconds a request may take across every retry and fallback (default: "
        "the config's deadline_s); a request's own deadline_s overrides it")
    output_tokens_estimate: int = Field(
        128, gt=0, le=100_000_000, description="output tokens assumed for energy estimates"
    )
    calibrated: Calibrated | None = None
    grid: GridSwitch | None = Field(None, description="switch to another policy while the grid is dirty")
    _file: Path | None = PrivateAttr(None)

    @property
    def file(self) -> Path | None:
        """The YAML file this policy was loaded from (None for one built in code): what errors about it name."""
        return self._file

    def key_policy(self, key_hash: str | None) -> KeyPolicy | None:
        if key_hash is None:
            return None
        return next((k for k in self.keys if k.key_hash == key_hash), None)
