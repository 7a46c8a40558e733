"""router's per-user folders (platformdirs' data and cache dirs), where no setting names a file of its own.

They hang off the home folder, which a container may not have: a bare UID (``docker run --user 12345``, a
Kubernetes ``runAsUser``) with no entry in ``/etc/passwd`` and no ``HOME`` leaves platformdirs nothing to expand
``~`` with, and it raises a ``RuntimeError`` that says nothing of router's settings. These raise a
:class:`~router.errors.ConfigError` naming the settings that avoid the folder instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def user_data_folder(instead: str) -> Path:
    """platformdirs' ``user_data_dir("router")``; ``instead`` says which setting names the file elsewhere."""
    from platformdirs import user_data_dir

    try:
        return Path(user_data_dir("router", appauthor=False))
    except RuntimeError as exc:  # platformdirs: `~` cannot be expanded
        raise _no_home("data", "XDG_DATA_HOME", instead) from exc


def user_cache_folder(instead: str) -> Path:
    """platformdirs' ``user_cache_dir("router")``; ``instead`` says which setting names the file elsewhere."""
    from platformdirs import user_cache_dir

    try:
        return Path(user_cache_dir("router", appauthor=False))
    except RuntimeError as exc:
        raise _no_home("cache", "XDG_CACHE_HOME", instead) from exc


def _no_home(kind: str, xdg: str, instead: str) -> ConfigError:
    uid = os.getuid() if hasattr(os, "getuid") else "?"
    return ConfigError(
        f"router's {kind} folder is under the home folder, and there is none: HOME is not set and user id {uid} "
        f"has no home in the user database (a container run with a bare UID); fix: set HOME or {xdg} to a "
        f"writable folder, or {instead}")
