"""Router configuration, typed: where cards, policies and the ledger live, the request deadline, the proxy's
settings, API keys, and the constants meters use. Every default is written here once.

``RouterConfig()`` is the embedded default: the model cards and policies shipped with the package, and a
SQLite ledger in the user's data directory. Every field can come from a YAML file (``RouterConfig.load``) or
from an environment variable ``ROUTER_<FIELD>`` for the plain fields (e.g. ``ROUTER_LEDGER_URL``), which wins over
the file (an empty one counts as unset); keyword arguments to ``load`` and command-line flags win over both. A
relative path in a YAML file is relative to that file's folder (docs/energy.md); one from code or the environment,
to the working directory.

Length: one settings class per part (proxy, keys, journal, carbon, batch, dashboard, judge...) with each field's
default, bounds and description in one place, so that every default is written once; each class is short.
"""

from __future__ import annotations

import contextvars
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .yaml_files import meant_field, read_yaml

_PACKAGE = Path(__file__).resolve().parent

DEFAULT_GRID_G_PER_KWH = 475.0
"""gCO2e per kWh when nothing better is configured: the IEA world average (sources in ``router/energy/carbon.py``)."""


class _Settings(BaseModel):
    """A settings block read from YAML: strict types (``true`` is not a number, ``"5"`` is not 5)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


def _expand_home(path: Path) -> Path:
    """``~/...`` is the user's home folder, as in a shell and on a model card; pathlib would keep ``~`` as the name
    of a folder in the working directory, so a config's ``models_dir: ~/cards`` was not found."""
    try:
        return path.expanduser()
    except RuntimeError:  # no home directory to expand to: the path stays as written, and its use says it is missing
        return path


UserPath = Annotated[Path, AfterValidator(_expand_home)]
"""A path setting: ``~`` and ``~user`` expanded, as the docs promise for every path a config names."""

_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NOT_A_VARIABLE = ("this is the name of the environment variable that holds the key (letters, digits and _, not "
                  "starting with a digit, e.g. ROUTER_API_KEY), not the key itself; fix: export the key in that "
                  "variable (export ROUTER_API_KEY=...) and write the variable's name here")
"""What a setting naming a key's variable says of a value that cannot be one, without repeating it."""


def names_a_variable(name: str) -> bool:
    """Whether ``name`` can be an environment variable's name. A setting that names the variable holding a key is
    given the key itself by mistake often enough that an error about such a value must never show it: "the variable
    sk-... is not set" would write the key to the terminal and the service's log."""
    return _VARIABLE_NAME.fullmatch(name) is not None


def _variable_name(name: str) -> str:
    if not names_a_variable(name):
        raise ValueError(NOT_A_VARIABLE)
    return name


VariableName = Annotated[str, AfterValidator(_variable_name)]
"""A setting naming the environment variable that holds a key (a key entry's ``env``, a zone's ``api_key_env``)."""
_VARIABLE_FIELDS = frozenset({"env", "api_key_env"})
"""The settings of type :data:`VariableName`: an error about one shows its type, never its value."""


def embedded_dir(name: str) -> Path:
    """``models``, ``policies`` or ``data`` as shipped: inside the wheel (of data/, what pyproject.toml's
    force-include lists), or at the repository root when editable."""
    packaged = _PACKAGE / "_embedded" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / name


def installed_package() -> bool:
    """Whether this is an installed package (a wheel), whose shipped models, policies and data are in its own
    ``_embedded`` folder, rather than a source checkout, whose are the repository's."""
    return (_PACKAGE / "_embedded").is_dir()


def inside_installed_package(path: Path) -> bool:
    """Whether ``path`` is in the installed package's ``_embedded`` folder: files an upgrade replaces and whose
    hashes pip recorded, so a command must not write its results there. Never in a source checkout, where the
    shipped models/ and policies/ are the repository's and calibrate and energy profile are meant to update them.
    Compared as written and with links resolved, so a linked install is caught too."""
    shipped = _PACKAGE / "_embedded"
    if not shipped.is_dir():
        return False
    return Path(os.path.abspath(path)).is_relative_to(shipped) or Path(path).resolve().is_relative_to(shipped)


def refuse_writing_installed_package(target: Path, command: str, setting: Literal["models_dir", "policies_dir"],
                                     option: str | None, preview: str = "--dry-run") -> None:
    """A ConfigError naming the fix when ``command`` would write ``target`` inside the installed package.
    ``option`` is the command's own option for the folder; without one, the folder comes from ``--config``.
    ``preview`` is the command's option that runs it without writing."""
    if inside_installed_package(target):
        shipped = embedded_dir(setting.removesuffix("_dir"))
        what = "model cards" if setting == "models_dir" else "policies"
        variable = f"ROUTER_{setting.upper()}"
        point_there = (f"pass {option} DIR (or set {variable}=DIR)" if option else
                       f"pass --config FILE whose {setting} is DIR (or set {variable}=DIR)")
        raise ConfigError(
            f"{command} would write into {target}, the installed package's shipped copy of the {what}, which an "
            f"upgrade or reinstall replaces (and pip's record of the package would no longer match); fix: copy "
            f"the shipped files to a folder of your own (cp -r {shipped} DIR) and {point_there}, or use {preview} "
            "to see the result without writing it")


def shipped_series(name: str) -> Path | None:
    """A series shipped in ``data/grid_carbon/`` by file name (``CA_2022_hourly.csv``) or stem."""
    folder = embedded_dir("data") / "grid_carbon"
    for candidate in (folder / name, folder / f"{name}.csv"):
        if candidate.is_file():
            return candidate
    return None


def default_ledger_url() -> str:
    from .ledger.urls import sqlite_url
    from .user_dirs import user_data_folder

    folder = user_data_folder("name the ledger (ledger_url in the config, ROUTER_LEDGER_URL or --ledger)")
    return sqlite_url(folder / "ledger.sqlite3")


class CpuPowerModel(BaseModel):
    """Constants of the CPU-time energy model, used where no meter is readable.

    Defaults: ~15 W per fully busy core is the per-core share of a 2-core slice of a ~100-150 W TDP server
    CPU at load (TDP / cores, e.g. Intel Xeon 8-10 W/core to AMD EPYC 7003 ~4-8 W/core plus uncore and
    DRAM); `idle_w` is a share of idle power attributed while the call runs. Tune them against
    RAPL on your own hardware (docs/energy.md).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    watts_per_busy_core: float = Field(15.0, gt=0, le=10_000)
    idle_w: float = Field(2.0, ge=0, le=10_000)
    source: str = (
        "assumed: the per-core share of a 100-150 W server CPU package; calibrate the W-per-core constant against "
        "RAPL on your hardware (docs/energy.md)"
    )
    """Where the figures come from; it does not repeat them (``router energy meters`` prints them beside it)."""


class CooldownSettings(_Settings):
    """The circuit breaker around every backend: after ``failures`` consecutive failures a backend is skipped for
    ``seconds`` (then one trial call is let through). See ``router/backends/cooldown.py``."""

    failures: int = Field(3, ge=1, le=10_000)
    seconds: float = Field(30.0, ge=0, le=86_400)


class ProxySettings(_Settings):
    """``router serve``: request size and time limits (shutdown too), which routes need a key, CORS, and how ledger
    records are written."""

    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1 << 30, description="larger bodies are a 413")
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a request's headers must arrive within this many seconds of its first "
        "byte, else the connection is closed (a slow client cannot hold it open)")
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request's body must arrive within this many seconds, else 408")
    shutdown_timeout_s: float = Field(
        25.0, ge=0, le=3600, description="on SIGTERM or Ctrl+C, requests in flight (streams too) get this many "
        "seconds to finish, then are cancelled (recorded as `cancelled` in the ledger) and the server exits; "
        "the default leaves the ledger a few seconds to close within the 30 s Kubernetes gives before it kills")
    open_routes: list[Literal["metrics", "models"]] = Field(
        default_factory=list, description="routes that need no key even when keys are configured (e.g. `metrics` "
        "for a Prometheus scraper without one); /health never needs one")
    cors_origins: list[str] = Field(
        default_factory=list, description="origins a browser app may call the proxy from (e.g. "
        "https://app.example.com, or * for any); empty: CORS off. A page of another origin is refused (403)")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names a proxy listening on a loopback address answers to besides "
        "loopback ones (a reverse proxy in front that passes its own Host on, e.g. router.example.com; * for any); "
        "others are refused (403), as DNS rebinding would use them (docs/proxy.md, Web pages)")
    ledger_writes: Literal["background", "inline"] = Field(
        "background", description="background: a writer thread groups records (router/proxy/ledger_writer.py); "
        "inline: written on the request path")
    ledger_group_ms: float = Field(20.0, ge=0, le=1000, description="the background writer's pause between groups")
    warm_up: bool = Field(True, description="load and run every local model once at start, so the first requests "
                          "are neither slow nor charged the loading")


class JournalSettings(_Settings):
    """The local append-only journal in front of the ledger (``router/ledger/journal.py``): every record is on
    this host's disk before the answer is acknowledged, and reaches the store when it can."""

    enabled: bool = Field(True, description="off: records go straight to the store (lost if it is down)")
    folder: UserPath | None = Field(None, strict=False,
                                description="default: beside a SQLite ledger, else in the user data dir")
    fsync: Literal["always", "group", "never"] = Field(
        "group", description="always: every record before it is acknowledged (~3 ms); group: every "
        "fsync_interval_ms (a power cut loses at most that); never: the OS writes back (~30 s)")
    fsync_interval_ms: float = Field(50.0, gt=0, le=60_000)
    replay_interval_s: float = Field(5.0, gt=0, le=86_400, description="how often journaled records are "
                                     "moved into the store (and other, stopped processes' journals replayed)")
    segment_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, le=1 << 34)


class ZoneSource(_Settings):
    """Where one grid zone's carbon intensity comes from (``router/carbon/``)."""

    type: Literal["static", "file", "http"] = Field(
        "static", description="static: one figure; file: an hourly CSV `timestamp,g_co2e_per_kwh`; http: a "
        "grid-intensity API shaped like Electricity Maps' /v3/carbon-intensity/latest and /forecast")
    g_per_kwh: float | None = Field(None, ge=0, le=10_000, strict=False,
                                    description="static: the figure (default: `grid_g_per_kwh`)")
    path: UserPath | None = Field(None, strict=False, description="file: the CSV, or the name of a shipped series "
                              "in data/grid_carbon/ (e.g. CA_2022_hourly.csv)")
    replay: Literal["time_of_year", "offset"] = Field(
        "time_of_year", description="file: time_of_year reads the same hour of the year from the series (a past "
        "year stands in for this one); offset reads it at now + offset_s")
    offset_s: float = Field(0.0, strict=False, description="file, replay offset: seconds added to now")
    url: str | None = Field(None, description="http: the API's base URL (the paths /v3/carbon-intensity/... follow)")
    api_zone: str | None = Field(None, description="http: the zone name the API knows (default: this zone's name)")
    api_key_env: VariableName | None = Field(None, description="http: environment variable holding the key "
                                             "(auth-token)")
    timeout_s: float = Field(5.0, gt=0, le=120, strict=False)
    cache_s: float = Field(300.0, ge=0, le=86_400, strict=False, description="http: how long a value is reused")
    forecast_cache_s: float = Field(1800.0, ge=0, le=86_400, strict=False)

    @model_validator(mode="after")
    def _complete(self) -> ZoneSource:
        if self.type == "file" and self.path is None:
            raise ValueError("a `file` zone needs `path` (a CSV timestamp,g_co2e_per_kwh)")
        if self.type == "http" and not self.url:
            raise ValueError("an `http` zone needs `url` (the grid-intensity API's base URL)")
        return self


class CarbonSettings(_Settings):
    """Carbon intensity per grid zone, and which zone each model draws from (``router/carbon/grid.py``)."""

    zone: str = Field("local", description="the zone of this host: models that run here draw from it")
    hosted_zone: str = Field("world", description="the zone of a hosted model whose card names none")
    zones: dict[str, ZoneSource] = Field(default_factory=dict, description="zone -> source; a zone not listed "
                                         "uses the static `grid_g_per_kwh`")
    pue: float = Field(1.0, ge=1.0, le=3.0, strict=False, description="overhead applied to joules metered on this "
                       "host (a hosted card's joules include its data centre's PUE already)")
    clock_file: UserPath | None = Field(None, strict=False, description="tests and replays: read the time from this "
                                    "file (epoch seconds) instead of the system clock, for intensities and batches")

    @model_validator(mode="after")
    def _zone_is_configured(self) -> CarbonSettings:
        # with sources configured, a host zone left out of them is a typo far more often than a wish for the
        # static default: every record of a local model would carry grid_g_per_kwh and nobody would notice
        if "zone" in self.model_fields_set and self.zones and self.zone not in self.zones:
            raise ValueError(
                f"`carbon.zone` {self.zone!r} is not one of the configured `carbon.zones` "
                f"({', '.join(sorted(self.zones))}), so this host's records would use the static grid_g_per_kwh; "
                "fix: correct the spelling, or add the zone under `zones`")
        return self


class BatchSettings(_Settings):
    """The Batch API's queue and scheduler (``router/batch/``)."""

    store_url: str | None = Field(None, description="sqlite:///PATH or postgresql://...; default: a SQLite file "
                                  "beside a SQLite ledger (else in the user data dir)")
    scheduler: bool = Field(True, description="run the scheduler in this process (off: only accept batches)")
    forecast: Literal["provider", "persistence"] = Field(
        "provider", description="provider: the zone source's forecast (for a file: perfect foresight); "
        "persistence: the same hour of the previous day")
    zone: str | None = Field(None, description="the zone whose forecast decides (default: carbon.zone)")
    concurrency: int = Field(2, ge=1, le=256, description="lines run at once by this process")
    lines_per_hour: float | None = Field(None, gt=0, strict=False, description="throughput to plan with "
                                         "(default: measured from the lines run so far)")
    lease_s: float = Field(300.0, ge=1, le=86_400, strict=False, description="a worker that stops renewing its "
                           "lease for this long (a crash) loses its lines to another worker")
    poll_s: float = Field(2.0, gt=0, le=3600, strict=False, description="how often the scheduler looks at the queue")
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1024, le=1 << 34)
    max_lines: int = Field(50_000, ge=1, le=10_000_000, description="lines per batch (OpenAI's limit is 50,000)")


class DashboardSettings(_Settings):
    """``GET /dashboard`` in ``router serve``: a live page over the ledger and its JSON API (router/dashboard/).
    With keys configured it needs a key marked ``admin: true``."""

    enabled: bool = Field(True, description="off: /dashboard and /dashboard/api/... are 404")
    refresh_s: float = Field(5.0, ge=1, le=3600, description="how often the page fetches new figures")
    recent: int = Field(50, ge=1, le=1000, description="decisions listed on the page")
    simulation: UserPath | None = Field(
        None, strict=False, description="a `router simulate --json` output file, or a folder of them (the newest "
        "is shown): its quality/energy frontier is drawn on the page")


class PromptSettings(_Settings):
    """Whether request prompts (and their answers) are kept beside the ledger records: only when the operator opts
    in. They are what ``router data from-ledger`` turns scored requests into outcomes with (docs/feedback.md)."""

    store: bool = Field(False, description="keep each answered request's messages, text and answer (default: never)")
    retention_days: float | None = Field(30.0, gt=0, strict=False, description="delete stored prompts older than "
                                         "this at start and hourly (None: keep them until `router ledger prompts "
                                         "delete`)")


class JudgeSettings(_Settings):
    """A model that scores a share of answers after they are sent (router/judge.py); its scores are stored as
    feedback with source ``judge:<model>`` and its own calls are ledger records."""

    model: str = Field(description="a general model card (tier small or large) with a backend, by name or alias")
    share: float = Field(0.05, ge=0, le=1, strict=False, description="share of answered requests it scores, at "
                         "random")
    against: Literal["rubric", "largest"] = Field(
        "rubric", description="rubric: the answer alone, against `rubric`; largest: the answer against the largest "
        "model's answer to the same request (one more call, recorded too)")
    rubric: str | None = Field(None, description="what a good answer is, in the judge's prompt (default: correct, "
                               "helpful and to the point)")
    max_tokens: int = Field(256, ge=1, le=8192, description="largest: the reference answer's length limit")
    # 8 fits the shipped base-model judges, which continue the prompt's closing "Score:" with a number and seldom
    # stop on their own: a judged request generates up to this many tokens, so a longer default costs energy
    # on each one. A hosted chat judge that reasons before its score line needs more (a reasoning model's hidden
    # reasoning counts too); an answer cut before its score stores nothing, and the judge logs a warning
    score_max_tokens: int = Field(8, ge=1, le=8192, description="the judge's own answer's length limit: 8 for a "
                                  "judge that answers with the score at once; 256 or more for a chat judge that "
                                  "reasons before its `Score: N` line")


class KeyEntry(_Settings):
    """One API key, held only as a SHA-256 digest (or read from an environment variable at start-up)."""

    name: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="printf %s \"$KEY\" | sha256sum")
    env: VariableName | None = Field(None, description="read the key from this environment variable at start-up")
    policy: str | None = Field(None, description="the policy for this key's requests (default: the config's)")
    admin: bool = Field(False, description="may open the dashboard (/dashboard) and score any response (POST "
                        "/v1/feedback), not only its own")
    lock_policy: bool = Field(False, description="hold this key's requests to its policy: a request naming another "
                              "(`router:<policy>` or a body `policy`) is refused with a 403; without it a key may "
                              "choose any policy")
    id: str | None = Field(None, pattern=r"^key-[0-9a-f]{16}$", description="the id the key goes by in the ledger, "
                           "metrics and policy files (default: from its sha256); a rotated key's entry keeps the "
                           "old key's, and with it its budgets and policy entries")

    @model_validator(mode="before")
    @classmethod
    def _no_clear_keys(cls, data: Any) -> Any:
        if isinstance(data, dict) and "key" in data:
            raise ValueError("a key in clear text is refused: store `sha256` of the key (or `env`), never the key")
        return data

    @model_validator(mode="after")
    def _one_source(self) -> KeyEntry:
        if (self.sha256 is None) == (self.env is None):
            raise ValueError("give exactly one of `sha256` (of the key) or `env` (a variable holding the key)")
        return self


_MOVED_FIELDS = {
    "extra": "`extra`'s settings are fields of their own now: move `extra.proxy` to `proxy`, `extra.keys` to `keys`, "
             "`extra.cooldown` to `cooldown` and `extra.ledger_journal` to `journal`",
    "backend_timeout_s": "replace `backend_timeout_s` with `deadline_s` (seconds a whole request may take, every "
                         "retry and fallback included; default 120), or bound one remote model's calls with "
                         "`timeout_s` under `backend:` on its card",
}
"""Settings of earlier releases that moved, and where to."""

_BLOCKS = ("cpu_power", "cooldown", "proxy", "keys", "journal", "carbon", "batch", "dashboard", "prompts", "judge")
"""Settings blocks: YAML only (no ``ROUTER_<FIELD>`` variable)."""


class RouterConfig(BaseModel):
    # NaN and infinity pass `gt`/`ge` checks unnoticed (NaN compares false); no setting needs either
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    models_dir: UserPath = Field(default_factory=lambda: embedded_dir("models"))
    policies_dir: UserPath = Field(default_factory=lambda: embedded_dir("policies"))
    default_policy: str = "balanced"
    ledger_url: str = Field(default_factory=default_ledger_url, description="sqlite:///PATH or redis://...")
    ledger_retention_days: float | None = Field(
        None, gt=0, description="prune ledger records older than this many days (None: keep everything)"
    )
    meter: str = Field("auto", description="auto | rapl | nvml | cpu-time")
    cpu_power: CpuPowerModel = Field(default_factory=CpuPowerModel)
    grid_g_per_kwh: float = Field(
        DEFAULT_GRID_G_PER_KWH,
        ge=0,
        description="grid carbon intensity; default ~475 gCO2e/kWh, the IEA global average (energy/carbon.py)",
    )
    max_prompt_chars: int = Field(1_000_000, gt=0, description="requests above this are rejected")
    max_messages: int = Field(
        10_000, gt=0, description="requests with more messages are rejected: each message is checked on the proxy's "
        "event loop (~4 us), and the 8 MiB body limit alone would let one request hold it for a second",
    )
    classifier_max_chars: int = Field(
        4_000, gt=0, description="the rules classifier (used when no trained classifier is found) reads at most "
        "this many characters of a request; the trained ONNX classifier reads the window it was trained on")
    deadline_s: float = Field(
        120.0, gt=0, le=86_400,
        description="a request ends with a timeout error (HTTP 504) after this many seconds, across every retry "
        "and fallback; a policy's `deadline_s` or the request's own `deadline_s` overrides it")
    cooldown: CooldownSettings = Field(default_factory=CooldownSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    keys: list[KeyEntry] = Field(default_factory=list, description="API keys (none: the proxy needs no key)")
    journal: JournalSettings = Field(default_factory=JournalSettings)
    carbon: CarbonSettings = Field(default_factory=CarbonSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    prompts: PromptSettings = Field(default_factory=PromptSettings)
    judge: JudgeSettings | None = Field(None, description="a judge model scoring a share of answers (default: none)")
    _file: Path | None = PrivateAttr(None)

    @property
    def file(self) -> Path | None:
        """The YAML file :meth:`load` read (None when built in code or from the environment alone): what a fault
        found later, against the cards, names."""
        return self._file

    def __init__(self, **settings: Any) -> None:
        """``RouterConfig(models_dir=..., ...)`` in code; a bad setting is a :class:`ConfigError` naming it, as from
        :meth:`load` (pydantic's own ``ValidationError`` is not one of the library's errors)."""
        try:
            super().__init__(**settings)
        except ValidationError as exc:  # model_validate comes here too (pydantic honours a custom __init__)
            where, from_env = _LOADING.get() or ("RouterConfig(...)", set())
            # pydantic's own error repeats every input, so one about `keys` would put a key in a logged traceback
            raise _config_error(exc, where, from_env) from (None if _about_secrets(exc) else exc)

    @field_validator("ledger_url", mode="before")
    @classmethod
    def _ledger_url_given(cls, value: Any) -> Any:
        """``ledger_url: ''`` (or a bare ``ledger_url:``, null) reads as "the default" to a person, but reached the
        ledger as the path ``.``, the working folder, and failed there as "sqlite:///. is a directory"."""
        if value is None or (isinstance(value, str) and not value.strip()):
            raise ValueError("no ledger URL; fix: omit ledger_url for the default ledger (ledger.sqlite3 in the "
                             "user data folder), or give a URL: sqlite:///PATH, redis://HOST:PORT/DB or "
                             "postgresql://USER@HOST/DB")
        return value

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, data: Any) -> Any:
        """A first-release config names settings this router reads elsewhere: all of them in one message, each
        with where it went, rather than pydantic's "Extra inputs are not permitted" one at a time."""
        moved = [name for name in _MOVED_FIELDS if isinstance(data, dict) and name in data]
        if moved:
            raise ValueError(f"{' and '.join(f'`{name}`' for name in moved)} "
                             f"{'is' if len(moved) == 1 else 'are'} no longer read; fix: "
                             + "; ".join(_MOVED_FIELDS[name] for name in moved))
        return data

    @classmethod
    def load(cls, file: str | Path | None = None, **overrides: Any) -> RouterConfig:
        data: dict[str, Any] = {}
        if file is not None:
            path = Path(file)
            loaded = read_yaml(path, "config file")[0] or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: a config file is a YAML mapping (models_dir, ledger_url, ...)")
            for key in loaded:  # a nested block's are pydantic's to check; a top-level one is a keyword here
                if not isinstance(key, str):
                    raise ConfigError(f"{path}: the setting {key!r} is not a name: a config file's settings are "
                                      "names such as models_dir or ledger_url (each is described in router/config.py)")
            _paths_relative_to(path.absolute().parent, loaded)
            data.update(loaded)
        from_env: set[str] = set()
        for field in cls.model_fields:
            env = os.environ.get(f"ROUTER_{field.upper()}")
            if env and field not in _BLOCKS:  # an empty variable is unset, not a value (the shell's `VAR=` clears)
                data[field] = env
                from_env.add(field)
        data.update({k: v for k, v in overrides.items() if v is not None})
        loading = _LOADING.set((str(file or "config"), from_env))
        try:
            config = cls.model_validate(data)
        finally:
            _LOADING.reset(loading)
        config._file = Path(file) if file is not None else None
        return config


def _paths_relative_to(folder: Path, data: dict[str, Any]) -> None:
    """Make the relative paths a config file names relative to ``folder`` (the file's), in place, so the file means
    the same from any working directory (as a card's paths are relative to the card). ``~/...`` and absolute paths
    are taken as written; a zone's ``path`` that names a shipped series (``CA_2022_hourly.csv``) and no file beside
    the config stays a name. Paths inside URLs (``ledger_url: sqlite:///...``) are not touched."""

    def resolve(block: Any, key: str, *, series: bool = False) -> None:
        value = block.get(key) if isinstance(block, dict) else None
        if not isinstance(value, str) or not value or value.startswith("~") or Path(value).is_absolute():
            return  # not a path (validation says so), or one the operator spelt out
        here = folder / value
        if series and not here.exists() and shipped_series(value) is not None:
            return
        block[key] = str(here)

    resolve(data, "models_dir")
    resolve(data, "policies_dir")
    resolve(data.get("journal"), "folder")
    resolve(data.get("dashboard"), "simulation")
    carbon = data.get("carbon")
    resolve(carbon, "clock_file")
    zones = carbon.get("zones") if isinstance(carbon, dict) else None
    for spec in zones.values() if isinstance(zones, dict) else ():
        resolve(spec, "path", series=True)


_LOADING: contextvars.ContextVar[tuple[str, set[str]] | None] = contextvars.ContextVar("router_config_loading",
                                                                                       default=None)
"""While :meth:`RouterConfig.load` validates: the file (or "config") and the fields set from the environment."""


def _shows_a_secret(error: Any) -> bool:
    """Whether ``error``'s input may be a key in clear text: anything in a `keys` entry (given as `key:`, or as
    `sha256:` by mistake) and a setting naming a key's variable (the key pasted in its place)."""
    return error["loc"][:1] == ("keys",) or (bool(error["loc"]) and error["loc"][-1] in _VARIABLE_FIELDS)


def _about_secrets(exc: ValidationError) -> bool:
    return any(_shows_a_secret(e) for e in exc.errors())


def _config_error(exc: ValidationError, where: str, from_env: set[str]) -> ConfigError:
    """Every bad field of a config, with where its value came from and what was given; the fix a check names
    itself (``...; fix: ...``), else the general one."""
    msgs, all_fixed = [], True
    for e in exc.errors():
        field = ".".join(map(str, e["loc"]))
        source = f" (from ${'ROUTER_' + field.upper()})" if field in from_env else ""
        # of an input that may be a key its type is shown, never its value, which would reach the terminal, CI logs
        # and the journal
        got = type(e.get("input")).__name__ if _shows_a_secret(e) else repr(e.get("input"))
        problem, _, fix = e["msg"].removeprefix("Value error, ").partition("; fix: ")
        if e["type"] == "extra_forbidden" and (meant := meant_field(RouterConfig, e["loc"])):
            fix = f"remove it or check the spelling: did you mean `{meant}`?"
        all_fixed = all_fixed and bool(fix)
        # a check of the whole file (no field) names its fields itself, and its input is the whole file
        shown = f"{got[:80]}{'...' if len(got) > 80 else ''}"
        said = f"field `{field}`{source}: {problem} (got {shown})" if field else problem
        msgs.append(said + (f"; fix: {fix}" if fix else ""))
    general = "" if all_fixed else "; fix: correct the value (each field is described in router/config.py)"
    return ConfigError(f"{where}: " + "; ".join(msgs) + general)
