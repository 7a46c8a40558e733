"""Structured output: OpenAI's ``response_format`` checked when the request arrives, and every answer checked
against it before it is accepted.

``{"type": "json_object"}`` asks for one JSON object; ``{"type": "json_schema", "json_schema": {"name", "schema",
"strict"}}`` for JSON that matches a schema. Local models are held to it by a grammar while they generate
(llama.cpp); remote models get the parameter as it came. Either way the answer is validated here on its way back,
because a grammar can be cut short by ``max_tokens`` and a remote model may ignore the parameter: an answer that
fails is never returned as if it were good (the Router tries the next capable model, or ends with
:class:`~router.errors.StructuredOutputError`).

Validation uses ``jsonschema`` (Draft 2020-12, the dialect OpenAI's structured outputs use); validators are
compiled once per distinct schema.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from .errors import BadRequestError

_MAX_SCHEMA_CHARS = 100_000
"""Longest schema accepted (as JSON text): grammars and validators are built from it per distinct schema."""
_MAX_ANSWER_DEPTH = 64
"""Deepest answer checked against a schema once validation has run out of stack: deeper is the answer's fault."""
SCHEMA_PARAM = "response_format.json_schema.schema"
OPENAI_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What OpenAI accepts as a name it gives rules for (``response_format.json_schema.name``, a tool function's
name): checked whole, with :meth:`re.Pattern.fullmatch` (``$`` would let a final newline through)."""


@dataclass(frozen=True)
class ResponseFormat:
    """A checked ``response_format`` that asks for JSON (``text`` needs no object of its own)."""

    kind: Literal["json_object", "json_schema"]
    raw: Mapping[str, Any]
    """The parameter as the caller sent it (what a remote model is sent)."""
    schema_json: str | None = None
    """The schema as canonical JSON text (``json_schema`` only): the key of every cache built from it."""
    name: str | None = None
    strict: bool = False

    @property
    def schema(self) -> dict[str, Any] | None:
        return json.loads(self.schema_json) if self.schema_json is not None else None

    def problem(self, text: str) -> str | None:
        """Why ``text`` does not satisfy this format, or ``None`` when it does."""
        return json_problem(text, self.schema_json, what="the answer", want_object=True, param=SCHEMA_PARAM)


def check_response_format(value: Any) -> ResponseFormat | None:
    """``response_format`` as sent: ``None`` (or ``text``) for plain text, else a :class:`ResponseFormat`. A schema
    that is not valid JSON Schema is a 400 naming it, before any model runs."""
    if value is None:
        return None
    param = "response_format"
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise BadRequestError("`response_format` must be an object with a `type` (text, json_object or json_schema)",
                              param=param)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat("json_object", dict(value))
    if kind != "json_schema":
        raise BadRequestError(f"`response_format.type` {kind!r} is not supported; use text, json_object or "
                              "json_schema", param="response_format.type")
    spec = value.get("json_schema")
    if not isinstance(spec, Mapping):
        raise BadRequestError("`response_format.json_schema` must be an object with `name` and `schema`",
                              param="response_format.json_schema")
    name = spec.get("name")
    if not isinstance(name, str) or not OPENAI_NAME.fullmatch(name):
        raise BadRequestError("`response_format.json_schema.name` must be 1-64 letters, digits, '_' or '-' (as "
                              "OpenAI has it: no spaces or dots)", param="response_format.json_schema.name")
    schema = spec.get("schema", {})
    if not isinstance(schema, Mapping):
        raise BadRequestError("`response_format.json_schema.schema` must be a JSON Schema object",
                              param="response_format.json_schema.schema")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise BadRequestError("`response_format.json_schema.strict` must be a boolean",
                              param="response_format.json_schema.strict")
    schema_json = canonical_schema(schema, SCHEMA_PARAM)
    return ResponseFormat("json_schema", dict(value), schema_json, name, bool(strict))


def canonical_schema(schema: Mapping[str, Any], param: str, *, validated: bool = True) -> str:
    """``schema`` as canonical JSON text, checked to be a valid JSON Schema (a 400 naming ``param`` if not).

    ``validated``: answers will be checked against it, so every ``$ref`` must resolve within the schema (a remote
    one is never fetched); found out after the model has run, it could only be an error."""
    try:
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        raise BadRequestError(f"`{param}` is not plain JSON", param=param) from None
    except RecursionError:
        raise BadRequestError(f"`{param}` nests too deeply", param=param) from None
    if len(text) > _MAX_SCHEMA_CHARS:
        raise BadRequestError(f"`{param}` is longer than {_MAX_SCHEMA_CHARS:,} characters", param=param)
    try:
        _validator(text)
        ref = _unresolvable_ref(text) if validated else None
    except _SchemaError as exc:
        raise BadRequestError(f"`{param}` is not a valid JSON Schema: {exc.message}", param=param) from None
    except RecursionError:
        raise BadRequestError(f"`{param}` nests too deeply", param=param) from None
    if ref is not None:
        raise BadRequestError(f"`{param}` refers to {ref[:200]!r}, which is not in the schema: a `$ref` must point "
                              "inside the schema (e.g. '#/$defs/name'); remote schemas are never fetched", param=param)
    return text


def json_problem(text: str, schema_json: str | None, *, what: str, want_object: bool = False, plural: bool = False,
                 param: str | None = None) -> str | None:
    """Why ``text`` is not JSON (an object, when ``want_object``) matching ``schema_json``; ``None`` when it is.

    ``what`` names the text in the message (``plural``: "the arguments ... are"). A schema that cannot be applied
    to the answer (one that refers to itself without end) is the request's fault: a 400 naming ``param``."""
    be, do = ("are", "do") if plural else ("is", "does")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        at = "" if exc.msg.endswith(" at") else " at"  # "Unterminated string starting at" ends with it already
        return f"{what} {be} not valid JSON ({exc.msg}{at} character {exc.pos})"
    except ValueError:  # Python's limit on the digits of an integer it converts (sys.get_int_max_str_digits)
        return f"{what} {be} JSON with an integer too long to read (over {sys.get_int_max_str_digits()} digits)"
    except RecursionError:
        return f"{what} {be} JSON nested too deeply"
    if want_object and schema_json is None and not isinstance(value, dict):
        return f"{what} {be} JSON but not an object"
    if schema_json is None:
        return None
    try:
        error = _best_error(_validator(schema_json), value)
    except RecursionError:
        if _depth(value) > _MAX_ANSWER_DEPTH:
            return f"{what} {be} JSON nested too deeply to check against the schema"
        raise BadRequestError(f"`{param or 'the schema'}` cannot be applied: it refers to itself without end "
                              "(a `$ref` cycle that never reaches a property or an item)", param=param) from None
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{what} {do} not match the schema at {where}: {error.message[:200]}"


def _depth(value: Any) -> int:
    """How deeply ``value`` nests (iteratively: it may be deeper than the stack allows)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, depth + 1) for v in item)
    return deepest


# -- jsonschema, imported when first needed ---------------------------------------------------------------------
class _SchemaError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> Any:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError
    from referencing import Registry

    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise _SchemaError(exc.message[:200]) from None
    # An empty registry retrieves nothing: jsonschema's default would fetch a remote `$ref` over the network.
    return Draft202012Validator(schema, registry=Registry())


@lru_cache(maxsize=256)
def _unresolvable_ref(schema_json: str) -> str | None:
    """The first ``$ref`` / ``$dynamicRef`` in the schema that does not resolve, or ``None``.

    Walks every subschema in its own base URI as the validator would, and every target a reference reaches (it may
    lie under a keyword that is no subschema), with the same registry (nothing is fetched)."""
    from jsonschema_specifications import REGISTRY
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    root = DRAFT202012.create_resource(json.loads(schema_json))
    pending = [(REGISTRY.resolver_with_root(root), root)]
    seen: set[int] = set()
    while pending:  # a loop, not recursion: a schema may nest deeper than the stack
        resolver, resource = pending.pop()
        contents = resource.contents
        if id(contents) in seen:
            continue
        seen.add(id(contents))
        if isinstance(contents, Mapping):
            for key in ("$ref", "$dynamicRef"):
                ref = contents.get(key)
                if not isinstance(ref, str):
                    continue
                try:
                    resolved = resolver.lookup(ref)
                except Unresolvable:
                    return ref
                pending.append((resolved.resolver, DRAFT202012.create_resource(resolved.contents)))
        pending.extend((resolver.in_subresource(sub), sub) for sub in resource.subresources())
    return None


def _best_error(validator: Any, value: Any) -> Any:
    from jsonschema.exceptions import best_match

    return best_match(validator.iter_errors(value))
