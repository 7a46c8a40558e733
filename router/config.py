"""Router configuration: where cards, policies and the ledger live, and the constants meters use.

``RouterConfig()`` is the embedded default: the model cards and policies shipped with the package, and a
SQLite ledger in the user's data directory. Every field can come from a YAML file (``RouterConfig.load``) or
from an environment variable ``ROUTER_<FIELD>`` (e.g. ``ROUTER_LEDGER_URL``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .yaml_files import read_yaml

_PACKAGE = Path(__file__).resolve().parent


def embedded_dir(name: str) -> Path:
    """``models`` or ``policies`` as shipped: inside the wheel, or at the repository root when editable."""
    packaged = _PACKAGE / "_embedded" / name
    if packaged.is_dir():
        return packaged
    return _PACKAGE.parent / name


def default_ledger_url() -> str:
    return f"sqlite:///{Path(user_data_dir('router', appauthor=False)) / 'ledger.sqlite3'}"


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
        "assumed: 15 W per busy core + 2 W idle share (per-core share of a 100-150 W server CPU package); "
        "calibrate the W-per-core constant against RAPL on your hardware (docs/energy.md)"
    )


class RouterConfig(BaseModel):
    # NaN and infinity pass `gt`/`ge` checks unnoticed (NaN compares false); no setting needs either
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    models_dir: Path = Field(default_factory=lambda: embedded_dir("models"))
    policies_dir: Path = Field(default_factory=lambda: embedded_dir("policies"))
    default_policy: str = "balanced"
    ledger_url: str = Field(default_factory=default_ledger_url, description="sqlite:///PATH or redis://...")
    ledger_retention_days: float | None = Field(
        None, gt=0, description="prune ledger records older than this many days (None: keep everything)"
    )
    meter: str = Field("auto", description="auto | rapl | nvml | cpu-time")
    cpu_power: CpuPowerModel = Field(default_factory=CpuPowerModel)
    grid_g_per_kwh: float = Field(
        475.0,
        ge=0,
        description="grid carbon intensity; default ~475 gCO2e/kWh, the IEA global average (energy/carbon.py)",
    )
    max_prompt_chars: int = Field(1_000_000, gt=0, description="requests above this are rejected")
    classifier_max_chars: int = Field(4_000, gt=0, description="the classifier reads at most this much")
    backend_timeout_s: float = Field(120.0, gt=0)
    extra: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def load(cls, file: str | Path | None = None, **overrides: Any) -> RouterConfig:
        data: dict[str, Any] = {}
        if file is not None:
            path = Path(file)
            loaded = read_yaml(path, "config file")[0] or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{path}: a config file is a YAML mapping (models_dir, ledger_url, ...)")
            data.update(loaded)
        from_env: set[str] = set()
        for field in cls.model_fields:
            env = os.environ.get(f"ROUTER_{field.upper()}")
            if env is not None and field not in ("cpu_power", "extra"):
                data[field] = env
                from_env.add(field)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            where = file or "config"
            msgs = []
            for e in exc.errors():
                field = ".".join(map(str, e["loc"]))
                source = f" (from ${'ROUTER_' + field.upper()})" if field in from_env else ""
                got = repr(e.get("input"))
                msgs.append(f"field `{field}`{source}: {e['msg']} (got {got[:80]}{'...' if len(got) > 80 else ''})")
            fix = "fix: correct the value (each field is described in router/config.py)"
            raise ConfigError(f"{where}: " + "; ".join(msgs) + f"; {fix}") from exc
