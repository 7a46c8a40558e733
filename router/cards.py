"""Model cards: one YAML file per model in ``models/``, validated on load.

A card says what a model is (tier, size, source, licence), how to run it (its backend), what it costs
(its energy profile, and where that figure comes from) and what it is for (tasks, context length).
Carbon: a card's ``zone`` is the grid its model draws from (a hosted model's provider region); a hosted card's
energy profile is the provider's whole draw, data-centre overhead (PUE) included, so the router adds no PUE to it
(``carbon.pue`` applies only to joules metered on this host; see docs/energy.md).
A bad card raises :class:`ConfigError` naming the file, the field and what was expected, when it is loaded:
every number must be finite and in range, and every file the backend names must exist (see
:mod:`router.card_files`), so a wrong number or a missing file fails at start-up, not at the first request.
What a card needs of the environment is checked when the Router starts: a remote card's key variable (a warning)
and the proxy the environment names for its endpoint (a ConfigError where httpx cannot call through it:
:mod:`router.backends.env_proxies`).

Length: the card schema with its validators, the loaders, and the key variable's start-up check, which reads the
cards' fields as the validators do.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from .capabilities import Capability, unsupported
from .card_files import package_file, package_folder, resolve_card_file
from .config import names_a_variable
from .errors import ConfigError
from .types import Tier
from .yaml_files import meant_field, read_yaml_mapping, takes_a_number, yaml_files

log = logging.getLogger("router")

MAX_TOKENS = 100_000_000
"""Upper bound for token counts on a card; the longest context windows offered today are ~10 M tokens."""
MAX_JOULES = 1e9
"""Upper bound for one energy figure (278 kWh): a larger number is a unit mistake, and keeps sums finite."""
Probability = Annotated[float, Field(ge=0, le=1)]
Joules = Annotated[float, Field(ge=0, le=MAX_JOULES)]
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMBT])\b", re.IGNORECASE)
"""The figure a ``parameters`` entry starts with: '135M', '2.78B (dense)', '46.7B total, 12.9B active ...'."""
_BILLIONS = {"k": 1e-6, "m": 1e-3, "b": 1.0, "t": 1e3}
_SECRET_FIELDS = frozenset({"api_key_env"})
"""Fields whose value may be a key pasted by mistake: an error about one never shows it."""


class _Strict(BaseModel):
    # NaN and infinity pass `ge`/`le` checks unnoticed (NaN compares false) and then poison sums and the ledger
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads `true` as 1: `per_call_j: true` would be 1 J, `context_length: yes` one token. Checked on the
        # mapping, not per field: a field validator on every field would also wrap `backend.type`, the discriminator
        if isinstance(data, dict):
            bad = [k for k, v in data.items() if isinstance(v, bool) and k in cls.model_fields
                   and takes_a_number(cls.model_fields[k].annotation)]
            if bad:
                raise ValueError(f"{', '.join(f'`{k}`' for k in bad)}: a number is needed here, not true or false; "
                                 "fix: write the number itself")
        return data


class GGUFWeights(_Strict):
    """Where GGUF weights come from: a file path, or a file inside an installed package."""

    path: str | None = Field(None, description="GGUF file, relative to the card's folder, or absolute")
    package: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    file: str | None = None
    assemble: bool = Field(False, description="the package assembles the file from chunk packages")
    sha256: str | None = Field(None, pattern=r"^[0-9A-Fa-f]{64}$")
    _local_file: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _one_source(self) -> GGUFWeights:
        if not self.path and not self.package:
            raise ValueError("give either `path` or `package` (+ `file`)")
        if self.package and not self.assemble and not self.file:
            raise ValueError("name the GGUF file inside the package in `file`")
        return self

    @property
    def local_file(self) -> Path | None:
        """``path`` resolved against the card's folder and checked when the card was loaded (None for package
        weights, which :func:`router.backends.weights.resolve_gguf` finds or assembles)."""
        return self._local_file


class OnnxBackendSpec(_Strict):
    """An ONNX classifier. Its graph takes either the raw text (a ``[N, 1]`` string input, e.g. a TF-IDF
    pipeline) or word-piece ids (``input_ids``, ``attention_mask``, optionally ``token_type_ids``, e.g. a
    fine-tuned transformer); for the latter the backend tokenises with ``tokenizer``."""

    type: Literal["onnx"]
    path: str = Field(description="ONNX file, relative to the card's folder, or absolute")
    labels: list[str] = Field(description="answer text for each class index, e.g. [negative, positive]")
    tokenizer: str | None = Field(
        None,
        description="tokenizer.json (Hugging Face `tokenizers` format), relative to the card's folder; used when "
        "the graph takes token ids (default: tokenizer.json beside the ONNX file)",
    )
    max_length: int = Field(
        128, ge=4, le=8192, description="word pieces kept per request (longer text is truncated; token-id graphs)"
    )
    _model_file: Path | None = PrivateAttr(None)
    _tokenizer_file: Path | None = PrivateAttr(None)

    @property
    def model_file(self) -> Path | None:
        """``path`` resolved against the card's folder and checked when the card was loaded."""
        return self._model_file

    @property
    def tokenizer_file(self) -> Path | None:
        """``tokenizer`` resolved and checked when the card was loaded (None when the card names none)."""
        return self._tokenizer_file


class LlamaCppBackendSpec(_Strict):
    type: Literal["llama_cpp"]
    weights: GGUFWeights
    prompt_style: Literal["chat", "completion"] = "chat"
    n_ctx: int = Field(2048, gt=0, le=MAX_TOKENS)
    n_threads: int | None = Field(None, ge=1, le=4096)
    default_max_tokens: int = Field(128, gt=0, le=MAX_TOKENS)
    temperature: float = Field(0.0, ge=0, le=100)
    repeat_penalty: float = Field(1.1, gt=0, le=100)
    system_prompt: str | None = None
    stop: list[str] = Field(default_factory=list)


class OpenAIBackendSpec(_Strict):
    type: Literal["openai"]
    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = Field(60.0, gt=0, le=86_400)
    max_retries: int = Field(2, ge=0, le=100)
    default_max_tokens: int = Field(256, gt=0, le=MAX_TOKENS)

    # A key pasted here in place of its variable's name loaded, and each call's start error ("the environment
    # variable sk-... is not set") wrote the key into the log; the message below never repeats the value
    @field_validator("api_key_env")
    @classmethod
    def _names_a_variable(cls, name: str | None) -> str | None:
        if name is not None and not names_a_variable(name):
            raise ValueError(
                "api_key_env is the name of the environment variable that holds the key (letters, digits and _, "
                "not starting with a digit, e.g. OPENAI_API_KEY), not the key itself; fix: export the key in that "
                "variable (export OPENAI_API_KEY=...) and write the variable's name here")
        return name

    # The backend appends /chat/completions to base_url and sends the key only as `Authorization: Bearer`, so
    # a URL with a query (Azure's ?api-version=) or the endpoint's own path would be called at a path that does not
    # exist there, each call failing with a 404 that names neither cause.
    @field_validator("base_url")
    @classmethod
    def _base_url_is_the_api_root(cls, url: str) -> str:
        parts = urlsplit(url)
        # without a scheme (`localhost:8000/v1`, `api.openai.com/v1`) the card loaded and only its calls failed:
        # each one in `router serve` as a 500 bad_config naming neither the card nor the field
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "base_url must be an http:// or https:// URL with a host; fix: write it in full, e.g. "
                "http://localhost:8000/v1 or https://api.openai.com/v1")
        if parts.query or parts.fragment:
            raise ValueError(
                "a base_url with a query (?...) or fragment (#...) is not supported: the router calls "
                "base_url + /chat/completions and sends no query, no extra headers and the key only as "
                "`Authorization: Bearer`; fix: give the API's root (e.g. https://api.example.com/v1); for Azure "
                "OpenAI, its v1 API (https://RESOURCE.openai.azure.com/openai/v1), not a deployment URL with "
                "?api-version=")
        if parts.path.rstrip("/").endswith("/chat/completions"):
            raise ValueError("base_url is the API's root, to which the router adds /chat/completions itself; fix: "
                             "drop /chat/completions from its end (e.g. http://localhost:8000/v1)")
        return url


BackendSpec = Annotated[
    OnnxBackendSpec | LlamaCppBackendSpec | OpenAIBackendSpec, Field(discriminator="type")
]


class EnergyProfile(_Strict):
    """Joules for one call: ``per_call_j + per_input_token_j * in + per_output_token_j * out``."""

    per_call_j: Joules = 0.0
    per_input_token_j: Joules = 0.0
    per_output_token_j: Joules = 0.0
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
    context_length: int = Field(gt=0, le=MAX_TOKENS)
    energy: EnergyProfile
    parameters: str | None = Field(None, description="size, e.g. '135M'")
    source: str | None = None
    license: str | None = None
    aliases: list[str] = Field(default_factory=list, description="other names, e.g. in outcome files")
    prior_accuracy: dict[str, Probability] = Field(
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
    zone: str | None = Field(None, description="the grid zone the model draws from (a hosted model's provider "
                             "region); default: this host's zone for a local model, `carbon.hosted_zone` otherwise")
    capabilities: list[Capability] = Field(
        default_factory=list,
        description="what the model can do besides text: tools, json_object, json_schema, logprobs, reasoning "
        "(router/capabilities.py); checked against the backend when the card is loaded")
    path: Path | None = Field(None, exclude=True, description="the YAML file this card came from")

    # Leaderboards print these as percentages (AlpacaEval's 4.4, MMLU's 85.2): taken as a fraction, the prior's
    # logit clips 4.4 to 0.98, and a weak model would look near perfect to the router
    @field_validator("benchmarks")
    @classmethod
    def _scores_are_fractions(cls, scores: dict[str, float]) -> dict[str, float]:
        bad = {name: score for name, score in scores.items() if not 0 <= score <= 1}
        if bad:
            raise ValueError("a benchmark score is a fraction in [0, 1], got " + ", ".join(
                f"`{name}: {score:g}`" for name, score in bad.items())
                + "; fix: a percentage from a leaderboard divided by 100 (4.4 % is 0.044)")
        return scores

    @model_validator(mode="after")
    def _capabilities_possible(self) -> ModelCard:
        if self.capabilities and self.backend is not None:
            style = getattr(self.backend, "prompt_style", None)
            bad = unsupported(self.backend.type, list(dict.fromkeys(self.capabilities)), style)
            if bad:
                raise ValueError("field `capabilities`: " + "; ".join(f"`{c}` is not possible: {why}"
                                                                      for c, why in bad.items()))
        return self

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def callable(self) -> bool:
        return self.backend is not None

    @property
    def runs_here(self) -> bool:
        """Whether the model runs on this machine (ONNX, llama.cpp), so its calls are metered here."""
        return self.backend is not None and self.backend.type != "openai"

    @property
    def size_b(self) -> float | None:
        """Parameters in billions: ``active_parameters_b``, else the figure ``parameters`` starts with ('135M',
        '7B'); ``None`` where the card states no size ('undisclosed')."""
        if self.active_parameters_b is not None:
            return self.active_parameters_b
        found = _SIZE.match(self.parameters or "")
        return float(found[1]) * _BILLIONS[found[2].lower()] if found else None

    def serves(self, task: str) -> bool:
        return not self.tasks or task in self.tasks

    def locate_files(self) -> None:
        """Resolve every file the backend names against the card's folder and check that it exists, keeping
        the resolved paths on the backend spec for the backend to open. ``load_card`` calls it, so a wrong
        path is a :class:`ConfigError` at load time, not a failed first request; backends call it again for
        cards built in code (it only re-checks that the files are there)."""
        spec = self.backend
        if isinstance(spec, OnnxBackendSpec):
            hint = "train it with `router train specialist`, or fix the path"
            spec._model_file = resolve_card_file(self.path, self.folder, spec.path, "backend.path", hint)
            spec._tokenizer_file = (
                resolve_card_file(self.path, self.folder, spec.tokenizer, "backend.tokenizer")
                if spec.tokenizer is not None
                else None
            )
        elif isinstance(spec, LlamaCppBackendSpec):
            weights = spec.weights
            if weights.path:
                weights._local_file = resolve_card_file(self.path, self.folder, weights.path, "backend.weights.path")
            elif weights.package and weights.assemble:  # assembled into the cache on first use
                package_folder(self.path, weights.package)
            elif weights.package and weights.file:
                package_file(self.path, weights.package, weights.file)


def _describe(err: ValidationError, file: Path) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) or _shows_a_secret(e) else f" (got {got!r})"
        meant = meant_field(ModelCard, e["loc"]) if e["type"] == "extra_forbidden" else None
        typo = f"; did you mean `{meant}`?" if meant else ""
        lines.append(f"{file}: field `{where}`: {e['msg']}{got_s}{typo}")
    return "\n".join(lines)


def _shows_a_secret(error: Any) -> bool:
    # `api_key: sk-...` is refused as an unknown field spelt like api_key_env: its value is as likely a key
    return bool(error["loc"]) and (error["loc"][-1] in _SECRET_FIELDS or (
        error["type"] == "extra_forbidden" and meant_field(ModelCard, error["loc"]) in _SECRET_FIELDS))


def load_card(file: str | Path) -> ModelCard:
    """One card, validated, with every file its backend names found (see :meth:`ModelCard.locate_files`)."""
    file = Path(file)
    raw, _ = read_yaml_mapping(file, "model card", "name, tier, backend, energy, ...")
    try:
        card = ModelCard.model_validate(raw)
    except ValidationError as exc:
        # pydantic's own message repeats each input, and `router -v` prints the chained error
        secret = any(_shows_a_secret(e) for e in exc.errors())
        raise ConfigError(_describe(exc, file)) from (None if secret else exc)
    card.path = file.resolve()
    card.locate_files()
    return card


def load_cards(folder: str | Path) -> dict[str, ModelCard]:
    """Every ``*.yaml`` and ``*.yml`` card in ``folder``, by name. Duplicate names are a config error.

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
    if folder.is_file():  # `models_dir: models/remote-large.yaml`: "does not exist" would be wrong
        raise ConfigError(f"{folder}: is a file, not a model card folder: models_dir names the folder that holds the "
                          f"cards; fix: name the folder it is in ({folder.parent}), or a folder of its own for it")
    if not folder.is_dir():
        raise ConfigError(f"{folder}: model card folder does not exist")
    # a request names a model by its name or any alias, in any case (Router.resolve_model): each must be one card's
    taken = {spelling: card for card in cards.values() for spelling in _spellings(card)}
    for file in yaml_files(folder):
        card = load_card(file)
        if card.name in cards:
            raise ConfigError(f"{file}: model name `{card.name}` is already used by {cards[card.name].path}")
        for spelling in sorted(_spellings(card)):
            other = taken.get(spelling)
            if other is not None:
                raise ConfigError(
                    f"{file}: `{spelling}` (a name or alias of `{card.name}`) is also a name or alias of "
                    f"`{other.name}` in {other.path}, so a request for it could reach either; fix: remove or "
                    "rename one of them (names and aliases are matched without regard to case)")
            taken[spelling] = card
        cards[card.name] = card
    return cards


def _spellings(card: ModelCard) -> set[str]:
    return {card.name.lower(), *(alias.lower() for alias in card.aliases)}


def warn_of_unset_key_variables(cards: dict[str, ModelCard], given: set[str]) -> None:
    """A warning per remote model whose ``api_key_env`` variable is not set (its backend would not start, so each
    call to it fails over to another model), when the Router starts rather than at its first call. Not an error: the
    variable may be set for a later deploy. Only the variable's name is said, never a value."""
    for name, card in cards.items():
        spec = card.backend
        if (isinstance(spec, OpenAIBackendSpec) and spec.api_key_env and name not in given
                and not os.environ.get(spec.api_key_env)):
            log.warning("model %s (%s): its API key variable %s (backend.api_key_env) is not set, so every call to it "
                        "will fail and fall back to another model; fix: export %s=... with its key before starting "
                        "the router", name, card.path, spec.api_key_env, spec.api_key_env)
