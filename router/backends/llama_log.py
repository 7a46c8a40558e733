"""llama.cpp's own log, into Python logging (logger ``router.llama_cpp``).

Why not llama-cpp-python's: its level table is an older ``ggml.h``'s. In 0.3.36 llama.cpp's warnings print as
errors on every model load ("using full-size SWA cache", a token "not marked as control") and its errors count as
debug lines, so a file that is not a GGUF fails with "Failed to load model from file" and nothing about why.
Here warnings are INFO (``router -v`` shows them: they are llama.cpp's own choices, nothing to act on), errors are
errors, and the errors of a load are kept for its exception.

With its log here, llama-cpp-python's other means of quiet goes: ``suppress_stdout_stderr``, which points the
whole process's file descriptors 1 and 2 (and ``sys.stdout``/``sys.stderr``) at ``/dev/null`` while a model
loads. A model loads on whichever thread first needs it (a request, the judge's thread), so meanwhile every other
thread's output vanished: the application's own prints and log lines included.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("router.llama_cpp")

# ggml.h: NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4; CONT 5 continues the previous line at its level
_LEVELS = {0: logging.INFO, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.ERROR}
_CONT = 5

_installed: Any = None  # the ctypes callback: llama.cpp holds a bare pointer to it, so it must stay alive
_install_lock = threading.Lock()
_local = threading.local()  # .level: the last line's level; .errors: a load's error lines, while one is captured


def _on_log(level: int, text: bytes, user_data: Any) -> None:
    try:
        if level == _CONT:
            level = getattr(_local, "level", 2)
        _local.level = level
        line = text.decode("utf-8", "replace").rstrip()
        if not line:
            return
        errors = getattr(_local, "errors", None)
        if level == 4 and errors is not None:
            errors.append(line)
        log.log(_LEVELS.get(level, logging.DEBUG), "%s", line)
    except Exception:  # noqa: BLE001, S110 - an exception must not cross into llama.cpp's C frames
        pass


def install_log_bridge() -> None:
    """Route llama.cpp's log here from now on (idempotent; after ``import llama_cpp``, which sets its own)."""
    global _installed
    with _install_lock:
        if _installed is not None:
            return
        import llama_cpp
        import llama_cpp._internals
        import llama_cpp.llama
        import llama_cpp.llama_chat_format

        _installed = llama_cpp.llama_log_callback(_on_log)
        llama_cpp.llama_log_set(_installed, ctypes.c_void_p(0))
        for module in (llama_cpp.llama, llama_cpp._internals, llama_cpp.llama_chat_format):
            if hasattr(module, "suppress_stdout_stderr"):  # which modules import it differs between versions
                vars(module)["suppress_stdout_stderr"] = _KeepProcessOutput


class _KeepProcessOutput:
    """Stands in for llama-cpp-python's ``suppress_stdout_stderr`` (same signature): silences nothing, since
    llama.cpp's log already comes here (the module docstring says why silencing was wrong)."""

    def __init__(self, disable: bool = True) -> None:
        self.disable = disable

    def __enter__(self) -> _KeepProcessOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@contextlib.contextmanager
def load_errors() -> Iterator[list[str]]:
    """The error lines llama.cpp logs on this thread while the block runs (a model load)."""
    errors: list[str] = []
    _local.errors = errors
    try:
        yield errors
    finally:
        _local.errors = None
