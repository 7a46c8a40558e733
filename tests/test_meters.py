"""Meters: RAPL on a powercap tree built from counter files (wrap-around included), the CPU-time model,
the token profile, and the shared meter suite for every meter this machine can run."""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conformance.meter_suite import METER_CHECKS, MeterHarness, busy

from router.cards import EnergyProfile
from router.config import CpuPowerModel
from router.energy import CpuTimeMeter, RaplMeter, SumMeter, auto_meter, estimate_from_profile
from router.energy.meters import FairShare, find_rapl_domains, rapl_delta_uj
from router.errors import ConfigError

MAX_RANGE = 262_143_328_850  # a typical package max_energy_range_uj (2^38 µJ scale)


class PowercapTree:
    """A /sys/class/powercap lookalike in a temp dir: real files, written the way the kernel exposes them."""

    def __init__(self, root: Path, start_uj: int = MAX_RANGE - 2_000_000) -> None:
        self.root = root
        self.lock = threading.Lock()
        self.files: dict[str, Path] = {}
        self._zone("intel-rapl:0", "package-0", start_uj, MAX_RANGE)
        self._zone("intel-rapl:0/intel-rapl:0:0", "core", 5, MAX_RANGE)  # inside package: must be skipped
        self._zone("intel-rapl:0/intel-rapl:0:2", "dram", 1_000, 65_532_610_987)
        self._zone("intel-rapl:1", "psys", 7, MAX_RANGE)  # overlaps package: must be skipped

    def _zone(self, rel: str, name: str, value: int, max_range: int) -> None:
        d = self.root / rel
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "energy_uj").write_text(f"{value:020d}\n")
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
        self.files[name] = d / "energy_uj"

    def advance(self, name: str, uj: int) -> None:
        """Add ``uj`` to a counter, wrapping at its max range as the hardware does. The file is rewritten in
        place with one fixed-width write, so (as with sysfs) a reader never sees it empty and the meter's
        open descriptor keeps reading the same file."""
        with self.lock:
            f = self.files[name]
            max_range = int((f.parent / "max_energy_range_uj").read_text())
            value = (int(f.read_text()) + uj) % (max_range + 1)
            fd = os.open(f, os.O_WRONLY)
            try:
                os.pwrite(fd, f"{value:020d}\n".encode(), 0)
            finally:
                os.close(fd)

    def value(self, name: str) -> int:
        return int(self.files[name].read_text())


@pytest.fixture
def powercap(tmp_path: Path) -> PowercapTree:
    return PowercapTree(tmp_path / "powercap")


def test_rapl_delta_plain_and_wrapped() -> None:
    assert rapl_delta_uj(100, 350, MAX_RANGE) == 250
    # counter at max-9 µJ, wraps, reads 20: 9 µJ to reach max, 1 to roll over to 0, then 20
    assert rapl_delta_uj(MAX_RANGE - 9, 20, MAX_RANGE) == 30


def test_finds_package_and_dram_only(powercap: PowercapTree) -> None:
    names = [d.name for d in find_rapl_domains(powercap.root)]
    assert names == ["intel-rapl:0:package-0", "intel-rapl:0:2:dram"]


def test_a_package_read_through_mmio_too_is_counted_once(powercap: PowercapTree) -> None:
    """Intel CPUs since Tiger Lake expose their package through MMIO (``intel-rapl-mmio:0``, name ``package-0``)
    as well as through the MSRs (``intel-rapl:0``): both count the same joules, and summing them measured every
    call at twice its energy."""
    mmio = powercap.root / "intel-rapl-mmio:0"
    mmio.mkdir()
    (mmio / "name").write_text("package-0\n")
    (mmio / "energy_uj").write_text(f"{1_000:020d}\n")
    (mmio / "max_energy_range_uj").write_text(f"{MAX_RANGE}\n")
    assert [d.name for d in find_rapl_domains(powercap.root)] == ["intel-rapl:0:package-0", "intel-rapl:0:2:dram"]
    meter = RaplMeter(powercap.root, attribute_by_cpu_share=False)
    span = meter.start()
    powercap.advance("package-0", 5_000_000)
    (mmio / "energy_uj").write_text(f"{1_000 + 5_000_000:020d}\n")  # the same package's 5 J, read through MMIO
    assert span.stop().joules == pytest.approx(5.0, abs=2e-6)
    meter.close()


def test_unparsable_domain_is_skipped(powercap: PowercapTree) -> None:
    powercap.files["dram"].write_text("not a number\n")
    assert [d.name for d in find_rapl_domains(powercap.root)] == ["intel-rapl:0:package-0"]


def test_no_rapl_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="no readable RAPL"):
        RaplMeter(tmp_path / "absent")


def test_whole_package_reading_across_a_wrap(powercap: PowercapTree) -> None:
    meter = RaplMeter(powercap.root, attribute_by_cpu_share=False)
    span = meter.start()
    powercap.advance("package-0", 5_000_000)  # crosses the wrap: starts 2 J below max
    powercap.advance("dram", 1_250_000)
    r = span.stop()
    assert powercap.value("package-0") < 5_000_000, "the package counter really wrapped"
    assert r.joules == pytest.approx(6.25, abs=2e-6)
    assert r.source == "measured:rapl"
    assert "package-0 5.000 J" in r.detail and "dram 1.250 J" in r.detail and "whole package" in r.detail
    meter.close()


def test_cpu_share_attribution_is_stated_and_applied(powercap: PowercapTree) -> None:
    """The package's joules are charged by the process's CPU-time share of the machine's cores, and the reading
    says so. (The process is pytest's: other tests' threads may also spend CPU during the span, so the share is
    checked against what the reading states, and the busy thread's own CPU time as a floor.)"""
    meter = RaplMeter(powercap.root, cpus=4)
    span = meter.start()
    own = time.thread_time()
    busy(5)
    own = time.thread_time() - own
    powercap.advance("package-0", 8_000_000)
    r = span.stop()
    share = float(re.search(r"CPU-time share ([0-9.]+)", r.detail).group(1))
    cpu, cpus, wall = re.search(r"\(([0-9.]+) CPU-s of (\d+) CPUs x ([0-9.]+) s", r.detail).groups()
    assert int(cpus) == 4
    assert float(cpu) >= own - 1e-3, "the busy thread's CPU time is in the process's"
    assert share == pytest.approx(min(1.0, float(cpu) / (4 * float(wall))), abs=2e-3)
    assert 0.0 < share <= 1.0
    assert r.joules == pytest.approx(8.0 * share, rel=2e-3)
    meter.close()


def test_fair_share_splits_between_open_spans() -> None:
    fs = FairShare(1)
    a, _ = fs.enter((0.0,))
    b, n = fs.enter((10.0,))  # a alone for 10
    assert n == 2
    (share_a,), _ = fs.leave((30.0,), a)  # both for 20: 10 each
    (share_b,), n_left = fs.leave((35.0,), b)  # b alone for 5
    assert (share_a, share_b, n_left) == (20.0, 15.0, 1)
    assert fs.active == 0


def test_fair_share_reads_counters_under_its_lock() -> None:
    """Counters read outside the lock can arrive older than one already applied: a negative share."""
    fs = FairShare(1)
    seen: list[bool] = []

    def read() -> tuple[float]:
        seen.append(fs._lock.locked())
        return (float(len(seen)),)

    mark, _ = fs.enter(read)
    (share,), _ = fs.leave(read, mark)
    assert seen == [True, True]
    assert share == 1.0


def test_cpu_time_model_uses_its_constants() -> None:
    model = CpuPowerModel(watts_per_busy_core=10.0, idle_w=1.0)
    meter = CpuTimeMeter(model)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    span = meter.start()
    busy(10)
    r = span.stop()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert r.joules == pytest.approx(10.0 * cpu + 1.0 * wall, rel=0.05)
    assert r.source == "estimated:cpu-time"
    assert "10.0 W/core" in r.detail and "1.0 W idle" in r.detail


def test_token_profile_estimate() -> None:
    profile = EnergyProfile(
        per_call_j=2.0, per_input_token_j=0.01, per_output_token_j=0.3, source="published", citation="x"
    )
    r = estimate_from_profile(profile, 100, 20)
    assert r.joules == pytest.approx(2.0 + 1.0 + 6.0)
    assert r.source == "estimated:token-profile"
    assert "published" in r.detail


def test_token_profile_estimate_follows_a_new_profile() -> None:
    # a profile's figures are read once per profile object: a card made anew (another profile) is read anew
    profile = EnergyProfile(per_call_j=2.0, per_input_token_j=0.01, per_output_token_j=0.3, source="published",
                            citation="x")
    first = estimate_from_profile(profile, 100, 20)
    again = estimate_from_profile(profile, 100, 20)
    assert (again.joules, again.detail) == (first.joules, first.detail)
    changed = profile.model_copy(update={"per_call_j": 5.0, "per_output_token_j": 0.5, "source": "measured"})
    r = estimate_from_profile(changed, 100, 20)
    assert r.joules == changed.joules(100, 20) == pytest.approx(5.0 + 1.0 + 10.0)
    assert r.detail == ("card profile (measured): 5.0 J/call + 0.01 J/in-token x 100 + 0.5 J/out-token x 20")
    assert estimate_from_profile(profile, 100, 20).joules == profile.joules(100, 20)


def test_sum_meter_is_estimated_if_any_part_is(powercap: PowercapTree) -> None:
    meter = SumMeter([RaplMeter(powercap.root, attribute_by_cpu_share=False), CpuTimeMeter()])
    span = meter.start()
    powercap.advance("package-0", 1_000_000)
    busy(1)
    r = span.stop()
    assert meter.kind == "estimated" and r.source == "estimated:rapl+cpu-time"
    assert r.joules > 1.0
    meter.close()


def test_auto_meter_names() -> None:
    assert isinstance(auto_meter("cpu-time"), CpuTimeMeter)
    with pytest.raises(ConfigError, match="unknown meter"):
        auto_meter("watts-from-vibes")


def test_a_meter_named_in_the_config_that_cannot_be_read_here_is_a_config_error() -> None:
    """``meter: rapl`` (or ``nvml``) where the counters are not readable: a ConfigError naming the field, the reason
    and the fix, from ``Router()`` as from ``auto_meter``, not an OSError."""
    import tempfile

    from router import Router, RouterConfig

    try:
        RaplMeter().close()
        pytest.skip("RAPL is readable on this machine")
    except OSError:
        pass
    with pytest.raises(ConfigError, match=r"field `meter`: rapl: no readable RAPL.*fix: use `meter: auto`"):
        auto_meter("rapl")
    with pytest.raises(ConfigError, match=r"field `meter`: rapl"):
        Router(RouterConfig.load(None, meter="rapl", ledger_url=f"sqlite:///{tempfile.mkdtemp()}/l.sqlite3"))


# -- the shared meter suite ---------------------------------------------------------------------------------


def _cpu_harness(tmp_path: Path) -> MeterHarness:
    return MeterHarness(make=CpuTimeMeter, work=busy, name="cpu-time")


def _rapl_harness(tmp_path: Path) -> MeterHarness:
    tree = PowercapTree(tmp_path / "powercap")

    def work(units: int) -> None:
        busy(units)
        tree.advance("package-0", 3_000_000 * units)  # ~3 J per unit, wrapping on the way
        tree.advance("dram", 400_000 * units)

    return MeterHarness(make=lambda: RaplMeter(tree.root), work=work, name="rapl")


def _nvml_harness(tmp_path: Path) -> MeterHarness:
    from router.energy.nvml import NvmlMeter

    try:
        NvmlMeter().close()
    except OSError as exc:
        pytest.skip(f"no NVIDIA GPU readable through NVML here ({exc})")
    return MeterHarness(make=NvmlMeter, work=lambda units: time.sleep(0.05 * units) or busy(units), name="nvml")


HARNESSES: dict[str, Callable[[Path], MeterHarness]] = {
    "cpu-time": _cpu_harness,
    "rapl-powercap-files": _rapl_harness,
    "nvml-gpu": _nvml_harness,
}


@pytest.mark.parametrize("check", METER_CHECKS, ids=[c.__name__.removeprefix("check_") for c in METER_CHECKS])
@pytest.mark.parametrize("harness", list(HARNESSES), ids=list(HARNESSES))
def test_meter_conforms(harness: str, check: Callable[[MeterHarness], None], tmp_path: Path) -> None:
    check(HARNESSES[harness](tmp_path))


def test_the_command_line_prints_a_config_fault_as_one_line(tmp_path: Path) -> None:
    """``router energy meters`` with ``meter: rapl`` where RAPL is not readable: the ConfigError as one line on
    stderr and exit status 2, no traceback (every command, as ``router ledger`` already did)."""
    import subprocess
    import sys

    try:
        RaplMeter().close()
        pytest.skip("RAPL is readable on this machine")
    except OSError:
        pass
    config = tmp_path / "router.yaml"
    config.write_text("meter: rapl\n")
    done = subprocess.run([sys.executable, "-m", "router", "energy", "meters", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2, done.stderr
    assert "error: field `meter`: rapl: no readable RAPL" in done.stderr and "Traceback" not in done.stderr
