"""Concrete meters: Linux RAPL (measured), the CPU-time model (estimated) and the token profile (estimated).

Every meter here is cheap enough to wrap each request (``benchmarks/bench_meters.py`` prints the cost of one
``start()`` + ``stop()``; the budget is 50 µs): counters are read through file descriptors kept open and
``os.pread``, and the work of attributing a shared counter to concurrent requests is O(1) per event. That work
(:class:`~router.energy.share.FairShare`) renews itself in a forked child; the RAPL descriptors need no renewal
(``os.pread`` moves no shared file offset).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..cards import EnergyProfile
from ..config import CpuPowerModel
from ..errors import ConfigError
from .base import EnergyReading, Meter, MeterSpan
from .share import FairShare

RAPL_ROOT = Path("/sys/class/powercap")


def _cpu_counters() -> tuple[float]:
    return (time.process_time(),)


def _cpu_wall_counters() -> tuple[float, float]:
    return (time.process_time(), time.perf_counter())


# -- RAPL ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplDomain:
    name: str
    energy_file: Path
    max_range_uj: int


def find_rapl_domains(root: Path = RAPL_ROOT) -> list[RaplDomain]:
    """Readable top-level RAPL domains (``package-N``, ``dram``) under ``root``; empty where there are none.

    ``core``/``uncore`` are inside ``package`` and ``psys`` overlaps it, so they are skipped: summing them too
    would count the same joules twice. So is a domain of ``intel-rapl-mmio`` (Intel's processor_thermal driver,
    on most Intel CPUs since Tiger Lake) that ``intel-rapl`` (the MSR interface) also has: the two read the same
    package. Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is readable by root only unless an administrator
    relaxes it; an unreadable domain is skipped, not an error."""
    domains: list[RaplDomain] = []
    if not root.is_dir():
        return domains
    msr_names: set[str] = set()
    # the MSR zones first, so that an MMIO zone's name can be checked against theirs
    for zone in sorted(root.glob("intel-rapl*"), key=lambda z: (z.name.startswith("intel-rapl-mmio"), z.name)):
        # top-level packages are intel-rapl:N; their subzones (intel-rapl:N:M) hold core/uncore/dram
        for candidate in [zone, *sorted(zone.glob("intel-rapl*:*"))]:
            energy = candidate / "energy_uj"
            name_file = candidate / "name"
            if not energy.exists() or not name_file.exists():
                continue
            try:
                name = name_file.read_text().strip()
            except OSError:
                continue
            if not (name.startswith("package") or name == "dram"):
                continue
            mmio = candidate.name.startswith("intel-rapl-mmio")
            if mmio and name in msr_names:
                continue
            try:
                int(energy.read_text())
                max_range = int((candidate / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                continue
            if all(d.energy_file.resolve() != energy.resolve() for d in domains):
                domains.append(RaplDomain(f"{candidate.name}:{name}", energy, max_range))
                if not mmio:  # readable: an MMIO zone of this name would read the same joules
                    msr_names.add(name)
    return domains


def rapl_delta_uj(before: int, after: int, max_range_uj: int) -> int:
    """Counter difference with wrap-around: the counter runs 0..``max_range_uj`` and then restarts at 0.

    One wrap at most can be seen between two reads; at 200 W a typical 2^38 µJ range lasts ~20 minutes, far
    longer than a request."""
    return after - before if after >= before else (max_range_uj - before) + after + 1


class _RaplSpan(MeterSpan):
    __slots__ = ("meter", "t0", "mark", "before", "done", "n0")

    def __init__(self, meter: RaplMeter) -> None:
        self.meter = meter
        self.done = True  # until the span is really open, __del__ has nothing to undo
        self.before = meter._read()
        self.t0 = time.perf_counter()
        self.mark, self.n0 = meter._share.enter(_cpu_counters)
        self.done = False

    def stop(self) -> EnergyReading:
        if self.done:
            raise RuntimeError("this meter span was already stopped")
        self.done = True
        meter = self.meter
        (cpu,), n1 = meter._share.leave(_cpu_counters, self.mark)
        concurrent = max(self.n0, n1)
        wall = max(time.perf_counter() - self.t0, 1e-9)
        after = meter._read()
        per_domain = [
            rapl_delta_uj(b, a, d.max_range_uj) / 1e6 for b, a, d in zip(self.before, after, meter.domains, strict=True)
        ]
        joules = sum(per_domain)
        parts = ", ".join(f"{d.name} {j:.3f} J" for d, j in zip(meter.domains, per_domain, strict=True))
        if meter.attribute_by_cpu_share:
            # the package counts every process: charge this call its CPU-time share of the machine's cores
            share = min(1.0, cpu / (wall * meter.cpus))
            joules *= share
            how = f"charged by CPU-time share {share:.4f} ({cpu:.4f} CPU-s of {meter.cpus} CPUs x {wall:.4f} s" + (
                f"; process CPU split with up to {concurrent - 1} concurrent requests)" if concurrent > 1 else ")"
            )
        else:
            how = "whole package, not attributed"
        return EnergyReading(joules, "measured", "rapl", f"RAPL {parts}; {how}")

    def __del__(self) -> None:  # an abandoned span must not keep counting as open in the fair share
        if not getattr(self, "done", True):
            self.done = True
            self.meter._share.leave(_cpu_counters, self.mark)


class RaplMeter(Meter):
    """Linux RAPL package (+ DRAM) counters, measured.

    The counters cover the whole socket, so by default a call is charged the fraction of the machine's CPU
    capacity its process used over the call (process CPU seconds / (wall seconds × CPUs)); when several
    requests run at once in this process, the process's CPU time is split equally among them. The reading's
    detail says which attribution was used."""

    name = "rapl"
    kind = "measured"

    def __init__(self, root: Path = RAPL_ROOT, attribute_by_cpu_share: bool = True, cpus: int | None = None) -> None:
        self.root = Path(root)
        self.domains = find_rapl_domains(self.root)
        if not self.domains:
            raise OSError(f"no readable RAPL domains under {self.root}")
        self.attribute_by_cpu_share = attribute_by_cpu_share
        self.cpus = cpus or _usable_cpus()
        self._fds = [os.open(d.energy_file, os.O_RDONLY) for d in self.domains]
        self._share = FairShare(1)

    def _read(self) -> list[int]:
        return [int(os.pread(fd, 32, 0)) for fd in self._fds]

    def start(self) -> MeterSpan:
        return _RaplSpan(self)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


def _usable_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS says), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# -- CPU-time model ------------------------------------------------------------------------------------------


class _CpuSpan(MeterSpan):
    __slots__ = ("meter", "mark", "done", "n0")

    def __init__(self, meter: CpuTimeMeter) -> None:
        self.meter = meter
        self.done = True
        self.mark, self.n0 = meter._share.enter(_cpu_wall_counters)
        self.done = False

    def stop(self) -> EnergyReading:
        if self.done:
            raise RuntimeError("this meter span was already stopped")
        self.done = True
        (cpu_s, wall_s), n1 = self.meter._share.leave(_cpu_wall_counters, self.mark)
        concurrent = max(self.n0, n1)
        model = self.meter.model
        joules = cpu_s * model.watts_per_busy_core + wall_s * model.idle_w
        shared = (
            f"; process CPU and idle share split with up to {concurrent - 1} concurrent requests"
            if concurrent > 1
            else ""
        )
        return EnergyReading(
            joules,
            "estimated",
            "cpu-time",
            f"{cpu_s:.4f} CPU-s x {model.watts_per_busy_core} W/core + {wall_s:.4f} s x {model.idle_w} W idle" + shared,
        )

    def __del__(self) -> None:
        if not getattr(self, "done", True):
            self.done = True
            self.meter._share.leave(_cpu_wall_counters, self.mark)


class CpuTimeMeter(Meter):
    """Estimate from process CPU seconds × watts per busy core, plus an idle share over the wall time.

    Process CPU time counts every thread (llama.cpp's workers included). When several requests run at once in
    one process, the CPU time and the idle share are split equally among the open requests (see
    :class:`FairShare`), so the per-request figures add up to the process total instead of counting it
    several times. The constants and their source live in :class:`router.config.CpuPowerModel`."""

    name = "cpu-time"
    kind = "estimated"

    def __init__(self, model: CpuPowerModel | None = None) -> None:
        self.model = model or CpuPowerModel()
        self._share = FairShare(2)

    def start(self) -> MeterSpan:
        return _CpuSpan(self)


# -- combining meters ----------------------------------------------------------------------------------------


class _SumSpan(MeterSpan):
    __slots__ = ("spans",)

    def __init__(self, spans: list[MeterSpan]) -> None:
        self.spans = spans

    def stop(self) -> EnergyReading:
        readings = [s.stop() for s in self.spans]
        total = readings[0]
        for r in readings[1:]:
            total = total + r
        return total


class SumMeter(Meter):
    """Several meters that see disjoint hardware (a GPU and its host CPU) read as one: joules add up, the
    method reads ``nvml+rapl``, and the sum is ``measured`` only if every part is."""

    def __init__(self, meters: list[Meter]) -> None:
        if not meters:
            raise ValueError("SumMeter needs at least one meter")
        self.meters = meters
        self.name = "+".join(m.name for m in meters)
        self.kind = "measured" if all(m.kind == "measured" for m in meters) else "estimated"

    def start(self) -> MeterSpan:
        return _SumSpan([m.start() for m in self.meters])

    def close(self) -> None:
        for m in self.meters:
            m.close()


# -- token profile -------------------------------------------------------------------------------------------


def estimate_from_profile(profile: EnergyProfile, input_tokens: int, output_tokens: int) -> EnergyReading:
    """Remote models: joules from the card's per-token profile (and the profile's own source)."""
    terms = _profile_terms(profile)
    return EnergyReading(
        # EnergyProfile.joules, on the figures read once
        terms.per_call_j + terms.per_input_token_j * input_tokens + terms.per_output_token_j * output_tokens,
        "estimated",
        "token-profile",
        f"{terms.head}{terms.per_in} x {input_tokens} + {terms.per_out} x {output_tokens}",
    )


@dataclass(frozen=True, slots=True)
class _ProfileTerms:
    """What an estimate reads of one profile: its three figures, and the constant parts of the reading's detail."""

    profile: EnergyProfile
    """Held so that the profile's id is not reused by another object while its entry lives."""
    per_call_j: float
    per_input_token_j: float
    per_output_token_j: float
    head: str
    per_in: str
    per_out: str


_PROFILE_TERMS: dict[int, _ProfileTerms] = {}
"""Terms by profile (by identity; profiles, as cards, are not edited once loaded, and a card made anew has a new
profile object). Every remote answer is estimated: reading a card's fields (pydantic attributes, several times
slower than a plain object's) and formatting its floats were most of an estimate's cost."""


def _profile_terms(profile: EnergyProfile) -> _ProfileTerms:
    found = _PROFILE_TERMS.get(id(profile))
    if found is None:
        if len(_PROFILE_TERMS) >= 256:  # one entry per card; many Routers (tests) must not grow it
            _PROFILE_TERMS.clear()
        found = _PROFILE_TERMS[id(profile)] = _ProfileTerms(
            profile, profile.per_call_j, profile.per_input_token_j, profile.per_output_token_j,
            f"card profile ({profile.source}): {profile.per_call_j} J/call + ",
            f"{profile.per_input_token_j} J/in-token", f"{profile.per_output_token_j} J/out-token")
    return found


def host_meter(choice: str = "auto", cpu_model: CpuPowerModel | None = None) -> Meter:
    """The CPU-side meter: RAPL when readable (or demanded), else the CPU-time model."""
    if choice in ("auto", "rapl"):
        try:
            return RaplMeter()
        except OSError:
            if choice == "rapl":
                raise
    return CpuTimeMeter(cpu_model)


def auto_meter(choice: str = "auto", cpu_model: CpuPowerModel | None = None) -> Meter:
    """The meter named by ``choice``: ``auto`` (RAPL when readable, else the CPU-time model), ``rapl``,
    ``cpu-time``, or ``nvml`` (the GPU's energy plus the host meter, since a GPU model still uses the CPU).

    ``auto`` does not add NVML on its own: a GPU's idle draw (tens of watts) would be charged to requests that
    run on the CPU. Choose ``nvml`` when the local models run on the GPU."""
    if choice not in ("auto", "rapl", "cpu-time", "nvml"):
        raise ConfigError(f"unknown meter {choice!r}: choose auto, rapl, nvml or cpu-time")
    try:
        if choice == "nvml":
            from .nvml import NvmlMeter

            return SumMeter([NvmlMeter(), host_meter("auto", cpu_model)])
        return host_meter(choice, cpu_model)
    except OSError as exc:  # the counters named are not readable on this machine
        raise ConfigError.at(None, "meter", f"{choice}: {exc}",
                             "use `meter: auto` (RAPL where readable, else the CPU-time model) or `cpu-time`, or "
                             "give this process read access to the counters") from exc
