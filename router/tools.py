"""Tool calling: OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls`` (and the legacy ``functions`` /
``function_call``) checked when a request arrives, tool-call history in messages checked, and the tool calls a
model makes checked before they are returned.

A request that offers tools, or whose history holds tool calls, needs a model that can call tools: such a
request is the ``tools`` task by rule (:data:`TOOLS_TASK`; the classifier, trained on plain text, is not asked),
so no specialist ever gets it, and only models whose card lists the ``tools`` capability are candidates.

The legacy parameters are turned into their ``tools`` equivalents here, so every backend sees one shape; the
answer goes back in the legacy shape (``function_call``) to a request that used them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._iterables import as_list, count_of
from .classify.base import Classification
from .errors import BadRequestError
from .structured import OPENAI_NAME, canonical_schema, json_problem

if TYPE_CHECKING:
    from .types import ChatMessage

TOOLS_TASK = "tools"
"""The task of every request that offers tools or carries tool-call history."""

_MAX_TOOLS = 128


@dataclass(frozen=True)
class Tool:
    """One function the model may call: its name, its parameters' schema (canonical JSON), and whether the
    caller asked for strict arguments."""

    name: str
    parameters_json: str
    strict: bool
    raw: Mapping[str, Any]
    """The ``{"type": "function", "function": {...}}`` object as sent (what a remote model is sent)."""
    param: str = "tools"
    """Where the parameters' schema was in the request (``tools[0].function.parameters``), for errors naming it."""


@dataclass(frozen=True)
class ToolOptions:
    """The checked tool parameters of one request."""

    tools: tuple[Tool, ...]
    choice: str | None
    """``auto``, ``none``, ``required``, or the name of the one function the model must call."""
    parallel: bool
    """May the model make several calls in one answer (OpenAI's default: yes)."""
    legacy: bool = False
    """The request used ``functions``/``function_call``: answer with ``function_call``, one call at most."""

    def tool(self, name: str) -> Tool | None:
        return next((t for t in self.tools if t.name == name), None)

    def described(self) -> str:
        """The functions as a model reads them: each one's name, description and parameters' schema, one after
        another (the ChatML function-calling format writes them so; the prompt-token estimate counts them)."""
        parts = []
        for t in self.tools:
            description = t.raw["function"].get("description")
            parts.append(f"\nfunctions.{t.name}:\n" + (f"// {description}\n" if description else "")
                         + t.parameters_json + "\n")
        return "".join(parts)

    def openai_tools(self) -> list[dict[str, Any]]:
        return [dict(t.raw) for t in self.tools]

    def openai_tool_choice(self) -> str | dict[str, Any] | None:
        if self.choice in (None, "auto", "none", "required"):
            return self.choice
        return {"type": "function", "function": {"name": self.choice}}

    def problem(self, calls: Sequence[Mapping[str, Any]]) -> str | None:
        """Why the calls a model made are not acceptable (unknown function, arguments that are not JSON, or not
        the schema of a ``strict`` function; a call missing where one was required), or ``None``."""
        if not calls:
            if self.choice == "required" or (self.choice not in (None, "auto", "none")):
                return "the model answered with text where a tool call was required"
            return None
        if self.choice == "none":
            return "the model called a tool although tool_choice is none"
        for call in calls:
            fn = call.get("function") or {}
            name = fn.get("name")
            tool = self.tool(name) if isinstance(name, str) else None
            if tool is None:
                return f"the model called an unknown function {name!r}"
            if self.choice not in (None, "auto", "none", "required") and name != self.choice:
                return f"the model called {name!r} where tool_choice names {self.choice!r}"
            args = fn.get("arguments")
            if not isinstance(args, str):
                return f"the arguments of the call to {name!r} are not a JSON string"
            problem = json_problem(args, tool.parameters_json if tool.strict else None,
                                   what=f"the arguments of the call to {name!r}", want_object=True, plural=True,
                                   param=tool.param)
            if problem is not None:
                return problem
        if len(calls) > 1 and not self.parallel:
            if self.legacy:
                return "the model made several function calls although a `functions` request allows one"
            return "the model made several tool calls although parallel_tool_calls is false"
        return None


def check_tools(tools: Any, tool_choice: Any, parallel_tool_calls: Any, functions: Any,
                function_call: Any) -> ToolOptions | None:
    """The tool parameters checked and normalised (``None``: the request offers no tools)."""
    legacy = functions is not None or function_call is not None
    tools, functions = as_list(tools, _MAX_TOOLS), as_list(functions, _MAX_TOOLS)  # the SDK takes any iterable
    if legacy and (tools is not None or tool_choice is not None):
        raise BadRequestError("use either `tools`/`tool_choice` or the legacy `functions`/`function_call`, not both",
                              param="functions")
    # as OpenAI answers them ("[] is too short - 'tools'", "... - 'functions'"): an empty list offers nothing
    for name, offered in (("tools", tools), ("functions", functions)):
        if isinstance(offered, list) and not offered:
            raise BadRequestError(f"`{name}` is empty: offer at least one function, or leave `{name}` out",
                                  param=name)
    if parallel_tool_calls is not None:
        if not isinstance(parallel_tool_calls, bool):
            raise BadRequestError("`parallel_tool_calls` must be a boolean", param="parallel_tool_calls")
        if tools is None:  # as OpenAI: it means nothing without `tools` (legacy `functions` allow one call)
            raise BadRequestError("`parallel_tool_calls` is only allowed when `tools` are specified: offer the "
                                  "functions in `tools`, or leave `parallel_tool_calls` out",
                                  param="parallel_tool_calls")
    if tools is None and tool_choice not in (None, "none"):
        # as OpenAI answers it; `none` is let through: it asks for what a request without tools gets anyway
        raise BadRequestError("`tool_choice` is only allowed when `tools` are specified: offer the function(s) "
                              "the model may call in `tools`, or leave `tool_choice` out", param="tool_choice")
    if legacy:
        if functions is not None and (not isinstance(functions, list)
                                      or not all(isinstance(f, Mapping) for f in functions)):
            raise BadRequestError("`functions` must be a list of function objects", param="functions")
        tools = [{"type": "function", "function": f} for f in functions] if functions is not None else None
        tool_choice = function_call
        param_tools, param_choice = "functions", "function_call"
    else:
        param_tools, param_choice = "tools", "tool_choice"
    if tools is not None and (not isinstance(tools, list) or len(tools) > _MAX_TOOLS):
        raise BadRequestError(f"`{param_tools}` must be a list of at most {_MAX_TOOLS} tools", param=param_tools)
    if not tools:  # none offered: a plain request, which no choice may demand a call of
        if tool_choice not in (None, "none", "auto"):
            raise BadRequestError(f"`{param_choice}` needs `{param_tools}` with at least one function: offer the "
                                  f"function(s) the model may call, or send `{param_choice}: none`", param=param_choice)
        return None
    checked = tuple(_tool(i, t, param_tools) for i, t in enumerate(tools))
    names = [t.name for t in checked]
    if len(set(names)) != len(names):
        raise BadRequestError(f"`{param_tools}` names a function twice", param=param_tools)
    choice = _choice(tool_choice, names, param_choice, legacy)
    parallel = (parallel_tool_calls is not False) and not legacy
    return ToolOptions(checked, choice, parallel, legacy)


def _tool(i: int, raw: Any, param: str) -> Tool:
    where = f"{param}[{i}]"
    if not isinstance(raw, Mapping) or raw.get("type") != "function" or not isinstance(raw.get("function"), Mapping):
        raise BadRequestError(f"`{where}` must be {{'type': 'function', 'function': {{'name', 'parameters'}}}}",
                              param=where)
    fn = raw["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not OPENAI_NAME.fullmatch(name):
        raise BadRequestError(f"`{where}.function.name` must be 1-64 letters, digits, '_' or '-'",
                              param=f"{where}.function.name")
    description = fn.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequestError(f"`{where}.function.description` must be a string", param=f"{where}.function.description")
    parameters = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, Mapping):
        raise BadRequestError(f"`{where}.function.parameters` must be a JSON Schema object",
                              param=f"{where}.function.parameters")
    strict = fn.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise BadRequestError(f"`{where}.function.strict` must be a boolean", param=f"{where}.function.strict")
    at = f"{where}.function.parameters"
    # only a strict function's arguments are validated against its schema: only then must its refs resolve
    return Tool(name, canonical_schema(parameters, at, validated=bool(strict)), bool(strict),
                {"type": "function", "function": dict(fn)}, at)


def _choice(value: Any, names: list[str], param: str, legacy: bool) -> str | None:
    if value is None or value in ("auto", "none", "required"):
        if legacy and value == "required":
            raise BadRequestError("`function_call` is `none`, `auto` or {'name': ...}", param=param)
        return value
    name = None
    if isinstance(value, Mapping):
        if legacy:
            name = value.get("name")
        elif value.get("type") == "function" and isinstance(value.get("function"), Mapping):
            name = value["function"].get("name")
    if not isinstance(name, str):
        shape = "{'name': ...}" if legacy else "{'type': 'function', 'function': {'name': ...}}"
        raise BadRequestError(f"`{param}` must be none, auto, required or {shape}", param=param)
    if name not in names:
        raise BadRequestError(f"`{param}` names {name!r}, which is not among the tools offered", param=param)
    return name


# -- messages ---------------------------------------------------------------------------------------------------
MAX_HISTORY_CALLS = 128
"""Tool calls one assistant turn of the history may carry: OpenAI's limit (``array_above_max_length``)."""


def check_tool_fields(i: int, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The tool fields of ``messages[i]`` checked (an assistant turn's ``tool_calls`` / legacy ``function_call``,
    a tool turn's ``tool_call_id``, a legacy ``function`` turn); returns the message in today's shape."""
    role = raw.get("role")
    out = dict(raw)
    if role == "assistant" and out.get("function_call") is not None:
        call = out.pop("function_call")
        if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
            raise BadRequestError(f"messages[{i}].function_call must be {{'name', 'arguments'}}",
                                  param=f"messages[{i}].function_call")
        out["tool_calls"] = [{"id": legacy_call_id(call["name"]), "type": "function",
                              "function": {"name": call["name"], "arguments": call.get("arguments", "")}}]
    if role == "function":  # a legacy function result: the tool turn answering the call made just before
        name = out.get("name")
        if not isinstance(name, str):
            raise BadRequestError(f"messages[{i}].name is required on a `function` message",
                                  param=f"messages[{i}].name")
        out["role"] = "tool"
        out["tool_call_id"] = legacy_call_id(name)
    calls = given = out.get("tool_calls")
    if calls is not None:
        calls = as_list(calls, MAX_HISTORY_CALLS)  # a tuple or a generator: the openai SDK takes any iterable
        if out.get("role") != "assistant":
            raise BadRequestError(f"messages[{i}].tool_calls: only assistant messages carry tool calls",
                                  param=f"messages[{i}].tool_calls")
        if not isinstance(calls, list):
            raise BadRequestError(f"messages[{i}].tool_calls must be a list", param=f"messages[{i}].tool_calls")
        if len(calls) > MAX_HISTORY_CALLS:
            raise BadRequestError(f"messages[{i}].tool_calls has {count_of(given, calls, MAX_HISTORY_CALLS)} calls; "
                                  f"at most {MAX_HISTORY_CALLS} (as OpenAI)", param=f"messages[{i}].tool_calls",
                                  code="array_above_max_length")
        out["tool_calls"] = [_history_call(i, j, c) for j, c in enumerate(calls)] or None
    if out.get("role") == "tool":
        if not isinstance(out.get("tool_call_id"), str) or not out["tool_call_id"]:
            raise BadRequestError(f"messages[{i}].tool_call_id is required on a tool message (the id of the call it "
                                  "answers)", param=f"messages[{i}].tool_call_id")
    elif out.get("tool_call_id") is not None:
        raise BadRequestError(f"messages[{i}].tool_call_id: only tool messages answer a tool call",
                              param=f"messages[{i}].tool_call_id")
    return out


def check_tool_turns(messages: Sequence[ChatMessage]) -> None:
    """A conversation with tool turns, checked as OpenAI checks it (a 400 there): each tool message answers a call
    of the assistant message with ``tool_calls`` just before it (other tool messages between), and each of those
    calls is answered before the conversation goes on. A history cut inside a tool exchange (an app trimming old
    turns) otherwise reached a local model as a prompt that answers calls nobody made."""
    calls: set[str] = set()  # the ids of the tool calls the tool messages now answer
    unanswered: list[str] = []
    for i, m in enumerate(messages):
        if m.role == "tool":
            if not calls:
                raise BadRequestError(
                    f"messages[{i}]: a tool message must answer a call of the assistant message with `tool_calls` "
                    "just before it (other tool messages between); keep that assistant message in the history, "
                    "or leave this tool message out", param=f"messages[{i}].role")
            if m.tool_call_id not in calls:
                raise BadRequestError(
                    f"messages[{i}].tool_call_id {m.tool_call_id!r} is not the id of a call in the `tool_calls` of "
                    f"the assistant message before it (those are: {', '.join(sorted(calls))})",
                    param=f"messages[{i}].tool_call_id")
            if m.tool_call_id in unanswered:
                unanswered.remove(m.tool_call_id)
            continue
        if unanswered:
            raise BadRequestError(
                f"messages[{i}]: the assistant message before it called tools that no tool message answers "
                f"({', '.join(unanswered)}); send a tool message with each call's `tool_call_id` right after it",
                param=f"messages[{i}]")
        calls = {c["id"] for c in m.tool_calls} if m.tool_calls else set()
        unanswered = list(dict.fromkeys(c["id"] for c in m.tool_calls)) if m.tool_calls else []


def _history_call(i: int, j: int, call: Any) -> dict[str, Any]:
    where = f"messages[{i}].tool_calls[{j}]"
    fn = call.get("function") if isinstance(call, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not isinstance(call.get("id"), str):
        raise BadRequestError(f"{where} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}",
                              param=where)
    args = fn.get("arguments", "")
    if not isinstance(args, str):  # some clients send the arguments as an object
        try:
            args = json.dumps(args)
        except (TypeError, ValueError):
            raise BadRequestError(f"{where}.function.arguments must be a JSON string", param=where) from None
    return {"id": call["id"], "type": "function", "function": {"name": fn["name"], "arguments": args}}


def legacy_call_id(name: str) -> str:
    """The id a legacy ``function_call`` gets in tool-call form (legacy calls have none; the name pairs them)."""
    return f"call_{name}"


def new_call_id() -> str:
    return "call_" + os.urandom(12).hex()


# -- the legacy answer shape ------------------------------------------------------------------------------------
def legacy_message(tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """``function_call`` for the first call (a legacy request allows one)."""
    fn = tool_calls[0]["function"]
    return {"name": fn["name"], "arguments": fn["arguments"]}


def legacy_delta(delta: dict[str, Any]) -> dict[str, Any]:
    """A tool-call stream delta as a legacy ``function_call`` delta."""
    fn = delta.get("function") or {}
    return {k: v for k, v in (("name", fn.get("name")), ("arguments", fn.get("arguments"))) if v is not None}


def delta_call_index(delta: Mapping[str, Any], ids: Mapping[int, str]) -> int:
    """The index of the call a streamed tool-call delta belongs to, given the ids of the calls begun so far (by
    index): its ``index``. Some OpenAI-compatible servers send none: then a delta with an id not seen yet starts
    a new call, one with a known id goes to that call, and one without an id continues the latest call."""
    index = delta.get("index")
    if index is not None:
        return int(index)
    call_id = delta.get("id")
    latest = max(ids, default=-1)
    if call_id:
        return next((i for i, known in ids.items() if known == call_id), latest + 1)
    return max(latest, 0)


def merge_tool_deltas(calls: list[dict[str, Any]], deltas: Sequence[Mapping[str, Any]]) -> None:
    """Add streamed tool-call deltas to ``calls`` (whole calls, by index, see :func:`delta_call_index`): a call's
    first delta brings its id and name, later ones pieces of its arguments."""
    for delta in deltas:
        index = delta_call_index(delta, {i: call["id"] for i, call in enumerate(calls)})
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[index]
        if delta.get("id") and not call["id"]:
            call["id"] = delta["id"]
        fn = delta.get("function") or {}
        if fn.get("name") and not call["function"]["name"]:  # the name comes whole, in the first delta
            call["function"]["name"] = fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]


def tools_task(text: str) -> Classification:
    """The classification of a request with tools: the ``tools`` task, by rule. No P(correct) per model: the
    classifier learnt those on plain requests, so each model's card prior (or its tier's default) stands in."""
    return Classification(task=TOOLS_TASK, task_probs={TOOLS_TASK: 1.0}, chars=len(text), method="rule: tools")
