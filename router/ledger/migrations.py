"""Schema versions, one mechanism for every store.

Each store keeps a numbered list of steps (1, 2, 3 ...): step N takes a store at version N-1 to version N. The
store records its version (SQLite: ``PRAGMA user_version``; PostgreSQL: the ``meta`` table; Redis: the ``meta``
hash) and, when it is opened, applies the steps it lacks **in one transaction together with the new version
number**, so a crash half-way leaves the old version and the next open starts again, and two processes opening
one store at once apply each step once (the transaction takes the store's write lock before reading the
version). A store newer than the code is refused with a ``LedgerError`` rather than misread.

Steps are never edited once released: a later column (e.g. carbon intensity or a prompt hash) is a new step
(``ALTER TABLE ... ADD COLUMN``, or for Redis a script that rewrites what it must) plus a field with a default
on :class:`~router.ledger.base.LedgerRecord`, so records written before read back with that default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import ledger_error

P = TypeVar("P")


@dataclass(frozen=True)
class Step(Generic[P]):
    """Version ``version``: what it does (``summary``, shown by ``router ledger doctor``) and the store-specific
    payload that does it (SQL statements, a Lua script)."""

    version: int
    summary: str
    payload: P


class Migrations(Generic[P]):
    """The numbered steps of one kind of store."""

    def __init__(self, store: str, steps: Sequence[Step[P]]) -> None:
        numbers = [s.version for s in steps]
        if numbers != list(range(1, len(steps) + 1)):
            raise ValueError(f"{store} migrations must be numbered 1..N in order, got {numbers}")
        self.store = store
        self.steps = list(steps)

    @property
    def latest(self) -> int:
        return len(self.steps)

    def plan(self, current: int, url: str) -> list[Step[P]]:
        """The steps a store at ``current`` needs, in order (none when it is up to date)."""
        if current > self.latest:
            raise ledger_error(
                url,
                f"the {self.store} ledger's schema version is {current}, newer than this router knows "
                f"({self.latest}): a newer router wrote it",
                "upgrade router (pip install -U router) in every process that uses this ledger",
                retryable=False,
            )
        if current < 0:
            raise ledger_error(url, f"schema version {current} is not a version", "restore the store from a backup",
                               retryable=False)
        return self.steps[current:]
