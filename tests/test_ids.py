"""Record and request ids start with the millisecond they were made, so the ledger's indexes grow at one end."""

from __future__ import annotations

import re
import time

from router._ids import new_record_id, new_request_id
from router.proxy.fastpath import _RequestIds


def test_ids_have_their_shapes_and_are_unique() -> None:
    records = [new_record_id() for _ in range(5000)]
    requests = [new_request_id() for _ in range(5000)] + [_RequestIds().next() for _ in range(5000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in records)
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", r) for r in requests)
    assert len(set(records)) == len(records) and len(set(requests)) == len(requests)


def test_ids_sort_by_the_millisecond_they_were_made() -> None:
    ids = _RequestIds()
    first = (new_record_id(), new_request_id(), ids.next())
    time.sleep(0.003)
    later = (new_record_id(), new_request_id(), ids.next())
    assert all(a < b for a, b in zip(first, later, strict=True))
    now_ms = time.time_ns() // 1_000_000
    assert abs(int(later[0][:12], 16) - now_ms) < 1000
    assert abs(int(later[1][9:21], 16) - now_ms) < 1000
