"""Every ledger implementation passes the one shared suite (tests/conformance/ledger_suite.py)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conformance.ledger_suite import LEDGER_CHECKS
from conftest_redis import redis_server  # noqa: F401 - the fixture

from router.ledger import Ledger, SQLiteLedger

_CHECK_IDS = [c.__name__.removeprefix("check_") for c in LEDGER_CHECKS]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Callable[[str], Ledger]]:
    opened: list[Ledger] = []

    def open_store(name: str) -> Ledger:
        led = SQLiteLedger(tmp_path / f"{name}.sqlite3")
        opened.append(led)
        return led

    yield open_store
    for led in opened:
        led.close()


_run = itertools.count()


@pytest.fixture
def redis_store(redis_server: str) -> Iterator[Callable[[str], Ledger]]:  # noqa: F811
    from router.ledger.redis import RedisLedger

    run = next(_run)
    opened: list[RedisLedger] = []

    def open_store(name: str) -> Ledger:
        led = RedisLedger.from_url(redis_server, prefix=f"test{run}:{name}:")
        opened.append(led)
        return led

    yield open_store
    if opened:
        opened[-1].clear()
    for led in opened:
        with contextlib.suppress(Exception):  # a check may have closed it already
            led.close()


@pytest.mark.parametrize("check", LEDGER_CHECKS, ids=_CHECK_IDS)
def test_sqlite_ledger_conforms(check: Callable[[Callable[[str], Ledger]], None], sqlite_store) -> None:
    check(sqlite_store)


@pytest.mark.redis
@pytest.mark.parametrize("check", LEDGER_CHECKS, ids=_CHECK_IDS)
def test_redis_ledger_conforms(check: Callable[[Callable[[str], Ledger]], None], redis_store) -> None:
    check(redis_store)
