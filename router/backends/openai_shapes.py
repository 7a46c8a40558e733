"""OpenAI's request and answer shapes for what goes beyond text, for the HTTP backend: the body fields of a
request's tools, response format, log probabilities and pass-through parameters, and the tool calls, log
probabilities and a reasoning model's reasoning read back (whole, or as stream deltas), in the key order OpenAI's
own types dump them in, so the proxy can send them on without a model validation in between."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json

from ..options import ModelOptions
from ..tools import delta_call_index, legacy_call_id, new_call_id


def option_fields(options: ModelOptions, reasoning: bool) -> dict[str, Any]:
    """The request's tools, response format, log probabilities and pass-through parameters, as OpenAI's body
    has them (tools in today's shape: a legacy ``functions`` request was converted when it was checked)."""
    out: dict[str, Any] = dict(options.passthrough)
    tools = options.tools
    if tools is not None:
        out["tools"] = tools.openai_tools()
        choice = tools.openai_tool_choice()
        if choice is not None:
            out["tool_choice"] = choice
        if not tools.parallel:  # a legacy request too: its answer holds one `function_call`
            out["parallel_tool_calls"] = False
    if options.response_format is not None:
        out["response_format"] = dict(options.response_format.raw)
    if options.top_logprobs is not None:
        out["logprobs"] = True
        if options.top_logprobs:
            out["top_logprobs"] = options.top_logprobs
    if options.reasoning_effort is not None and reasoning:
        out["reasoning_effort"] = options.reasoning_effort
    return out


def tool_calls(message: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Whole tool calls in OpenAI's key order (a legacy ``function_call`` answer becomes one call)."""
    raw = message.get("tool_calls")
    if not raw and message.get("function_call"):
        fc = message["function_call"]
        raw = [{"id": legacy_call_id(fc["name"]), "type": "function", "function": fc}]
    if not raw:
        return None
    calls = []
    for call in raw:
        fn = call["function"]
        arguments = arguments_text(fn.get("arguments", ""))
        if not isinstance(fn["name"], str) or not isinstance(arguments, str):
            raise TypeError("a tool call's name and arguments must be strings")
        calls.append({"id": str(call.get("id") or new_call_id()), "type": "function",
                      "function": {"name": fn["name"], "arguments": arguments}})
    return calls


def arguments_text(arguments: Any) -> Any:
    """A call's arguments as JSON text, as OpenAI sends them: some endpoints (llama.cpp's server, TGI) send the JSON
    object itself, which OpenAI's clients cannot take as arguments, and which ``str()`` makes Python's repr of
    (``{'city': 'Paris'}``), not JSON. Anything else is returned as it came, for the caller to check."""
    if isinstance(arguments, dict | list):
        return to_json(arguments).decode()
    return arguments


@dataclass
class CallsBegun:
    """The tool calls of a stream whose first delta has been passed on."""

    ids: dict[int, str] = field(default_factory=dict)
    """The id the endpoint gave each call (``""`` where it gave none), by index."""
    named: set[int] = field(default_factory=set)
    """The calls (by index) whose name has been passed on."""


def tool_call_deltas(delta: dict[str, Any], begun: CallsBegun) -> list[dict[str, Any]] | None:
    """Tool-call deltas as OpenAI streams them: each with its ``index`` (which some endpoints leave out, see
    :func:`delta_call_index`), ``id`` and ``type`` in a call's first delta and its name once, the first non-empty
    one (some servers, llama.cpp's Python server among them, repeat the name in every delta, and clients that add
    the pieces up, as the openai SDK does, would get it over and over; others send it after the call's id)."""
    raw = delta.get("tool_calls")
    if not raw:
        return None
    out = []
    for item in raw:
        index = delta_call_index(item, begun.ids)
        d: dict[str, Any] = {"index": index}
        fn = item.get("function") or {}
        first = index not in begun.ids
        if first:
            begun.ids[index] = str(item.get("id") or "")
            d["id"] = begun.ids[index] or new_call_id()
            d["type"] = "function"
        piece = {}
        if fn.get("name") and index not in begun.named:
            begun.named.add(index)
            piece["name"] = str(fn["name"])
        if fn.get("arguments") is not None:
            piece["arguments"] = str(arguments_text(fn["arguments"]))
        if piece:
            d["function"] = piece
        out.append(d)
    return out


REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where OpenAI-compatible endpoints put a reasoning model's reasoning, beside ``content`` in a message or a stream
delta: DeepSeek's API and older vLLM ``reasoning_content``, OpenRouter and newer vLLM ``reasoning`` (some send
both)."""


def reasoning_of(message: dict[str, Any]) -> dict[str, str] | None:
    """The reasoning in a message (or a delta's piece of it) by the field name the endpoint sent it under, so it is
    passed on under that name; ``None`` without any. A field that is not text (no endpoint in use sends one) is left
    out rather than failing an answer whose content is sound."""
    found: dict[str, str] | None = None
    for name in REASONING_FIELDS:
        value = message.get(name)
        if isinstance(value, str) and value:
            found = found or {}
            found[name] = value
    return found


def logprobs_of(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    """``choice.logprobs.content`` as entries in OpenAI's key order (``None`` when the endpoint sent none)."""
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        return None
    return [_entry(e) | {"top_logprobs": [_entry(t) for t in e.get("top_logprobs") or []]} for e in content]


def _entry(e: dict[str, Any]) -> dict[str, Any]:
    raw = e.get("bytes")
    return {"token": str(e["token"]), "logprob": float(e["logprob"]),
            "bytes": [int(b) for b in raw] if isinstance(raw, list) else None}
