"""Record and request ids start with the millisecond they were made, so the ledger's indexes grow at one end."""

from __future__ import annotations

import os
import re
import threading
import time

from router import _ids
from router._ids import new_record_id, new_request_id


def test_ids_have_their_shapes_and_are_unique() -> None:
    records = [new_record_id() for _ in range(5000)]  # several 4 KiB blocks of random bytes
    requests = [new_request_id() for _ in range(5000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", r) for r in records)
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{24}", r) for r in requests)
    assert len(set(records)) == len(records) and len(set(requests)) == len(requests)


def test_ids_made_on_many_threads_are_unique() -> None:
    made: list[list[str]] = [[] for _ in range(8)]

    def make(into: list[str]) -> None:
        into.extend(new_record_id() for _ in range(3000))

    threads = [threading.Thread(target=make, args=(m,)) for m in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for m in made for i in m]
    assert len(set(every)) == len(every) == 24_000


def test_a_forked_child_does_not_repeat_its_parents_random_bits() -> None:
    new_record_id()  # the parent holds a block with bytes still to hand out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit without running the test machinery
        os.write(write, " ".join(_ids._RANDOM.hex(10) for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 4096).decode().split()
    os.close(read)
    parent = [_ids._RANDOM.hex(10) for _ in range(3)]
    assert len(child) == 3 and not set(child) & set(parent)


def test_ids_sort_by_the_millisecond_they_were_made() -> None:
    first = (new_record_id(), new_request_id())
    time.sleep(0.003)
    later = (new_record_id(), new_request_id())
    assert all(a < b for a, b in zip(first, later, strict=True))
    now_ms = time.time_ns() // 1_000_000
    assert abs(int(later[0][:12], 16) - now_ms) < 1000
    assert abs(int(later[1][9:21], 16) - now_ms) < 1000
