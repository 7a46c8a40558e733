"""Running a test's part in a forked child (what gunicorn --preload, multiprocessing's fork and Celery's prefork pool
do to a Router made before the fork), and failing the test where the child hangs or its part fails."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable

import pytest

FORK = multiprocessing.get_context("fork")


def in_a_forked_child(part: Callable[[], None], what: str, *, meanwhile: Callable[[], None] | None = None,
                      timeout_s: float = 60) -> None:
    """Run ``part`` in a forked child (a failed assert or an exception there ends it with exit code 1, its traceback
    in the captured stderr), and ``meanwhile`` in the parent once the child has started; fail if the child is
    still running after ``timeout_s`` or did not do ``what``."""
    child = FORK.Process(target=part)
    child.start()
    try:
        if meanwhile is not None:
            meanwhile()
        child.join(timeout_s)
    finally:
        if child.is_alive():
            child.kill()
            pytest.fail("the forked child hung")
    assert child.exitcode == 0, f"{what} (the child's traceback is in the captured stderr)"
