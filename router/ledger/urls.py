"""What a ledger URL says about its store, without opening it: its scheme, and whether (and where) it is a SQLite
file. A module of its own, importing no store, so that every store module and the code around them can share the
one rule."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

from .errors import ledger_error


def url_scheme(url: str) -> str:
    """The scheme of a store URL in lower case (schemes are case-insensitive); "" for a plain path."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def sqlite_path(url: str) -> Path | None:
    """The SQLite file a store URL names, or None when it names another store (``redis://``, ``postgresql://``,
    an unknown scheme). The one rule for "is this SQLite", so that opening the ledger, its journal folder, the
    batch store beside it, the CLI and the dashboard never disagree: ``sqlite:///PATH`` (the scheme in any case,
    the query left out, the path percent-decoded as in any URL, so ``with%20space`` and ``with space`` name the same
    folder) or a plain path (``:memory:`` included, taken as written), ``~`` expanded in either. ``sqlite:`` with fewer
    than three slashes (``sqlite:/x``, ``sqlite://x``, ``sqlite:x``) is a ``LedgerError``: taken as a path it would
    make a new, empty ledger named after the URL; so is a SQLite URI (``file:x.db``)."""
    scheme = url_scheme(url)
    if scheme == "sqlite" and url[len("sqlite://") :].startswith("/"):
        return _expand_home(Path(unquote(url[len("sqlite:///") :].split("?", 1)[0])))
    if scheme == "sqlite" or url[: len("sqlite:")].lower() == "sqlite:":
        raise ledger_error(url, "not a SQLite ledger URL", "write sqlite:///PATH: three slashes, then the path "
                           "(sqlite:////var/lib/router/ledger.sqlite3 for an absolute one)", retryable=False)
    if scheme == "" and url[: len("file:")].lower() == "file:":
        # SQLite itself would read it as a URI and open another file than the one the journal and the CLI name
        raise ledger_error(url, "a SQLite URI, which a ledger URL is not", "write sqlite:///PATH (sqlite:///x.db, "
                           "or sqlite:////var/lib/router/ledger.sqlite3 for an absolute path)", retryable=False)
    return _expand_home(Path(url)) if scheme == "" else None


def sqlite_url(path: str | Path) -> str:
    """The ``sqlite:///PATH`` URL of a file, which :func:`sqlite_path` reads back as the same file: ``%`` and ``?``
    in the name are percent-encoded (read as written they would be decoded, or start the query); spaces and every
    other character stay readable."""
    return "sqlite:///" + str(path).replace("%", "%25").replace("?", "%3F")


def _expand_home(path: Path) -> Path:
    """``~/...`` is the user's home folder, as in every other path a config names: a ledger URL from YAML, a
    service's environment or a quoted option reaches no shell to expand it, and taken as written it would make a
    folder named ``~`` in whatever directory the process started in, where a command run from elsewhere finds no
    ledger."""
    try:
        return path.expanduser()
    except RuntimeError:  # no home directory to expand to: the path stays as written
        return path


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ledger URL, None for another store or an in-memory database (``:memory:``, no file);
    a malformed ``sqlite:`` URL is a ``LedgerError``, as for :func:`sqlite_path`."""
    path = sqlite_path(url)
    return None if path is None or str(path) == ":memory:" else path


def in_memory(url: str) -> bool:
    """Whether ``url`` names a SQLite database in the process's memory (``:memory:``). Such a ledger gets no journal:
    its records end with the process whatever happens, and a journal folder beside it (``./:memory:.journal``)
    would replay one process's records into the next one's fresh database."""
    path = sqlite_path(url)
    return path is not None and str(path) == ":memory:"
