"""The ``STORE`` note of a journal folder: which store the records journaled there go to. A ledger of another store
is refused the folder (a replay would write the first store's records into it); a store is compared by what its
URL names, not by the URL's spelling (:func:`store_identity`)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..errors import LedgerError
from .errors import ledger_error, redact
from .urls import sqlite_path, sqlite_url

STORE_NOTE = "STORE"
"""The file in a journal folder that names the store its records go to (:func:`claim_folder`)."""

_SCHEME_ALIASES = {"rediss": "redis", "postgres": "postgresql"}
_DEFAULT_PORTS = {"redis": 6379, "postgresql": 5432}
# the query options that choose which data a URL reaches, with their defaults; the others tune the connection
_NAMING_OPTIONS: dict[str, dict[str, str | None]] = {
    "redis": {"prefix": "router:"},
    "unix": {"prefix": "router:", "db": "0"},
    "postgresql": {"schema": "router", "dbname": None, "host": None, "port": None},
}


def store_identity(url: str, base: Path | None = None) -> str:
    """What ``url`` names as a store, whatever the spelling: a SQLite file's real path (a relative one taken
    from ``base``, else the working directory), else the scheme, host, port, database and the options that choose
    the data (Redis's key prefix, PostgreSQL's schema), without the password, the user or the connection's
    tuning (timeouts, pool size, TLS), which a URL may change while naming the same store."""
    path = sqlite_path(url)
    if path is not None:
        if base is not None and not path.is_absolute():
            path = base / path
        return "sqlite:///" + os.path.realpath(path)  # a link to the file names the file
    parts = urlsplit(url)
    scheme = _SCHEME_ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    naming = {name: query.get(name, default) for name, default in _NAMING_OPTIONS.get(scheme, {}).items()}
    database = parts.path
    if scheme == "redis":  # the database is the path's number, else ?db=, else 0
        database = "/" + (parts.path.strip("/") or query.get("db") or "0")
    try:
        port: int | str | None = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:  # not a number: the store refused the URL already; compare it as written
        port = parts.netloc.rpartition(":")[2]
    host = (parts.hostname or "").lower()
    options = urlencode(sorted((k, v) for k, v in naming.items() if v is not None))
    return f"{scheme}://{host}:{port}{database}" + (f"?{options}" if options else "")


def read_store_note(folder: Path) -> str | None:
    """The store URL (password masked) that ``folder``'s STORE note names; None where there is no note yet."""
    try:
        return (folder / STORE_NOTE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def store_note_conflict(folder: Path, url: str) -> LedgerError | None:
    """Why the journal folder ``folder`` must not be used for the store ``url`` (its STORE note names another
    store, whose records a replay would write into this one), or None. A note written with a relative SQLite path
    (before notes were absolute) is read from the working directory or beside the folder (the default folder's
    place), whichever matches."""
    noted = read_store_note(folder)
    if noted is None or _beside_its_file(folder, url):
        return None
    here = store_identity(url)
    if here in (store_identity(noted), store_identity(noted, base=folder.parent)):
        return None
    return ledger_error(
        url, f"the journal folder {folder} belongs to another store, {noted} (its {STORE_NOTE} note): replaying "
        "it here would write that store's records into this one",
        f"give each store a journal folder of its own (journal.folder in the config; left out, every store gets "
        f"its own); `router ledger doctor --ledger {noted} --journal {folder}` replays what waits there into its "
        f"own store{' (*** being its password)' if '***' in noted else ''}; if that store was moved to this URL, "
        f"delete {folder / STORE_NOTE}",
        retryable=False)  # fmt: skip


def _beside_its_file(folder: Path, url: str) -> bool:
    """Whether ``folder`` is the default journal of the SQLite file ``url`` names (``<file>.journal`` beside it):
    such a folder is that file's by its name, wherever the two were moved or copied together (a restored backup, a
    volume mounted elsewhere), so a note naming the file's old path is no other store's."""
    path = sqlite_path(url)
    if path is None:
        return False
    file = Path(os.path.realpath(path))
    return os.path.realpath(folder) == str(file.with_name(file.name + ".journal"))


def claim_folder(folder: Path, url: str) -> None:
    """Make sure ``folder`` is the journal of the store ``url``: a folder without a STORE note (new, or from a
    release that wrote none) gets one naming it; one whose note names another store is a ``LedgerError``
    (:func:`store_note_conflict`). Two processes that start at once each try to create the note, and the one that
    does not is checked against the other's."""
    conflict = store_note_conflict(folder, url)
    path = sqlite_path(url)
    text = redact(url) if path is None else sqlite_url(os.path.abspath(path))
    noted = read_store_note(folder)
    if conflict is None and noted is None:
        making = _note_draft(folder, text)
        try:
            os.link(making, folder / STORE_NOTE)  # whole, and only where no note is yet
        except FileExistsError:
            conflict = store_note_conflict(folder, url)
        finally:
            making.unlink(missing_ok=True)
    elif noted is not None and noted != text and _beside_its_file(folder, url):  # moved with its file: say where
        os.replace(_note_draft(folder, text), folder / STORE_NOTE)
    if conflict is not None:
        raise conflict


def _note_draft(folder: Path, text: str) -> Path:
    """A STORE note written whole under a name of this thread's, to be put in place in one step."""
    making = folder / f".{STORE_NOTE}.{os.getpid()}.{threading.get_ident()}.new"
    making.write_text(text + "\n", encoding="utf-8")
    return making


def same_store_folders(folder: Path, url: str) -> list[Path]:
    """The other folders beside ``folder`` whose STORE note names the store ``url`` names: default journal folders
    are named after the whole URL, so one whose URL changed only in how it connects (``?socket_timeout=``,
    ``?pool=``, the user) has its journal in another folder, which this process replays too (it would be replayed
    by nobody otherwise). Folders whose note cannot be read are left out."""
    here = store_identity(url)
    try:
        entries = sorted(folder.parent.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry == folder or not entry.is_dir():
            continue
        try:
            noted = read_store_note(entry)
            if noted is not None and store_identity(noted) == here:
                found.append(entry)
        except (OSError, ValueError, LedgerError):  # another user's, or not a note this release reads
            continue
    return found
