"""NvmlMeter's arithmetic without a GPU: ``RecordedNvml`` is a test double that replays recorded driver
answers (energy counter in mJ, board power in mW) through the same functions pynvml exposes, and injects the
driver's NotSupported error to exercise the power-sampling fallback. On a GPU machine the shared meter suite
runs against the real NVML (tests/test_meters.py)."""

from __future__ import annotations

import threading

import pytest
from forking import in_a_forked_child

from router.energy.nvml import NvmlMeter


class RecordedNvml:
    """Replays per-device counter readings (mJ) and power readings (mW), one per call, repeating the last."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy_mj: list[list[int]] | None, power_mw: list[list[int]] | None = None) -> None:
        self.energy = energy_mj
        self.power = power_mw
        self.calls = {"energy": [0] * self._n(), "power": [0] * self._n()}
        self.shutdown = False
        self.lock = threading.Lock()

    def _n(self) -> int:
        return len(self.energy if self.energy is not None else self.power or [])

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return self._n()

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"Recorded H100"

    def _next(self, kind: str, series: list[list[int]], h: int) -> int:
        with self.lock:
            i = min(self.calls[kind][h], len(series[h]) - 1)
            self.calls[kind][h] += 1
            return series[h][i]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        if self.energy is None:
            raise self.NVMLError("Not Supported")  # fault injected: a GPU older than Volta
        return self._next("energy", self.energy, h)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        assert self.power is not None
        return self._next("power", self.power, h)


def test_counter_mode_sums_devices() -> None:
    # per device: the probe at construction, then start, then stop
    nvml = RecordedNvml(energy_mj=[[1_000, 1_000, 4_500], [50_000, 50_000, 50_700]])
    meter = NvmlMeter(nvml=nvml)
    assert meter.mode == "counter"
    span = meter.start()
    r = span.stop()
    assert r.joules == pytest.approx(3.5 + 0.7)
    assert r.source == "measured:nvml"
    assert "gpu0 Recorded H100 (energy counter)" in r.detail and "whole device" in r.detail
    meter.close()
    assert nvml.shutdown


def test_sampling_fallback_integrates_power() -> None:
    nvml = RecordedNvml(energy_mj=None, power_mw=[[100_000]])  # a steady 100 W
    meter = NvmlMeter(nvml=nvml, sample_interval_s=0.01)
    assert meter.mode == "sampling"
    span = meter.start()
    threading.Event().wait(0.2)
    r = span.stop()
    seconds = float(r.detail.split(" over ")[1].split(" s")[0])
    assert r.joules == pytest.approx(100.0 * seconds, rel=0.1)
    assert "power sampled every 10 ms" in r.detail
    meter.close()


def test_no_gpu_is_an_oserror() -> None:
    with pytest.raises(OSError, match="no GPU"):
        NvmlMeter(nvml=RecordedNvml(energy_mj=[]))


def test_concurrent_spans_split_the_device() -> None:
    nvml = RecordedNvml(energy_mj=[[0, 0, 0, 10_000, 10_000]])  # probe, start a, start b, stop a, stop b
    meter = NvmlMeter(nvml=nvml)
    a, b = meter.start(), meter.start()
    ra, rb = a.stop(), b.stop()
    assert ra.joules == pytest.approx(5.0) and rb.joules == pytest.approx(5.0)
    assert "concurrent" in ra.detail


def test_a_forked_child_samples_power_with_a_thread_and_locks_of_its_own() -> None:
    """A meter made before the process forks (gunicorn --preload, Celery's prefork pool), forked while its sampler
    holds its lock (it does for every sample) and the parent has a request open: the child's requests neither
    wait forever for the parent's lock, nor share the device with the parent's request, and the child's power is
    sampled by a thread of its own at the interval the reading names (a fork copies no thread: the child read
    power only as its requests started and ended)."""
    nvml = RecordedNvml(energy_mj=None, power_mw=[[100_000]])  # a steady 100 W
    meter = NvmlMeter(nvml=nvml, sample_interval_s=0.01)
    assert meter._sampler is not None
    parents_request = meter.start()

    def in_the_child() -> None:  # a failed assert ends the child with exit code 1
        samples_before = nvml.calls["power"][0]
        span = meter.start()
        threading.Event().wait(0.3)
        reading = span.stop()
        assert "router-nvml-sampler" in [t.name for t in threading.enumerate()], "no sampler thread in the child"
        # 30 intervals of 10 ms; a child without its own thread read power twice (as the span started and ended)
        assert nvml.calls["power"][0] - samples_before >= 10, nvml.calls["power"][0] - samples_before
        assert "concurrent" not in reading.detail, reading.detail  # the parent's open request is not the child's
        seconds = float(reading.detail.split(" over ")[1].split(" s")[0])
        assert reading.joules == pytest.approx(100.0 * seconds, rel=0.1), reading

    held = [meter._sampler._lock, meter._share._lock]
    for lock in held:  # as the parent's sampler and a request of the parent's may hold them at the fork
        lock.acquire()

    def release() -> None:
        while held:
            held.pop().release()

    try:
        in_a_forked_child(in_the_child, "the child metered its request", timeout_s=15, meanwhile=release)
    finally:
        release()
    assert parents_request.stop().joules > 0  # the parent's own meter goes on as it was
    meter.close()


def test_closing_the_router_stops_its_meters_sampler_and_shuts_nvml_down(tmp_path) -> None:
    """A Router closed with its NVML meter (a GPU without an energy counter) left the meter's thread sampling
    power every 50 ms, and NVML open, for the life of the process: one more thread for every Router made and
    closed (tests, a server that reloads its config)."""
    from router import Router, RouterConfig

    nvml = RecordedNvml(energy_mj=None, power_mw=[[100_000]])
    meter = NvmlMeter(nvml=nvml, sample_interval_s=0.01)
    assert meter._sampler is not None
    sampler = meter._sampler._thread
    Router(RouterConfig.load(None, ledger_url=f"sqlite:///{tmp_path / 'l.sqlite3'}"), meter=meter).close()
    sampler.join(timeout=5)
    assert not sampler.is_alive(), "the meter's sampler thread outlived its Router"
    assert nvml.shutdown
