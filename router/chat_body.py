"""The body of a chat completion request, checked as ``POST /v1/chat/completions`` checks it: JSON types, the
parameters only the caller's headers may set, ``messages`` required, a ``router:<policy>`` model naming a policy
that exists. Batch lines are chat requests and go through the same function (:mod:`router.batch.scheduler`), so a
line the chat route would refuse is refused with the same status and message. A module of its own, outside
:mod:`router.proxy`, so that library batches do not import the web stack."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._request import ROUTER_ALIASES, STREAM_OPTIONS_NEED_STREAM, non_finite
from .errors import BadRequestError, UnknownModelError
from .yaml_files import yaml_files

if TYPE_CHECKING:
    from .config import RouterConfig

# Body fields and the JSON types they may have (None is always allowed). Everything else the Router judges:
# unknown fields are a 400 naming them, and message contents are validated there. What the Router does with each
# OpenAI parameter (acted on, passed through, ignored, or refused) is in router/_request.py and docs/proxy.md.
_NUM = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,), "messages": (list,), "stream": (bool,), "stream_options": (dict,),
    "max_tokens": (int,), "max_completion_tokens": (int,), "n": (int,), "seed": (int,),
    "temperature": _NUM, "top_p": _NUM, "presence_penalty": _NUM, "frequency_penalty": _NUM,
    "stop": (str, list), "user": (str,), "logit_bias": (dict,), "metadata": (dict,), "store": (bool,),
    "tools": (list,), "tool_choice": (str, dict), "parallel_tool_calls": (bool,), "functions": (list,),
    "function_call": (str, dict), "service_tier": (str,), "response_format": (dict,), "logprobs": (bool,),
    "top_logprobs": (int,), "reasoning_effort": (str,), "modalities": (list,), "audio": (dict,),
    "prediction": (dict,), "verbosity": (str,), "web_search_options": (dict,), "prompt_cache_key": (str,),
    "safety_identifier": (str,), "prompt_cache_retention": (str,), "prompt_cache_options": (dict,),
    "moderation": (dict,),
    "policy": (str,), "accuracy_target": _NUM, "max_energy_j": _NUM, "deadline_s": _NUM,
}  # fmt: skip
# Router parameters a body may not set: what the headers say, and the openai SDK's client-side arguments (the SDK
# applies them before sending; in a body they could only smuggle in what the headers set)
_FROM_HEADERS_ONLY = {"api_key", "request_id", "cancel", "extra_body", "extra_headers", "timeout"}
_STREAM_OPTIONS = ("include_usage", "include_obfuscation")
"""OpenAI's ``stream_options`` keys, both booleans: ``include_usage`` is acted on; ``include_obfuscation`` (padding
against length side channels) has nothing to do here. Other keys are ignored, as OpenAI may add more."""


def check_types(body: dict[str, Any]) -> None:
    for name, value in body.items():
        if name in _FROM_HEADERS_ONLY:  # null too: the handler passes these itself, a second value is a clash
            raise BadRequestError(f"unknown parameter: {name}", param=name)
        if value is None:
            continue
        want = _TYPES.get(name)
        if want is None:
            continue
        if isinstance(value, bool) and bool not in want or not isinstance(value, want):
            names = "a number" if want == _NUM else " or ".join(_a(_json_name(t)) for t in want)
            raise BadRequestError(f"`{name}` must be {names}, got {a_json_type(value)}", param=name)
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequestError(f"`{name}` must be a finite number, got {non_finite(value)}", param=name)
    stop = body.get("stop")
    if isinstance(stop, list) and not all(isinstance(s, str) for s in stop):
        raise BadRequestError("`stop` must be a string or a list of strings", param="stop")
    options = body.get("stream_options")
    if options is not None:
        for key in _STREAM_OPTIONS:  # "false" is truthy: a string here would turn usage on
            value = options.get(key)
            if value is not None and not isinstance(value, bool):
                raise BadRequestError(f"`stream_options.{key}` must be a boolean, got {a_json_type(value)}",
                                      param=f"stream_options.{key}")


def a_json_type(value: Any) -> str:
    """What ``value`` is, in JSON's words and with its article (``an integer``, ``an array``, ``null``), as a 400
    names what it got."""
    return _a(_json_name(type(value)))


def _a(noun: str) -> str:
    """``noun`` with its indefinite article (an integer, an array, an object; null has none)."""
    if noun == "null":
        return noun
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _json_name(t: type) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "object",
            type(None): "null"}.get(t, t.__name__)


def chat_request(body: dict[str, Any], policies: set[str]) -> tuple[Any, str, bool, dict[str, Any]]:
    """``(messages, model, stream, params)`` of a parsed request body, after the chat route's checks; ``params``
    is ``body`` itself, less those three (the rest of the Router's parameters). ``policies``: the names a
    ``router:<policy>`` model may use (:func:`policy_names`; empty: the Router judges)."""
    check_types(body)
    if "messages" not in body:
        raise BadRequestError("`messages` is required", param="messages")
    stream = bool(body.pop("stream", False))
    if not stream and body.get("stream_options") is not None:
        raise BadRequestError(STREAM_OPTIONS_NEED_STREAM.format(stream="`stream: true`"), param="stream_options")
    model = body.pop("model", None) or "router"
    check_policy_alias(model, policies)
    messages = body.pop("messages")
    return messages, model, stream, body


def check_policy_alias(model: str, policies: set[str]) -> None:
    head, _, policy = model.partition(":")
    if head.lower() in ROUTER_ALIASES and policy and policies and policy not in policies:
        raise UnknownModelError(
            f"unknown policy {policy!r} in model {model!r}; use one of: "
            + ", ".join(f"router:{p}" for p in sorted(policies)), param="model")


def policy_names(config: RouterConfig) -> set[str]:
    """The policies of the config's policies folder, by file name."""
    folder = Path(config.policies_dir)
    if not folder.is_dir():
        return set()
    return {p.stem for p in yaml_files(folder)}


__all__ = ["a_json_type", "chat_request", "check_policy_alias", "check_types", "policy_names"]
