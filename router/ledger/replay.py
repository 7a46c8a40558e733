"""Replaying journal segments into a store (:mod:`router.ledger.journal` writes them): claiming a dead
process's segment with its ``flock``, reading it (lines that do not parse are set aside in ``rejected.jsonl``),
writing its records in batches (a record the store refuses is set aside too), applying its budget settlements
(a reservation settled already changes nothing: stores settle by its id) and deleting it once all of it is in.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LedgerError
from .base import LedgerRecord
from .errors import ledger_error
from .journal import SEGMENT, Settlement, decode, encode, encode_settlement

log = logging.getLogger("router.ledger")
REJECTED = "rejected.jsonl"
"""Where a folder's replays set aside the lines that do not parse and the records the store refuses."""


@contextlib.contextmanager
def claim(path: Path) -> Iterator[int | None]:
    """The segment's lock if no live process holds it (its owner died): yields a descriptor, else None."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        if os.fstat(fd).st_nlink == 0:  # replayed and deleted by someone else since we listed it
            yield None
            return
        yield fd
    finally:
        os.close(fd)


@dataclass
class ReplayResult:
    files: int = 0
    records: int = 0
    set_aside: int = 0
    busy: int = 0  # files a live process holds
    failed: list[str] = field(default_factory=list)
    unreadable: list[LedgerError] = field(default_factory=list)  # files this user may not replay: why, each

    def add(self, other: ReplayResult) -> None:
        """Count ``other``'s files and records in too (another folder's replay)."""
        self.files += other.files
        self.records += other.records
        self.set_aside += other.set_aside
        self.busy += other.busy
        self.failed += other.failed
        self.unreadable += other.unreadable


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a name here (a container's)
        return f"uid {uid}"


def unreadable_error(url: str, folder: Path, exc: PermissionError) -> LedgerError:
    """Why a journal file in ``folder`` cannot be replayed by this process (another user's segment, left by a
    router run as that user, e.g. root; or the folder's ``rejected.jsonl``, where a segment's refused records go),
    naming the file, its owner and what to do. Not retryable: it stays so until a person changes the owner or the
    user the router runs as."""
    path = Path(exc.filename) if exc.filename else folder
    me = _user(os.geteuid())
    try:
        owner = _user(path.stat().st_uid)
    except OSError:
        owner = ""
    if path.name == REJECTED:  # the segment itself was read and its other records stored: it is kept for this one
        action = f"set aside a record the store refuses in {path}"
        stays = "the segment it comes from stays (its other records are in the store), and is replayed again"
    else:
        action = f"replay the journal file {path}"
        stays = "the file stays, and its records reach the store"
    if owner and owner != me:
        whose = f"it belongs to {owner}, and this process runs as {me}"
        fix = (f"run the router as {owner}, or give the file and its folder to {me} (sudo chown -R {me} {folder}); "
               f"{stays} once a process that may read and write them replays it (`router ledger doctor` run as "
               f"{owner} replays it now)")
    else:  # this user's own file (or folder) with its permissions taken away
        whose = f"this process runs as {me}, and the permissions keep it out"
        fix = (f"give {me} read and write access to the file and its folder (chmod u+rw {path}; chmod u+rwx "
               f"{folder}); {stays} at the next replay")
    return ledger_error(url or str(folder), f"cannot {action} ({exc.strerror or exc}: {whose})", fix,
                        retryable=False)


def segment_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if SEGMENT.match(p.name))


def read_records(path: Path, set_aside: Callable[[bytes, str], None]) -> tuple[list[LedgerRecord], list[Settlement]]:
    """Every record and settlement in a segment; a line that does not parse is set aside (a torn last line after a
    power cut was never acknowledged with ``fsync: always``; with ``group`` it is within the interval)."""
    with open(path, "rb") as f:
        recs: list[LedgerRecord] = []
        settlements: list[Settlement] = []
        for line in f:
            if not line.strip():
                continue
            try:
                entry = decode(line)
            except (ValueError, TypeError) as exc:
                set_aside(line, f"{path.name}: {exc}")
                continue
            if isinstance(entry, LedgerRecord):
                recs.append(entry)
            else:
                settlements.append(entry)
        return recs, settlements


def replay_segment(
    path: Path, write_many: Callable[[list[LedgerRecord]], None],
    settle_many: Callable[[list[Settlement]], None], *, batch: int = 512,
) -> tuple[int, int]:
    """Write the records of a segment whose lock the caller holds to the store in batches, apply its settlements
    (so the calls whose settlement died with their process count against their budgets), then delete it.
    Returns (records, set aside). A store error (``LedgerError`` not about the record) propagates with the
    file left in place."""
    aside = 0

    def set_aside(line: bytes, why: str) -> None:
        nonlocal aside
        aside += 1
        _set_aside(path.parent, line, why)

    recs, settlements = read_records(path, set_aside)
    for i in range(0, len(settlements), batch):
        chunk_of_settlements = settlements[i : i + batch]
        try:
            settle_many(chunk_of_settlements)
        except LedgerError as exc:
            if exc.retryable:
                raise
            for settlement in chunk_of_settlements:  # one refused for good: the others apply, it is set aside
                try:
                    settle_many([settlement])
                except LedgerError as one:
                    if one.retryable:
                        raise
                    set_aside(encode_settlement(settlement), f"{path.name}: {one}")
    for i in range(0, len(recs), batch):
        chunk = recs[i : i + batch]
        try:
            write_many(chunk)
        except LedgerError as exc:
            if not exc.record_rejected:
                raise
            for rec in chunk:  # one bad record: the others go in, it is set aside
                try:
                    write_many([rec])
                except LedgerError as one:
                    if not one.record_rejected:
                        raise
                    set_aside(encode(rec), f"{path.name}: {one}")
    path.unlink()
    return len(recs), aside


def _set_aside(folder: Path, line: bytes, why: str) -> None:
    # readable by its owner only, as the segments the lines come from (their records name keys, models and errors)
    fd = os.open(folder / REJECTED, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with open(fd, "ab") as f:
        f.write(line if line.endswith(b"\n") else line + b"\n")
    # said once it is done: a file this process may not write raises above, and its replay, retried every
    # interval, says that once (unreadable_error), not this line each time
    log.error("ledger journal: set aside a record the store refuses (%s); see %s", why, folder / REJECTED)


def replay_folder(
    folder: Path, write_many: Callable[[list[LedgerRecord]], None], settle_many: Callable[[list[Settlement]], None],
    *, skip: Callable[[Path], bool] | None = None, on_file: Callable[[int, int], None] | None = None,
    url: str = "",
) -> ReplayResult:
    """Replay every segment in ``folder`` that no live process holds (dead processes' journals); ``on_file`` is told
    how many segments are done and of how many, before each and after the last. A segment this user may not read
    or delete (another user's) is left in place, and why is in ``unreadable`` (:func:`unreadable_error`, naming
    ``url``); the others are replayed."""
    result = ReplayResult()
    segments = segment_files(folder)
    for done, path in enumerate(segments):
        if on_file is not None:
            on_file(done, len(segments))
        if skip is not None and skip(path):
            continue
        try:
            with claim(path) as fd:
                if fd is None:
                    result.busy += path.exists()
                    continue
                n, aside = replay_segment(path, write_many, settle_many)
        except PermissionError as exc:
            result.unreadable.append(unreadable_error(url, folder, exc))
            continue
        result.files += 1
        result.records += n
        result.set_aside += aside
    if on_file is not None:
        on_file(len(segments), len(segments))
    return result
