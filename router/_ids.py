"""Ids that sort by the time they were made: 48 bits of milliseconds since the epoch, then random bits.

Why not all random: the ledger keeps unique indexes on record ids and on request ids (the feedback lookup). A
random key lands on a random page of each index, so every SQLite commit rewrites about one index page per
record per index; keys that start with the time are added at the end of the index, where a group commit
touches a page or two. On a 200,000-record SQLite ledger that took ``record_many`` from 42 to 14 µs of CPU per
record in groups of 60, as the proxy writes them (``python benchmarks/bench_ledger.py --ids``). PostgreSQL's
B-trees gain the same way. The random part keeps ids unguessable and unique across processes and hosts.

The random bits come from ``os.urandom`` 4 KiB at a time rather than one system call per id: every answer
makes two ids (its request's and its ledger record's). Each block is turned into hex digits once and cut into
pieces of the size asked for, and every id pops one: ``list.pop`` is atomic, so threads share the pieces without
a lock (taking and releasing one cost more than the rest of making the id).
"""

from __future__ import annotations

import os
import time

from ._forks import renew_after_fork

_POOL_BYTES = 4096


class _RandomPool:
    """``os.urandom`` bytes, as hex digits, handed out in pieces; thread-safe without a lock. A forked child starts
    blocks of its own (it must not hand out the digits its parent will)."""

    def __init__(self) -> None:
        self._pieces: dict[int, list[str]] = {}  # bytes per piece -> the pieces of the current block not handed out

    def hex(self, n_bytes: int) -> str:
        """``n_bytes`` random bytes as ``2 * n_bytes`` hex digits."""
        try:
            return self._pieces[n_bytes].pop()  # atomic: no two threads get the same piece
        except (KeyError, IndexError):
            return self._new_block(n_bytes)

    def _new_block(self, n_bytes: int) -> str:
        # threads that find the pieces gone at once each cut a block of their own: the last one stays, and the
        # others' unused pieces are dropped, never handed out twice
        n_digits = 2 * n_bytes
        digits = os.urandom(_POOL_BYTES).hex()
        pieces = [digits[at:at + n_digits] for at in range(0, len(digits) - n_digits + 1, n_digits)]
        piece = pieces.pop()
        self._pieces[n_bytes] = pieces
        return piece

    def _renew_after_fork(self) -> None:
        self._pieces = {}


_RANDOM = _RandomPool()
renew_after_fork(_RANDOM)


def time_ordered_hex(random_hex_digits: int) -> str:
    """12 hex digits of the current millisecond, then ``random_hex_digits`` random ones (an even number)."""
    return f"{time.time_ns() // 1_000_000:012x}{_RANDOM.hex(random_hex_digits // 2)}"


def new_record_id() -> str:
    """32 hex digits (a ledger record's id): the millisecond, then 80 random bits."""
    return time_ordered_hex(20)


def new_request_id() -> str:
    """``chatcmpl-`` and 24 hex digits, the shape of OpenAI's ids: the millisecond, then 48 random bits."""
    return "chatcmpl-" + time_ordered_hex(12)
