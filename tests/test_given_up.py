"""The queue of reservations given up on (``router.ledger.given_up``), in a forked child."""

from __future__ import annotations

import threading

from forking import in_a_forked_child

from router.ledger.given_up import GivenUp

PARENTS, CHILDS = "the parent's reservation", "the child's reservation"


class _Ledger:
    """What :class:`GivenUp` uses of its ledger: whether it is closed, and a release of all that is queued."""

    closed = False
    given_up: GivenUp[str]

    def release_given_up(self) -> None:
        self.given_up.release_all()


def test_a_child_forked_while_the_parent_releases_releases_its_own() -> None:
    """A child forked while its parent's release thread is in a store call (gunicorn --preload, Celery prefork) gets
    a thread of its own for the reservations it gives up on; before, it inherited the flag that says one runs, and
    its reservations held their budgets until the window ended."""
    parent_may_go_on = threading.Event()
    parent_in_store = threading.Event()
    child_released = threading.Event()

    def release_one(item: str) -> None:
        if item == PARENTS:  # TEST DOUBLE: a store that takes its time, so the parent's thread is mid-release
            parent_in_store.set()
            parent_may_go_on.wait(60)
        else:
            child_released.set()

    ledger = _Ledger()
    ledger.given_up = GivenUp(ledger, release_one, "test-release")
    ledger.given_up.add(PARENTS)
    assert parent_in_store.wait(30)

    def in_the_child() -> None:  # a failed assert ends the child with exit code 1
        ledger.given_up.add(CHILDS)
        assert child_released.wait(20), "the child's reservation was never released"

    try:
        in_a_forked_child(in_the_child, "the child released its own reservation")
    finally:
        parent_may_go_on.set()
