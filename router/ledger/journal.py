"""A local append-only journal: records are on this host's disk before anything else happens to them.

Layout: one folder per store (default: ``<ledger file>.journal/`` beside a SQLite ledger, else ``<user data
dir>/router/journal/<store>/``), holding segment files ``j-<host>-<pid>-<ns>.jsonl`` and a ``STORE`` note naming the
store (a ledger of another store is refused the folder: :mod:`.journal_note`). Each process appends to its own
active segment, one JSON line per record (with its ``record_id``) or budget settlement (the reservation and what the
call used, under ``"settlement"``: :func:`encode_settlement`), written with one ``write(2)`` before
:meth:`Journal.append` returns: the line is then in the OS's page cache, so a ``kill -9`` of the process loses
nothing appended. ``fsync`` (what a power cut needs) is configurable: ``always`` (every record, before ``append``
returns), ``group`` (a thread syncs what was written at most ``fsync_interval_ms`` ago: a power cut loses at most
that long) or ``never`` (the OS writes back within ~30 s).

A process holds an exclusive ``flock`` on each of its segments for as long as it owns them. The kernel drops the
lock when the process dies (``kill -9`` included), so a segment whose lock can be taken belongs to a dead
process: any live process replays it into the store and deletes it, holding the lock meanwhile, so two live
processes never replay one file. Replaying is idempotent (stores ignore a record id they hold, and settle a
reservation once, by its id), so a crash during a replay only means the next one writes some records and
settlements again, which changes nothing. A settlement is journaled because a hold expires (``HOLD_MARGIN_S``
after its call's deadline): a call whose settlement died with its process would otherwise stop counting against
its budget, though its record is replayed.

Segments rotate: the owner seals its active segment and opens a new one (every replay interval, and before an append
would take it past ``segment_bytes``, outages included), deletes sealed segments whose records all reached the
store, and replays the others (a record whose store write failed marks its segment dirty).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from pydantic_core import to_json

from .._forks import renew_after_fork
from ..config import JournalSettings
from ..errors import ConfigError, LedgerError
from .arguments import is_finite_number
from .base import LedgerRecord, Reservation
from .errors import ledger_error, redact_userinfo
from .journal_note import claim_folder, same_store_folders
from .urls import sqlite_path

log = logging.getLogger("router.ledger")

_FIELDS = {f.name for f in fields(LedgerRecord)}
_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:40] or "host"
SEGMENT = re.compile(r"^j-.+-\d+-\d+\.jsonl$")

Settlement = tuple[Reservation, float]
"""A reservation and what its call used (in the budget's unit): what ``Ledger.settle`` takes."""


def journal_folder(settings: JournalSettings, url: str) -> Path:
    """The journal folder of the store ``url`` names: one folder per store, so records never replay into another
    store. The name leaves the password out, so changing it keeps the folder."""
    if settings.folder is not None:
        return settings.folder.expanduser()
    path = sqlite_path(url)
    if path is not None:
        return path.with_name(path.name + ".journal")
    from ..user_dirs import user_data_folder

    safe = redact_userinfo(url)  # a parameter password is hashed into the name, never written in it
    slug = re.sub(r"[^A-Za-z0-9.-]+", "-", safe.split("?", 1)[0].split("@")[-1]).strip("-")[:60]
    digest = hashlib.sha256(safe.encode()).hexdigest()[:10]
    folder = user_data_folder("name the journal folder (journal.folder in the config)")
    return folder / "journal" / f"{slug}-{digest}"


def other_spelling_folders(url: str, folder: Path) -> list[Path]:
    """Where ``folder`` is the default journal folder of the server store ``url`` names (named after the whole URL),
    the default folders of its other spellings (another timeout, pool size, user), whose journals this store's
    ledgers replay too (:func:`~router.ledger.journal_note.same_store_folders`); none elsewhere."""
    if not url or sqlite_path(url) is not None:
        return []
    try:
        default = journal_folder(JournalSettings(), url)
    except ConfigError:  # no home folder, so no default folder: ``folder`` was named
        return []
    return same_store_folders(folder, url) if folder == default else []


@dataclass(eq=False)
class Segment:
    """One journal file this process owns (and holds the lock on)."""

    path: Path
    fd: int
    created: float = field(default_factory=time.monotonic)
    size: int = 0
    records: int = 0  # lines: records and settlements
    settlements: int = 0  # of those lines, settlements
    inflight: int = 0  # lines appended, not yet reported stored or failed
    inflight_settlements: int = 0
    dirty: bool = False  # some record or settlement of it did not reach the store: replay the file
    unsynced: bool = False
    torn: bool = False  # ends in part of a line that a failed write left and that could not be cut off
    retry_roll_at: float = 0.0  # (monotonic) no segment could be started after it: the next try is not before


def encode(rec: LedgerRecord) -> bytes:
    """One JSON line. pydantic-core's encoder: ~2.5 µs a record here against ~12 µs for ``json.dumps`` (this
    runs on the proxy's request path); floats keep their shortest round-trip form, NaN and infinities as
    ``NaN``/``Infinity``, which ``json.loads`` reads back."""
    return to_json(rec.__dict__, inf_nan_mode="constants") + b"\n"


def encode_settlement(settlement: Settlement) -> bytes:
    """One JSON line for a settlement: the reservation's fields and ``actual_j``, under ``"settlement"``."""
    reservation, actual_j = settlement
    return to_json({"settlement": {**reservation.__dict__, "actual_j": actual_j}}, inf_nan_mode="constants") + b"\n"


def decode(line: bytes) -> LedgerRecord | Settlement:
    """A record, or a settlement (:func:`encode_settlement`)."""
    data = json.loads(line)
    if isinstance(data, dict) and set(data) == {"settlement"} and isinstance(data["settlement"], dict):
        fields_of = dict(data["settlement"])
        actual_j = fields_of.pop("actual_j", None)
        if not is_finite_number(actual_j) or actual_j < 0:  # what Ledger.settle refuses (an older release wrote it)
            raise ValueError(f"a settlement without a usable actual_j ({actual_j!r} J)")
        return Reservation(**fields_of), float(actual_j)
    if not isinstance(data, dict) or not set(data) <= _FIELDS or "record_id" not in data:
        raise ValueError("not a ledger record of this version")
    return LedgerRecord(**data)


class Journal:
    """This process's segments in ``folder``; thread-safe."""

    def __init__(self, folder: Path, settings: JournalSettings | None = None, *, url: str = "") -> None:
        self.folder = Path(folder)
        self.settings = settings or JournalSettings()
        self.url = url
        self._lock = threading.Lock()
        self._sealed: list[Segment] = []
        self._seq = 0
        self._closed = False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if url:
                claim_folder(self.folder, url)
            self._active = self._open_segment()
        except OSError as exc:
            raise self._error(exc, "create the journal") from exc
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self._start_syncer()
        renew_after_fork(self)

    def _start_syncer(self) -> None:
        if self.settings.fsync == "group":
            self._syncer = threading.Thread(target=self._sync_loop, name="ledger-journal-fsync", daemon=True)
            self._syncer.start()

    def _error(self, exc: OSError, action: str) -> LedgerError:
        return ledger_error(self.url or str(self.folder),
                            f"could not {action} in {self.folder}: {exc.strerror or exc}",
                            "make the journal folder writable (the config's journal.folder sets it) and free "
                            "space on its disk", retryable=exc.errno in (errno.ENOSPC, errno.EDQUOT))  # fmt: skip

    def _open_segment(self) -> Segment:
        self._seq += 1
        path = self.folder / f"j-{_HOST}-{os.getpid()}-{time.time_ns()}{self._seq:03d}.jsonl"
        # Made under a name replays do not list, locked, then renamed: under its own name but not yet locked, another
        # process's replay would take it for a dead process's segment, replay it empty and delete it under its owner.
        making = path.with_name(f".{path.name}.new")
        fd = os.open(making, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(making, path)
        except BaseException:
            os.close(fd)
            making.unlink(missing_ok=True)
            raise
        return Segment(path, fd)

    def owns(self, path: Path) -> bool:
        with self._lock:
            return path == self._active.path or any(s.path == path for s in self._sealed)

    # -- writing ------------------------------------------------------------------------------------------
    def append(self, rec: LedgerRecord) -> Segment:
        """Write ``rec`` as one line; on return it survives a kill -9 (and, with ``fsync: always``, a power
        cut). Returns the segment to report the store write to (:meth:`done`)."""
        return self.append_many([rec])

    def append_many(self, recs: list[LedgerRecord], settlements: list[Settlement] | None = None) -> Segment:
        """``recs`` and ``settlements`` in one write; :meth:`done` is told of them together (one count) or apart."""
        data = b"".join(map(encode, recs))
        if settlements:
            data += b"".join(map(encode_settlement, settlements))
        lines = len(recs) + len(settlements or ())
        with self._lock:
            if self._closed:
                raise ledger_error(self.url, "the journal is closed", "open the ledger again", retryable=False)
            seg = self._active
            if (seg.records and seg.size + len(data) > self.settings.segment_bytes
                    and time.monotonic() >= seg.retry_roll_at):
                # rolled here, not only by the replay's rotation: while the store is down the replay stops
                # before it rotates, and a replay reads a whole segment into memory
                seg = self._roll()
            if seg.torn:  # the torn part becomes a line of its own (set aside on replay), not the start of ours
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(seg.fd, view) :]
                if self.settings.fsync == "always":
                    os.fdatasync(seg.fd)
            except OSError as exc:
                self._cut_torn_tail(seg)
                raise self._error(exc, "append to the journal") from exc
            seg.torn = False
            seg.size += len(data)
            seg.records += lines
            seg.inflight += lines
            seg.settlements += lines - len(recs)
            seg.inflight_settlements += lines - len(recs)
            seg.unsynced = True
        return seg

    @staticmethod
    def _cut_torn_tail(seg: Segment) -> None:
        """A write that failed part-way (a full disk) left part of a line: cut the file back to its last whole line.
        Left there, the next line appended (once space is freed) would be glued to it and unreadable, and the
        replay would set that acknowledged record aside instead of writing it. The caller was told the append
        failed, so what is cut off goes to the store without the journal."""
        try:
            os.ftruncate(seg.fd, seg.size)
        except OSError:
            seg.torn = True

    def done(self, seg: Segment, n: int, stored: bool, *, settlements: bool = False) -> None:
        """``n`` records (or ``settlements``) appended to ``seg`` reached the store (``stored``) or did not (replay
        the segment)."""
        with self._lock:
            seg.inflight -= n
            if settlements:
                seg.inflight_settlements -= n
            if not stored:
                seg.dirty = True

    def _sync_loop(self) -> None:
        interval = self.settings.fsync_interval_ms / 1000
        while not self._stop.wait(interval):
            self.sync()

    def sync(self) -> None:
        """fsync what was written since the last sync: to the active segment, and to one an append rolled over
        from (duplicate descriptors, so a discard meanwhile cannot close them under us)."""
        with self._lock:
            if self._closed:
                return
            to_sync: list[tuple[Segment, int]] = []
            for seg in (self._active, *self._sealed):
                if seg.unsynced:
                    seg.unsynced = False
                    to_sync.append((seg, os.dup(seg.fd)))
        for seg, fd in to_sync:
            try:
                os.fdatasync(fd)
            except OSError:
                log.exception("could not fsync the ledger journal %s", seg.path)
            finally:
                os.close(fd)

    # -- rotation -----------------------------------------------------------------------------------------
    def rotate(self, *, force: bool = False) -> None:
        """Seal the active segment and start a new one when it is dirty, big, old or ``force``d and holds any
        record (an empty one stays)."""
        with self._lock:
            seg = self._active
            old = time.monotonic() - seg.created >= self.settings.replay_interval_s
            if seg.records == 0 or not (force or seg.dirty or old or seg.size >= self.settings.segment_bytes):
                return
            if self._roll() is seg:
                return
        if seg.unsynced and self.settings.fsync != "never":
            with contextlib.suppress(OSError):
                os.fdatasync(seg.fd)

    def _roll(self) -> Segment:
        """Seal the active segment and start a new one (the caller holds the lock); returns the active segment,
        the old one where no new one could be made. A sealed segment left unsynced is synced by :meth:`sync`."""
        seg = self._active
        try:
            self._active = self._open_segment()
        except OSError as exc:
            # tried again a replay interval later, not on every append (each would log this)
            seg.retry_roll_at = time.monotonic() + self.settings.replay_interval_s
            log.warning("%s; appending to %s meanwhile", self._error(exc, "start a journal segment"), seg.path)
            return seg
        self._sealed.append(seg)
        return self._active

    def sealed_ready(self) -> list[Segment]:
        """Sealed segments with no record still on its way to the store."""
        with self._lock:
            return [s for s in self._sealed if s.inflight == 0]

    def discard(self, seg: Segment) -> None:
        """Delete a sealed segment whose records are all in the store (unlink before unlocking: nobody else
        can open it in between)."""
        with self._lock:
            if seg in self._sealed:
                self._sealed.remove(seg)
        with contextlib.suppress(FileNotFoundError):
            seg.path.unlink()
        with contextlib.suppress(OSError):
            os.close(seg.fd)

    def pending(self) -> int:
        """Records of this process not known to be in the store (what ``/health`` and ``/metrics`` show: the
        settlements journaled beside them are not counted)."""
        with self._lock:
            segs = [self._active, *self._sealed]
            return (sum(s.inflight - s.inflight_settlements for s in segs)
                    + sum(s.records - s.settlements for s in segs if s.dirty))

    def close(self) -> None:
        """Sync and release every segment. Clean ones were discarded by the caller; what is left (dirty or
        in flight) stays on disk, unlocked, for the next process to replay."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            segs = [self._active, *self._sealed]
        self._stop.set()
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join(timeout=5)  # gone when close returns: a caller that retries counts no leftovers
        for seg in segs:
            if seg.records == 0:
                with contextlib.suppress(FileNotFoundError):
                    seg.path.unlink()
            elif self.settings.fsync != "never":
                with contextlib.suppress(OSError):
                    os.fdatasync(seg.fd)
            with contextlib.suppress(OSError):
                os.close(seg.fd)

    def _renew_after_fork(self) -> None:
        """A forked child shares the parent's open files and locks: drop its copies (the parent's lock stays)
        and let the child start a segment of its own."""
        if self._closed:
            return
        for seg in [self._active, *self._sealed]:
            with contextlib.suppress(OSError):
                os.close(seg.fd)
        self._lock = threading.Lock()
        self._sealed = []
        try:
            self._active = self._open_segment()
        except OSError:
            self._closed = True
            return
        self._stop = threading.Event()

    def _restart_after_fork(self) -> None:
        """The child's segment is synced by a thread of its own (a fork copies no thread)."""
        if not self._closed:
            self._start_syncer()

