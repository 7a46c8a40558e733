"""The batch scheduler: runs each batch's lines in the cleanest hours of its window, routed like any request.

Every ``poll_s`` seconds it looks at the active batches in the store. For one in progress it reads the forecast of
its zone for the hours left before the batch expires and asks :func:`router.carbon.schedule.plan` whether this
hour is among the cleanest that can hold the remaining lines (with a safety margin); if so it claims lines (a
lease in the store, so several workers share the queue) and runs them through the Router's public
``prepare``/``send``, which classify, decide under the batch owner's policy and budgets, call, meter and record
each line in the ledger as any request. The deadline wins over the carbon preference: when the hours left barely
hold the remaining lines it runs now whatever the grid. With a flat intensity every hour ties, so it starts at
once. A line that a budget refuses (or that fails otherwise) is reported failed with its status and reason; one
that meets an outage (a 503 that may pass: the ledger or the backend down) goes back in the queue and is tried
again, later each time, until the batch's window ends. A line's end that the batch store could not take (a store
blip) is kept and written at the next ticks, the line's lease renewed meanwhile, so it is not run a second time.

Throughput to plan with: ``batch.lines_per_hour``, else measured (lines this process ran per hour of wall time,
over its concurrency); 1,800 lines an hour per slot until the first lines have run.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from .._forks import renew_after_fork
from ..carbon.schedule import plan
from ..chat_body import chat_request, policy_names
from ..errors import InternalError, LedgerError, RouterError
from ..proxy.public import public_error
from .service import BatchService, new_id
from .store import Line

if TYPE_CHECKING:
    from ..config import BatchSettings

log = logging.getLogger("router.batch")

_observers: weakref.WeakKeyDictionary[Any, weakref.ref[Callable[..., None]]] = weakref.WeakKeyDictionary()


def observe_lines(router: Any, observer: Callable[..., None]) -> None:
    """Have ``observer(key, prepared, completion, error)`` called after each line that ``router``'s scheduler runs:
    the line's :class:`~router.keys.KeySpec` (or None), its ``PreparedRequest`` once decided (else None), and the
    completion dict or the :class:`RouterError` it ended in (an unexpected failure as :class:`InternalError`).
    ``router serve`` counts lines in its metrics so. Looked up per line, so it may be registered before the
    scheduler exists (a store to resume starts it with the app) and sees every line from then on; the router and
    the observer are held weakly, so whoever registers keeps the observer alive (the proxy: as long as its app)."""
    _observers[router] = weakref.WeakMethod(observer) if inspect.ismethod(observer) else weakref.ref(observer)


_EXPIRED = ("batch_expired", "This request could not be executed before the completion window expired.")
_CANCELLED = ("batch_cancelled", "This request was not executed because the batch was cancelled.")
_RETRY_MAX_S = 300.0
"""The longest wait before a line that met an outage is tried again (the waits double from ``poll_s``)."""


class BatchScheduler:
    def __init__(self, router: Any, service: BatchService, settings: BatchSettings) -> None:
        self.router = router
        self.service = service
        self.store = service.store
        self.settings = settings
        self.grid = router.grid
        self.zone = settings.zone or router.grid.host_zone
        self.policies = policy_names(router.config)
        self.owner = _new_owner()
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="batch-line")
        self._inflight: dict[tuple[str, int], Future[None]] = {}
        self._unwritten: dict[tuple[str, int], tuple[Line, str, dict[str, Any] | None, float | None]] = {}
        """Ends of lines the store could not take (an outage), written at the next ticks; still in ``_inflight``."""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seconds_per_line = 2.0  # an exponential average of wall seconds per line, once lines have run
        self._notes: dict[str, str] = {}
        self._start_in_child = False
        renew_after_fork(self)

    def _renew_after_fork(self) -> None:
        """The lines in flight at the fork, and their ends kept for the store, are the parent's: the child neither
        renews their leases nor writes them, and it claims lines under an owner of its own. The lock is new, as a
        parent's thread may have held it at the fork; so is the pool, whose copied workers do not exist here (work
        given to it would never run)."""
        self._start_in_child = self._thread is not None and not self._stop.is_set()  # started, and not closed
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.owner = _new_owner()
        self.pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="batch-line")
        self._inflight = {}
        self._unwritten = {}
        self._thread = None

    def _restart_after_fork(self) -> None:
        """A forked child (gunicorn --preload, multiprocessing's fork, Celery's prefork pool) has none of the
        parent's threads: without a scheduler thread and line workers of its own, the child's batches would never
        run unless another process ran them."""
        if self._start_in_child:
            self.start()

    # -- the loop --------------------------------------------------------------------------------------------
    def start(self) -> BatchScheduler:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="batch-scheduler", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except LedgerError as exc:  # the store says what is wrong; retried at the next tick
                if not self.store.unavailable:  # an outage the store logs once, not every poll
                    log.warning("batch scheduler: %s", exc.message)
            except Exception:  # the loop must go on
                log.exception("batch scheduler tick failed")
            self._stop.wait(self.settings.poll_s)

    def tick(self) -> None:
        """One look at the queue: write the lines' ends the store could not take before, renew the leases of the
        lines this worker runs, then advance every active batch."""
        self._write_kept()
        with self._lock:
            running = list(self._inflight)
        if running:
            self.store.renew(self.owner, self.settings.lease_s, running)
        for batch_id in self.store.active_batches():
            self._advance(batch_id)

    def lines_per_hour(self) -> float:
        if self.settings.lines_per_hour is not None:
            return self.settings.lines_per_hour
        return self.settings.concurrency * 3600.0 / max(self._seconds_per_line, 1e-3)

    def _advance(self, batch_id: str) -> None:
        got = self.store.get_batch(batch_id)
        if got is None:
            return
        doc, _, key_sha = got
        status = doc["status"]
        counts = self.store.counts(batch_id)
        pending, running = counts.get("pending", 0), counts.get("running", 0)
        now = self.grid.clock()
        if status == "in_progress" and now >= doc["expires_at"]:
            self.store.fail_pending(batch_id, lambda idx, cid: _never_ran(cid, *_EXPIRED))
            if running == 0 or self._all_leases_lapsed(batch_id, running, _EXPIRED):
                self._finalize(batch_id, doc, "expired")
            return
        if status == "cancelling":
            self.store.fail_pending(batch_id, lambda idx, cid: _never_ran(cid, *_CANCELLED))
            if running == 0 or self._all_leases_lapsed(batch_id, running, _CANCELLED):
                self._finalize(batch_id, doc, "cancelled")
            return
        if status == "finalizing":  # another worker finalizes it, or one stopped while it did: end it as it was
            self._finalize(batch_id, doc, _ending(doc))
            return
        if status == "in_progress" and pending == 0 and running == 0:
            self._finalize(batch_id, doc, "completed")
            return
        if status != "in_progress":
            return
        forecast = self.grid.forecast(self.zone, now, doc["expires_at"], method=self.settings.forecast, now=now)
        p = plan(forecast, now=now, deadline=doc["expires_at"], lines_left=pending + running,
                 lines_per_hour=self.lines_per_hour())
        note = p.reason
        if self._notes.get(batch_id) != note:  # written when it changes, not every tick
            self._notes[batch_id] = note
            self.store.update_batch(batch_id, {"carbon": {
                "plan": note, "forecast": self.settings.forecast, "zone": self.zone,
                "hours": [int(h) for h in p.hours[:48]], "expected_g_per_kwh": p.expected_g_per_kwh}},
                only_from=("in_progress",))
        if not p.run_now:
            return
        with self._lock:
            free = self.settings.concurrency - len(self._inflight)
        if free <= 0:
            return
        spec = self.router.keys.spec_for_digest(key_sha) if key_sha else None
        for line in self.store.claim(batch_id, self.owner, free, self.settings.lease_s):
            with self._lock:
                self._inflight[(batch_id, line.idx)] = self.pool.submit(self._run_line, line, spec)

    def _all_leases_lapsed(self, batch_id: str, running: int, reason: tuple[str, str]) -> bool:
        """An expired or cancelled batch with lines whose workers stopped (lines are claimed to run only while a
        batch is in progress, so no one else takes them): claim them (lease lapsed) and fail them with ``reason``,
        so the batch can end; a line still really running keeps its lease and is waited for."""
        lapsed = self.store.claim(batch_id, self.owner, running, self.settings.lease_s)
        for line in lapsed:
            self.store.finish(line, self.owner, "failed", _never_ran(line.custom_id, *reason))
        return len(lapsed) == running

    # -- one line --------------------------------------------------------------------------------------------
    def _run_line(self, line: Line, key: Any) -> None:
        started = time.perf_counter()
        ran_at = self.grid.clock()
        request_id = f"batch-{line.batch_id[6:]}-{line.idx}-{line.attempts}"
        prepared = completion = error = None
        not_before = None
        try:
            # a line is a chat request: the chat route's checks, so it is refused as that route refuses it
            messages, model, _, params = chat_request(dict(line.body), self.policies)
            prepared = self.router.prepare(messages, model=model, api_key=key, request_id=request_id, **params)
            completion = self.router.send(prepared, as_dict=True)
            response = {"status_code": 200, "request_id": request_id, "body": completion}
            state = "ok"
        except RouterError as exc:
            error = exc
            if exc.retryable if isinstance(exc, LedgerError) else exc.http_status == 503:  # an outage: wait it out
                state, wait = "pending", self._retry_wait(line.attempts)
                not_before = time.time() + wait
                log.warning("batch line %s/%s: %s; tried again in %.1f s", line.batch_id, line.custom_id,
                            exc.message, wait)
            else:  # the error file is shown to the batch's owner: what the proxy would answer, no URLs or paths
                response = {"status_code": exc.http_status, "request_id": request_id,
                            "body": public_error(exc, request_id)}
                state = "failed"
        except Exception as exc:  # a bug: the line fails with a 500, the scheduler goes on
            log.exception("batch line %s/%s failed", line.batch_id, line.custom_id)
            error = InternalError(f"internal error ({type(exc).__name__})")
            response = {"status_code": 500, "request_id": request_id, "body": public_error(error, request_id)}
            state = "failed"
        self._observe(key, prepared, completion, error)
        result = None
        if state != "pending":
            g = self.grid.intensity(self.zone, ran_at).g_per_kwh
            result = {"id": new_id("batch_req_"), "custom_id": line.custom_id, "response": response, "error": None,
                      "router": {"runs": line.attempts, "ran_at": ran_at, "grid_g_per_kwh": g, "zone": self.zone}}
            elapsed = time.perf_counter() - started  # the throughput of lines that ran, not of outages met
            self._seconds_per_line = 0.8 * self._seconds_per_line + 0.2 * elapsed
        self._write(line, state, result, not_before)

    def _retry_wait(self, attempts: int) -> float:
        return min(_RETRY_MAX_S, self.settings.poll_s * 2 ** min(attempts - 1, 20))

    def _write(self, line: Line, state: str, result: dict[str, Any] | None, not_before: float | None) -> None:
        """Store a line's end (its result, or back in the queue); while the store cannot take it the end is kept,
        the line stays in flight (its lease renewed) and :meth:`tick` tries again, so it does not run twice."""
        key = (line.batch_id, line.idx)
        try:
            if not self.store.finish(line, self.owner, state, result, not_before=not_before):
                log.warning("batch line %s/%s: another worker took it over; this result is dropped",
                            line.batch_id, line.custom_id)
        except LedgerError as exc:
            if exc.retryable:
                with self._lock:
                    if key not in self._unwritten:
                        log.warning("batch line %s/%s: the store could not take its result (%s); kept until it "
                                    "is back", line.batch_id, line.custom_id, exc.message)
                    self._unwritten[key] = (line, state, result, not_before)
                return
            self._forget(key)
            raise
        except BaseException:
            self._forget(key)
            raise
        self._forget(key)

    def _write_kept(self) -> None:
        with self._lock:
            kept = list(self._unwritten.values())
        for end in kept:
            self._write(*end)

    def _forget(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._unwritten.pop(key, None)
            self._inflight.pop(key, None)

    def _observe(self, key: Any, prepared: Any, completion: dict[str, Any] | None, error: RouterError | None) -> None:
        ref = _observers.get(self.router)
        observer = ref() if ref is not None else None
        if observer is None:
            return
        try:
            observer(key, prepared, completion, error)
        except Exception:  # counting must not lose the line's result
            log.exception("batch line observer failed")

    # -- the end of a batch ----------------------------------------------------------------------------------
    def _finalize(self, batch_id: str, doc: dict[str, Any], final: str) -> None:
        """Write the output and error files (ids fixed per batch, so a second worker finalizing too, or a restart,
        writes the same files once) and set the final status."""
        now = int(self.grid.clock())
        if doc["status"] != "finalizing":
            self.store.update_batch(batch_id, {"status": "finalizing", "finalizing_at": now},
                                    only_from=("in_progress", "cancelling"))
        ok: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for state, result in self.store.results(batch_id):
            (ok if state == "ok" else failed).append(result)
        got = self.store.get_batch(batch_id)
        key_hash = got[1] if got else None
        ids: dict[str, Any] = {"output_file_id": None, "error_file_id": None}
        for name, rows, field in (("output", ok, "output_file_id"), ("errors", failed, "error_file_id")):
            if not rows:
                continue
            content = "".join(_line_json(r) for r in rows).encode()
            file_id = f"file-{batch_id[6:]}-{name}"
            self.store.put_file({"id": file_id, "purpose": "batch_output", "filename": f"{batch_id}_{name}.jsonl",
                                 "bytes": len(content), "created_at": now}, content, key_hash)
            ids[field] = file_id
        stamp = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}[final]
        self.store.update_batch(batch_id, {**ids, "status": final, stamp: now}, only_from=("finalizing",))
        self._notes.pop(batch_id, None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.pool.shutdown(wait=True, cancel_futures=True)
        try:  # a last try; a line whose end the store still cannot take runs again once its lease lapses
            self._write_kept()
        except LedgerError as exc:
            log.warning("batch scheduler: %s", exc.message)


def _new_owner() -> str:
    """The name this process's scheduler holds its line leases under, unique across hosts and processes."""
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"




def _ending(doc: dict[str, Any]) -> str:
    """The status a finalizing batch ends in, from what set it finalizing: a cancel (``cancelling_at``), its
    window's end (the expired check above comes before completion), else all its lines done."""
    if doc.get("cancelling_at") is not None:
        return "cancelled"
    return "expired" if (doc.get("finalizing_at") or 0) >= doc["expires_at"] else "completed"


def _never_ran(custom_id: str, code: str, message: str) -> dict[str, Any]:
    return {"id": new_id("batch_req_"), "custom_id": custom_id, "response": None,
            "error": {"code": code, "message": message}}


def _line_json(result: dict[str, Any]) -> str:
    import json

    return json.dumps(result, separators=(",", ":")) + "\n"


__all__ = ["BatchScheduler", "observe_lines"]
