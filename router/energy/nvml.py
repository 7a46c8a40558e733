"""NVIDIA GPU energy through NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``).

Two ways to read a GPU, chosen per device:

* the driver's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver
  loaded; Volta and newer): a request's energy is the counter's difference, measured;
* where that is not supported, the board power (``nvmlDeviceGetPowerUsage``, milliwatts) sampled by a
  background thread and integrated with the trapezoid rule; still measured, at the sampling resolution.

NVML counts the whole device: when several requests of this process run at once the device's energy is split
equally among them (:class:`~router.energy.share.FairShare`); other processes on the same GPU are not
separated out, and the reading's detail says so.

A forked child (gunicorn --preload, Celery's prefork pool) of a process holding a meter renews it
(:func:`~router._forks.renew_after_fork`): the sampling thread is not copied by a fork, so the child starts its
own (without it, power would be read only as requests start and end, not at the interval the reading claims),
and gets a lock of its own (the parent's sampler holds one for every sample: a fork then would leave it held in
the child forever, and every request there waiting for it); the share of the device renews itself
(:class:`~router.energy.share.FairShare`: a lock of its own, and no span of the parent's requests open).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from .._forks import renew_after_fork
from .base import EnergyReading, Meter, MeterSpan
from .share import FairShare


def _load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise OSError("NVML meter needs the `nvidia-ml-py` package (import pynvml)") from exc
    return pynvml


class _PowerSampler:
    """Integrates the board power of some devices in a daemon thread (and on each span edge)."""

    def __init__(self, nvml: Any, handles: list[Any], interval_s: float) -> None:
        self.nvml = nvml
        self.handles = handles
        self.interval_s = interval_s
        self.joules = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_t = time.perf_counter()
        self._last_w = self._power_w()
        self.start_thread()

    def start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name="router-nvml-sampler", daemon=True)
        self._thread.start()

    def renew_after_fork(self) -> None:
        """In a forked child, before any of its threads runs: a lock of its own (the parent's thread may have held
        this one at the fork); :meth:`start_thread` then gives it a sampling thread (a fork copies none)."""
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _power_w(self) -> float:
        return sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.handles) / 1000.0

    def sample(self) -> None:
        """Take one sample now (the thread calls this; spans call it too so short requests see power)."""
        with self._lock:
            t = time.perf_counter()
            w = self._power_w()
            self.joules += (w + self._last_w) / 2.0 * (t - self._last_t)
            self._last_t, self._last_w = t, w

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a transient NVML error must not kill the sampler
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class _NvmlSpan(MeterSpan):
    __slots__ = ("meter", "mark", "n0", "done", "t0")

    def __init__(self, meter: NvmlMeter) -> None:
        self.meter = meter
        self.done = True
        self.t0 = time.perf_counter()
        self.mark, self.n0 = meter._share.enter(meter._counters)
        self.done = False

    def stop(self) -> EnergyReading:
        if self.done:
            raise RuntimeError("this meter span was already stopped")
        self.done = True
        meter = self.meter
        (joules,), n1 = meter._share.leave(meter._counters, self.mark)
        concurrent = max(self.n0, n1)
        shared = f"; device energy split with up to {concurrent - 1} concurrent requests" if concurrent > 1 else ""
        return EnergyReading(
            max(0.0, joules),
            "measured",
            "nvml",
            f"NVML {meter.describe()} over {time.perf_counter() - self.t0:.4f} s; whole device, other "
            f"processes not separated{shared}",
        )

    def __del__(self) -> None:
        if not getattr(self, "done", True):
            self.done = True
            self.meter._share.leave(self.meter._counters, self.mark)


class NvmlMeter(Meter):
    """Energy of NVIDIA GPUs, measured by NVML. Raises ``OSError`` where NVML or a GPU is missing."""

    name = "nvml"
    kind = "measured"

    def __init__(
        self, devices: list[int] | None = None, *, nvml: Any | None = None, sample_interval_s: float = 0.05
    ) -> None:
        self.nvml = nvml if nvml is not None else _load_pynvml()
        try:
            self.nvml.nvmlInit()
            count = self.nvml.nvmlDeviceGetCount()
        except self.nvml.NVMLError as exc:
            raise OSError(f"NVML is not usable here: {exc}") from exc
        if count == 0:
            self.nvml.nvmlShutdown()
            raise OSError("NVML found no GPU")
        indices = devices if devices is not None else list(range(count))
        self.names: list[str] = []
        self._counter_handles: list[Any] = []
        sampled: list[Any] = []
        for i in indices:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(i)
            name = self.nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            try:
                self.nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._counter_handles.append(handle)
                self.names.append(f"gpu{i} {name} (energy counter)")
            except self.nvml.NVMLError:
                sampled.append(handle)
                self.names.append(f"gpu{i} {name} (power sampled every {sample_interval_s * 1000:.0f} ms)")
        self._sampler = _PowerSampler(self.nvml, sampled, sample_interval_s) if sampled else None
        self._share = FairShare(1)
        renew_after_fork(self)

    def _renew_after_fork(self) -> None:
        """The sampler's lock is the child's own (its share renews itself)."""
        if self._sampler is not None:  # None once closed: a closed meter stays closed
            self._sampler.renew_after_fork()

    def _restart_after_fork(self) -> None:
        if self._sampler is not None:
            self._sampler.start_thread()

    def describe(self) -> str:
        return ", ".join(self.names)

    @property
    def mode(self) -> str:
        """``counter``, ``sampling`` or ``mixed``: how the devices are read."""
        if self._sampler is None:
            return "counter"
        return "sampling" if not self._counter_handles else "mixed"

    def _counters(self) -> tuple[float]:
        """The counter FairShare splits, read under its lock."""
        return (self._total_j(),)

    def _total_j(self) -> float:
        total = 0.0
        for h in self._counter_handles:
            total += self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1000.0
        if self._sampler is not None:
            self._sampler.sample()
            total += self._sampler.joules
        return total

    def start(self) -> MeterSpan:
        return _NvmlSpan(self)

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None
        with contextlib.suppress(self.nvml.NVMLError):
            self.nvml.nvmlShutdown()
