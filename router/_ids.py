"""Ids that sort by the time they were made: 48 bits of milliseconds since the epoch, then random bits.

Why not all random: the ledger keeps unique indexes on record ids and on request ids (the feedback lookup). A
random key lands on a random page of each index, so every SQLite commit rewrites about one index page per
record per index; keys that start with the time are added at the end of the index, where a group commit
touches a page or two. On a 200,000-record SQLite ledger that took ``record_many`` from 42 to 14 µs of CPU per
record in groups of 60, as the proxy writes them (``python benchmarks/bench_ledger.py --ids``). PostgreSQL's
B-trees gain the same way. The random part keeps ids unguessable and unique across processes and hosts.
"""

from __future__ import annotations

import os
import time


def time_ordered_hex(random_hex_digits: int) -> str:
    """12 hex digits of the current millisecond, then ``random_hex_digits`` random ones (an even number)."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(random_hex_digits // 2).hex()}"


def new_record_id() -> str:
    """32 hex digits (a ledger record's id): the millisecond, then 80 random bits."""
    return time_ordered_hex(20)


def new_request_id() -> str:
    """``chatcmpl-`` and 24 hex digits, the shape of OpenAI's ids: the millisecond, then 48 random bits."""
    return request_id_from(os.urandom(6))


def request_id_from(random6: bytes) -> str:
    """:func:`new_request_id` with its 6 random bytes given (the proxy cuts them from a block it fetched at once)."""
    return f"chatcmpl-{time.time_ns() // 1_000_000:012x}{random6.hex()}"
