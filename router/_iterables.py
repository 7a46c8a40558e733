"""Sequences given as any iterable, as the openai SDK takes them: its request types say ``Iterable[...]`` for
``messages``, ``tools``, a message's content parts and tool calls, and ``SequenceNotStr[str]`` for ``stop``, so
code written for it may pass a tuple or a generator where JSON (and this router's checks) has a list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from itertools import islice
from typing import Any

from pydantic import BaseModel


def as_list(value: Any, most: int | None = None) -> Any:
    """``value`` as a list where it is an iterable of items: a list as it is (what JSON gives), another iterable
    read once, no further than ``most + 1`` items (a generator may never end: the caller's length check then
    refuses it). Anything else comes back as it is, for the caller's check to refuse in its own words: text and
    bytes, one object on its own (a dict or a pydantic model, themselves iterable, would be taken apart into their
    keys or fields), None, a number."""
    if type(value) is list or not isinstance(value, Iterable) or isinstance(value, str | bytes | bytearray | Mapping
                                                                            | BaseModel):
        return value
    return list(value if most is None else islice(value, most + 1))


def count_of(original: Any, items: list[Any], most: int) -> str:
    """How many items ``original`` has, for an error saying there are too many: exactly where it has a length, else
    "more than ``most``" (:func:`as_list` read one past ``most``, and no further)."""
    return f"{len(items):,}" if isinstance(original, Sized) else f"more than {most:,}"
