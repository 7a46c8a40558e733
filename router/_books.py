"""The bookkeeping of one request's calls: the joules each was expected to take and what a budget holds for it,
settling the holds to what was measured, and the ledger record of every call."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ._output import Call
from ._request import PreparedRequest
from .backends import Backend, Generation
from .backends.base import estimated_tokens, utf8_size
from .cards import ModelCard
from .energy import EnergyReading, Meter, estimate_from_profile
from .energy.estimates import EnergyEstimates
from .errors import LedgerError, RouterClosedError
from .ledger import Ledger, LedgerRecord, Reservation
from .ledger.arguments import is_finite_number
from .policy.schema import CARBON_PREFIX

log = logging.getLogger("router")


class Models(Protocol):
    """What the attempts need of the Router: its cards, backends, meter, ledger (records go through
    ``write_record``), learned energy estimates and carbon accounting."""

    cards: dict[str, ModelCard]
    ledger: Ledger
    meter: Meter
    estimates: EnergyEstimates
    learning: Any
    """After-answer work (router/learning.py: prompts kept, the judge) or None."""

    @property
    def closing(self) -> bool:
        """``Router.close()`` has begun: the calls it cancels were not abandoned by their callers."""
        ...

    @property
    def closed(self) -> bool:
        """``Router.close()`` has closed the backends and the ledger: a call still running fails for that."""
        ...

    def backend(self, model: str) -> Backend: ...

    def write_record(self, rec: LedgerRecord) -> None: ...

    def carbon_of(self, card: ModelCard, joules: float) -> tuple[float, float, str]: ...

    def reservation_outage(self, exc: LedgerError | None) -> None:
        """A reservation failed for an outage of the store (``exc``) or the store answered one (None)."""
        ...

    def budget_read_outage(self, exc: LedgerError) -> None:
        """A budget read failed for an outage of the store (``exc``)."""
        ...


class Books:
    """Expected and held energy, settlements and records for one request (:class:`~router._attempts.Attempts`
    decides; this writes it down). ``notes`` are the request's budget notes, shared with the attempts: they join
    the reason of every record after them."""

    def __init__(self, router: Models, prepared: PreparedRequest, notes: list[str]) -> None:
        self.router = router
        self.prepared = prepared
        self.notes = notes

    def expected(self, card: ModelCard) -> tuple[float, str]:
        """The joules this call was expected to take, and where the figure comes from."""
        learned = self.prepared.estimates.get(card.name)
        if learned is not None:
            return learned.joules, learned.source
        joules = self.prepared.decision.estimates.get(card.name)
        if joules is None:
            joules = card.energy.joules(estimated_tokens(utf8_size(self.prepared.text)),
                                        self.prepared.max_tokens or 128)
        return joules, "card"

    def hold(self, card: ModelCard) -> float:
        """What a budget reservation holds for a call: an upper quantile of what it may take."""
        learned = self.prepared.estimates.get(card.name)
        if learned is not None:
            return learned.upper_j
        return self.router.estimates.upper_for_card(card, self.expected(card)[0])

    def energy_of(self, call: Call, gen: Generation | None) -> EnergyReading:
        """What the call used: the meter's reading where one measured it, else the card's token profile over the
        tokens it saw (``gen`` None: a call that failed before any). A meter whose reading is not a usable figure
        (NaN, infinite or negative joules: a counter read that failed, a driver's bad value) gives way to the token
        profile, noted in the reading's detail and logged: the bad figure would fail the record's write and go
        into the budgets (the ledger refuses it, so the call's hold would stay at its estimate), and the answer
        is not lost for a meter's fault."""
        prompt_tokens, completion_tokens = (gen.prompt_tokens, gen.completion_tokens) if gen else (0, 0)
        if call.span is None:
            return estimate_from_profile(call.card.energy, prompt_tokens, completion_tokens)
        reading = call.span.stop()
        if is_finite_number(reading.joules) and reading.joules >= 0:
            return reading
        estimate = estimate_from_profile(call.card.energy, prompt_tokens, completion_tokens)
        log.warning("%s: the %s meter read %r J for this call; its energy is the card's estimate (%s)",
                    call.model, reading.method, reading.joules, estimate.source)
        return EnergyReading(estimate.joules, "estimated", estimate.method,
                             f"the {reading.method} meter read {reading.joules!r} J (not a usable figure); "
                             f"estimated: {estimate.detail}")

    def in_unit(self, unit: str, card: ModelCard, joules: float) -> float:
        """``joules`` in a budget's unit: as they are, or grams CO2e at the card's zone's intensity now."""
        return joules if unit == "J" or joules == 0 else self.router.carbon_of(card, joules)[0]

    def settle(self, held: list[Reservation], joules: float, card: ModelCard | None = None) -> None:
        """Replace each held estimate with what the call used (a failure still spends what it measured)."""
        for reservation in held:
            try:
                carbon = card is not None and reservation.budget.startswith(CARBON_PREFIX)
                amount = self.router.carbon_of(card, joules)[0] if carbon and card is not None else joules
                self.router.ledger.settle(reservation, amount)
            except Exception:  # the answer is not lost for a bookkeeping failure; it is logged loudly
                log.exception("%s: could not settle budget %s", reservation.id, reservation.budget)

    def record(self, card: ModelCard, energy: EnergyReading, latency_ms: float, outcome: str, *, attempt: int,
               gen: Generation | None = None, error: str | None = None, reason: str | None = None) -> float:
        """Write the call's ledger record; returns its grams CO2e (at its model's zone's intensity now)."""
        p = self.prepared
        co2e_g, grid_g, zone = self.router.carbon_of(card, energy.joules)
        rec = LedgerRecord(
            request_id=p.request_id,
            model=card.name,
            tier=card.tier,
            reason=reason or "; ".join([p.decision.reason, *self.notes]),
            input_tokens=gen.prompt_tokens if gen else 0,
            output_tokens=gen.completion_tokens if gen else 0,
            latency_ms=latency_ms,
            energy_j=energy.joules,
            energy_source=energy.source,
            policy=p.decision.policy,
            task=p.decision.task,
            outcome=outcome,  # type: ignore[arg-type]
            key_hash=p.key_hash,
            error=error,
            attempt=attempt,
            co2e_g=co2e_g,
            estimated_j=self.expected(card)[0],
            grid_g_per_kwh=grid_g,
            zone=zone,
        )
        try:
            self.router.write_record(rec)
        except Exception:
            if self.router.closed:  # the call outlived close()'s waits: no answer goes out without its record
                raise RouterClosedError(
                    f"{card.name}: the Router was closed while this call was still running (it outlived close()'s "
                    "wait for running calls), and its ledger with it, so the call's record could not be written: "
                    "let calls end before close() (on an event loop: `await router.aclose()`)") from None
            log.exception("%s: could not write the ledger record", p.request_id)  # the answer still goes out
        return co2e_g
