"""Model cards: one YAML file per model in ``models/``, validated on load.

A card says what a model is (tier, size, source, licence), how to run it (its backend), what it costs
(its energy profile, and where that figure comes from) and what it is for (tasks, context length).
A bad card raises :class:`ConfigError` naming the file, the field and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .types import Tier


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GGUFWeights(_Strict):
    """Where GGUF weights come from: a file path, or a file inside an installed package."""

    path: str | None = None
    package: str | None = None
    file: str | None = None
    assemble: bool = Field(False, description="the package assembles the file from chunk packages")
    sha256: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> GGUFWeights:
        if not self.path and not self.package:
            raise ValueError("give either `path` or `package` (+ `file`)")
        return self


class OnnxBackendSpec(_Strict):
    """An ONNX classifier. Its graph takes either the raw text (a ``[N, 1]`` string input, e.g. a TF-IDF
    pipeline) or word-piece ids (``input_ids``, ``attention_mask``, optionally ``token_type_ids``, e.g. a
    fine-tuned transformer); for the latter the backend tokenises with ``tokenizer``."""

    type: Literal["onnx"]
    path: str = Field(description="ONNX file, relative to the card's folder")
    labels: list[str] = Field(description="answer text for each class index, e.g. [negative, positive]")
    tokenizer: str | None = Field(
        None,
        description="tokenizer.json (Hugging Face `tokenizers` format), relative to the card's folder; used when "
        "the graph takes token ids (default: tokenizer.json beside the ONNX file)",
    )
    max_length: int = Field(
        128, ge=4, le=8192, description="word pieces kept per request (longer text is truncated; token-id graphs)"
    )


class LlamaCppBackendSpec(_Strict):
    type: Literal["llama_cpp"]
    weights: GGUFWeights
    prompt_style: Literal["chat", "completion"] = "chat"
    n_ctx: int = 2048
    n_threads: int | None = None
    default_max_tokens: int = 128
    temperature: float = 0.0
    repeat_penalty: float = 1.1
    system_prompt: str | None = None
    stop: list[str] = Field(default_factory=list)


class OpenAIBackendSpec(_Strict):
    type: Literal["openai"]
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2
    default_max_tokens: int = 256


BackendSpec = Annotated[
    OnnxBackendSpec | LlamaCppBackendSpec | OpenAIBackendSpec, Field(discriminator="type")
]


class EnergyProfile(_Strict):
    """Joules for one call: ``per_call_j + per_input_token_j * in + per_output_token_j * out``."""

    per_call_j: float = Field(0.0, ge=0)
    per_input_token_j: float = Field(0.0, ge=0)
    per_output_token_j: float = Field(0.0, ge=0)
    source: Literal["measured", "published", "estimate"]
    citation: str = Field(description="where the figures come from: the command and meter, or a publication")
    meter: str | None = None
    measured_at: str | None = None
    spread: dict[str, float] | None = None

    def joules(self, input_tokens: int, output_tokens: int) -> float:
        return self.per_call_j + self.per_input_token_j * input_tokens + self.per_output_token_j * output_tokens


class ModelCard(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    tier: Tier
    description: str = ""
    backend: BackendSpec | None = Field(
        None, description="how to call it; a card without one is for offline simulation only"
    )
    tasks: list[str] = Field(default_factory=list, description="tasks a specialist serves; empty = any")
    context_length: int = Field(gt=0)
    energy: EnergyProfile
    parameters: str | None = Field(None, description="size, e.g. '135M'")
    source: str | None = None
    license: str | None = None
    aliases: list[str] = Field(default_factory=list, description="other names, e.g. in outcome files")
    prior_accuracy: dict[str, float] = Field(
        default_factory=dict, description="task -> accuracy measured or published, used as a prior"
    )
    family: str | None = Field(None, description="model family, e.g. llama-3, gemma-2 (a prior for new models)")
    active_parameters_b: float | None = Field(
        None, gt=0, description="parameters active per token, in billions (the energy estimate and a prior)"
    )
    benchmarks: dict[str, float] = Field(
        default_factory=dict, description="public benchmark scores in [0, 1], e.g. alpaca_eval_lc (a prior)"
    )
    simulation_only: bool = Field(
        False, description="size undisclosed: the energy figure is a placeholder, fit for simulation only"
    )
    path: Path | None = Field(None, exclude=True, description="the YAML file this card came from")

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def callable(self) -> bool:
        return self.backend is not None

    def serves(self, task: str) -> bool:
        return not self.tasks or task in self.tasks


def _describe(err: ValidationError, file: Path) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{file}: field `{where}`: {e['msg']}{got_s}")
    return "\n".join(lines)


def load_card(file: str | Path) -> ModelCard:
    file = Path(file)
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read model card: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: a model card is a YAML mapping (name, tier, backend, energy, ...)")
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file)) from exc
    card.path = file.resolve()
    return card


def load_cards(folder: str | Path) -> dict[str, ModelCard]:
    """Every ``*.yaml`` card in ``folder``, by name. Duplicate names are a config error.

    Only the folder's own files: the ``catalogue/`` below it (cards without a backend, for simulation and for
    users who add one) is read by :func:`load_catalogue`, so its models never become live candidates."""
    return _load_into({}, folder)


CATALOGUE = "catalogue"
"""Sub-folder of a models folder with cards that have no backend (public models for simulation and training)."""


def load_catalogue(models_dir: str | Path, *, with_models: bool = True) -> dict[str, ModelCard]:
    """The cards of ``models_dir`` (unless ``with_models`` is false) plus those of ``models_dir/catalogue``:
    what simulation, training and calibration may name. A name in both is a config error."""
    cards = load_cards(models_dir) if with_models else {}
    folder = Path(models_dir) / CATALOGUE
    return _load_into(cards, folder) if folder.is_dir() else cards


def _load_into(cards: dict[str, ModelCard], folder: str | Path) -> dict[str, ModelCard]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: model card folder does not exist")
    for file in sorted(folder.glob("*.yaml")):
        card = load_card(file)
        if card.name in cards:
            raise ConfigError(f"{file}: model name `{card.name}` is already used by {cards[card.name].path}")
        cards[card.name] = card
    return cards
