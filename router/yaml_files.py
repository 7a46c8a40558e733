"""Read one YAML configuration file (a model card, a policy, the config, a keys file) so that every way the file
can be wrong is a :class:`ConfigError` naming the file, where, and the fix.

PyYAML alone lets several faults through untyped or unnoticed: bytes that are not UTF-8 (``UnicodeDecodeError``
without the file name), a key written twice (the last one silently wins), nesting deep enough to exhaust the
recursion limit (``RecursionError``), a date that does not exist (``ValueError`` from ``datetime``), a value that
contains itself (``&a [*a]``), and aliases that multiply a few lines into millions of values for the validator
to walk (a hang).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationInfo

from .errors import ConfigError

MAX_VALUES = 100_000
"""Values (scalars, lists, mappings) one file may expand to once aliases are followed. A policy or a card has a
few hundred; ten aliases of ten aliases of ... reach millions from a few lines."""


class _DuplicateKey(Exception):
    def __init__(self, key: object, first: int, again: int) -> None:
        super().__init__(key)
        self.key, self.first, self.again = key, first, again


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may repeat keys on purpose
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the constructor below reports it
                continue
        return super().construct_mapping(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expanded_size(root: yaml.Node, path: Path, what: str) -> None:
    """Count the values ``root`` stands for with aliases followed (each shared node once per use), without
    expanding anything; refuse cycles and anything over :data:`MAX_VALUES`."""
    size: dict[int, int] = {}
    open_nodes: set[int] = set()  # the ancestors of the node being expanded
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_nodes.discard(id(node))
            total = size[id(node)] = 1 + sum(size[id(child)] for child in _children(node))
            if total > MAX_VALUES:
                raise ConfigError(
                    f"{path}:{node.start_mark.line + 1}: the {what} expands to more than {MAX_VALUES:,} values "
                    "through aliases (`*name`); fix: write the values out instead of nesting aliases"
                )
            continue
        if id(node) in size:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_nodes:
                raise ConfigError(
                    f"{path}:{child.start_mark.line + 1}: a value contains itself through an alias (`*name`); "
                    "fix: remove the alias"
                )
            if id(child) not in size:
                stack.append((child, False))


def read_yaml(file: str | Path, what: str) -> tuple[Any, str]:
    """The parsed content of ``file`` and its text (for messages that point at lines). ``what`` names the kind
    of file in messages, e.g. ``"model card"``."""
    path = Path(file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}; fix: check the path") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: the {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "fix: save it as UTF-8"
        ) from None
    try:
        return _parse(text, path, what), text
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{path}:{exc.again}: key `{exc.key}` is written twice in one mapping (first on line {exc.first}); "
            "fix: keep one of them"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{mark.line + 1}" if mark is not None else "?"
        problem = getattr(exc, "problem", None) or str(exc)
        if _at_a_tab(text, mark, problem):
            # PyYAML says only "found character '\t' that cannot start any token", which does not name the cause
            raise ConfigError(f"{path}:{at}: not valid YAML: line {at} is indented with a tab, and YAML indents with "
                              f"spaces, not tabs; fix: replace the tabs on line {at} with spaces") from exc
        raise ConfigError(f"{path}:{at}: not valid YAML: {problem}; fix the indentation or quoting") from exc
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply for a {what}; fix: flatten it") from None
    except ValueError as exc:  # a scalar that resolves to a type but cannot be built, e.g. the date 2024-13-45
        fix = "correct the value, or quote it to keep it as text"
        raise ConfigError(f"{path}: not valid YAML: {exc}; fix: {fix}") from exc


def _at_a_tab(text: str, mark: yaml.Mark | None, problem: str) -> bool:
    """Whether PyYAML stopped at a tab (``'\\t' that cannot start any token``, ``a tab character where an
    indentation space is expected``)."""
    return "tab character" in problem or (mark is not None and 0 <= mark.index < len(text)
                                          and text[mark.index] == "\t")


def read_yaml_mapping(file: str | Path, what: str, fields: str) -> tuple[dict[Any, Any], str]:
    """:func:`read_yaml` for a file that must hold a mapping (a model card, a policy); ``fields`` names a few of
    its fields for the message when it does not, e.g. ``"name, tier, backend, energy, ..."``."""
    path = Path(file)
    data, text = read_yaml(path, what)
    if data is None:  # PyYAML reads an empty file, or one of comments only, as null
        raise ConfigError(f"{path}: the {what} is empty (no YAML in it, at most comments); fix: write its fields "
                          f"({fields}), or remove the file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a {what} is a YAML mapping ({fields}), not a {_yaml_kind(data)}")
    return data, text


def _yaml_kind(data: Any) -> str:
    return "list" if isinstance(data, list) else "single value"


def _parse(text: str, path: Path, what: str) -> Any:
    loader = _StrictLoader(text)  # the reader refuses control characters here already
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, path, what)
        return loader.construct_document(node)
    finally:
        loader.dispose()


YAML_SUFFIXES = (".yaml", ".yml")
"""Both spellings of a YAML file's suffix: a card or a policy saved as ``eco.yml`` is no less one."""


def yaml_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """The YAML files in ``folder`` (in its sub-folders too with ``recursive``), sorted: model cards, policies.
    Hidden ones are not: the ``._eco.yaml`` macOS puts beside each file in archives and on other file systems, an
    editor's lock (``.#eco.yaml``, a link to nowhere) or swap file, or a file in ``.git``."""
    find = folder.rglob if recursive else folder.glob
    return sorted(f for suffix in YAML_SUFFIXES for f in find(f"*{suffix}")
                  if not any(part.startswith(".") for part in f.relative_to(folder).parts))


def named_yaml_file(folder: Path, name: str) -> Path | None:
    """``folder/name.yaml``, else ``folder/name.yml``, else None: a policy (or card) named on a command line."""
    return next((f for f in (folder / f"{name}{suffix}" for suffix in YAML_SUFFIXES) if f.is_file()), None)


def takes_a_number(annotation: Any) -> bool:
    """Whether a field's type is (or includes) ``int`` or ``float``, looking through ``| None`` and ``Annotated``."""
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Literal, dict, list):
        return False
    return any(takes_a_number(a) for a in get_args(annotation))


def meant_field(model: type[BaseModel], loc: Sequence[str | int]) -> str | None:
    """For pydantic's "Extra inputs are not permitted" at ``loc`` in ``model``: the field of the mapping the unknown
    key is in that is spelt much like it (``jouls``: ``joules``), else None. The mapping's model is found by walking
    ``loc`` through the field types (list indexes, dict keys and a union's tag pick no field)."""
    if not loc or not isinstance(loc[-1], str):
        return None
    models = [model]
    for part in loc[:-1]:
        inner = [m for m in models if isinstance(part, str) and part in m.model_fields]
        if inner:
            models = [sub for m in inner for sub in _models_in(m.model_fields[str(part)].annotation)]
        else:  # a discriminated union names the member in `loc` by its tag (`backend.openai.x`)
            models = [m for m in models if _tagged(m, part)] or models
    fields = {name for m in models for name in m.model_fields}
    close = difflib.get_close_matches(loc[-1], sorted(fields), n=1)
    return close[0] if close else None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field's type holds: itself, or inside ``| None``, ``list[...]``, ``dict[..., ...]``,
    ``Annotated`` and unions."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _tagged(model: type[BaseModel], tag: str | int) -> bool:
    return any(get_origin(f.annotation) is Literal and tag in get_args(f.annotation)
               for f in model.model_fields.values())


def no_boolean_for_a_number(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """For a ``field_validator("*", mode="before")``: refuse ``true``/``false`` where the field is a number. YAML
    reads ``true``, ``yes`` and ``on`` as booleans and pydantic reads a boolean as 1, so ``joules: true`` would be
    1 J and ``context_length: yes`` one token."""
    if isinstance(value, bool) and info.field_name and takes_a_number(model.model_fields[info.field_name].annotation):
        raise ValueError("a number is needed here, not true or false; fix: write the number itself")
    return value
