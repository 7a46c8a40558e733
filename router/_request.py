"""Checking a request before anything runs: the messages, every parameter's type and range, and what the caller
asked of the router. Everything here raises :class:`BadRequestError` (or :class:`UnknownModelError`) naming the
parameter, so a bad request is refused before it costs anything or reaches the ledger.

Length: the request's two records (checked, then prepared) and the checks that fill the first, each short and in
the order ``Router._check`` runs them; split, they would only pass the same request around.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from ._iterables import as_list, count_of
from .backends.base import Cancel, CancelFlag, utf8_size
from .classify.base import Classification
from .energy.estimates import EnergyEstimate
from .errors import BadRequestError, CapabilityError
from .keys import MAX_KEY_CHARS, KeySpec
from .options import NO_OPTIONS, ModelOptions
from .policy.decision import Decision
from .structured import check_response_format
from .tools import check_tool_fields, check_tools
from .types import ChatMessage, new_request_id

PASSED_THROUGH = frozenset({"top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias"})
"""OpenAI sampling parameters sent as they came to remote models; local llama.cpp models apply them all
(``seed`` matters only with a temperature above 0: they decode greedily otherwise). They tune how an answer is
drawn, not what it must be."""

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
"""The seeds accepted: a 64-bit signed integer, what llama.cpp's server and most OpenAI-compatible endpoints
take (OpenAI documents only "integer"). Local llama.cpp models fold them into their 32-bit seed
(:func:`router.backends.llama_chat.reseed`)."""

IGNORED_PARAMS = frozenset({
    "user", "metadata", "store", "service_tier", "stream_options", "prediction", "prompt_cache_key",
    "prompt_cache_retention", "prompt_cache_options", "safety_identifier", "verbosity",
})  # fmt: skip
"""OpenAI parameters accepted and not acted on: bookkeeping for OpenAI's own service (``store``, ``metadata``,
``user``, ``service_tier``, ``prompt_cache_key``, ``prompt_cache_retention``, ``prompt_cache_options``,
``safety_identifier``) and hints whose absence leaves the answer's meaning as it is (``prediction``,
``verbosity``); ``metadata``, ``prompt_cache_options`` and the parameters of :data:`ONE_OF` must still be what
OpenAI takes (:func:`check_metadata`, :func:`check_prompt_cache_options`). ``stream_options`` is the proxy's: the
library's stream always ends with a chunk carrying usage and routing."""


METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512
"""OpenAI's limits on ``metadata``: at most 16 pairs, keys up to 64 characters, values up to 512."""


def check_metadata(metadata: Any) -> None:
    """A 400 for ``metadata`` that is not what OpenAI takes (a map of at most 16 string keys to string values,
    keys up to 64 characters, values up to 512): a client that works here fails there otherwise, and a batch keeps
    its metadata in its record."""
    if metadata is None:
        return
    rule = (f"`metadata` must be an object of at most {METADATA_MAX_PAIRS} string keys (up to {METADATA_MAX_KEY} "
            f"characters) with string values (up to {METADATA_MAX_VALUE} characters)")
    if not isinstance(metadata, Mapping):
        raise BadRequestError(f"{rule}, got {_kind(metadata)}", param="metadata")
    if len(metadata) > METADATA_MAX_PAIRS:
        raise BadRequestError(f"{rule}; it has {len(metadata)} keys", param="metadata")
    for key, value in metadata.items():
        if not isinstance(key, str):  # a Python caller's dict; JSON keys are always strings
            raise BadRequestError(f"{rule}; the key {key!r} is not a string", param="metadata")
        if len(key) > METADATA_MAX_KEY:
            raise BadRequestError(f"{rule}; the key {key[:20]!r}... is {len(key)} characters", param="metadata")
        if not isinstance(value, str):
            raise BadRequestError(f"{rule}; the value of {key!r} is {_kind(value)}, not a string", param="metadata")
        if len(value) > METADATA_MAX_VALUE:
            raise BadRequestError(f"{rule}; the value of {key!r} is {len(value)} characters", param="metadata")


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
"""The ``reasoning_effort`` values OpenAI takes (the openai SDK's ``ReasoningEffort``): any other is a 400 there, so
it is one here too, also where no model that reads it is a candidate (a client that works here would fail there)."""
VERBOSITIES = ("low", "medium", "high")
"""The ``verbosity`` values OpenAI takes; ignored here, but a client that sends another fails there."""
ONE_OF: dict[str, tuple[str, ...]] = {
    "verbosity": VERBOSITIES,
    "service_tier": ("auto", "default", "flex", "scale", "priority", "fast"),
    "prompt_cache_retention": ("in_memory", "24h"),
}
"""Ignored parameters that OpenAI takes only with one of these values (the openai SDK's): another is a 400 there,
so it is one here too."""


PROMPT_CACHE_OPTIONS: dict[str, tuple[str, ...]] = {"mode": ("implicit", "explicit"), "ttl": ("30m",)}
"""What ``prompt_cache_options`` may hold, and the values OpenAI takes for each (the openai SDK's
``PromptCacheOptions``; ``30m`` is the one lifetime it documents). Ignored here, but OpenAI refuses another value,
and another key as an unknown parameter (``prompt_cache_options.<key>``), so a client that sends one fails there."""


def check_prompt_cache_options(options: Any) -> None:
    """A 400 for ``prompt_cache_options`` that is not what OpenAI takes (:data:`PROMPT_CACHE_OPTIONS`), naming the
    key at fault (``param: prompt_cache_options.ttl``) as OpenAI does."""
    if options is None:
        return
    if not isinstance(options, Mapping):
        raise BadRequestError('`prompt_cache_options` must be an object such as {"mode": "implicit", "ttl": "30m"}, '
                              f"got {_kind(options)}", param="prompt_cache_options")
    for key, value in options.items():
        name = f"prompt_cache_options.{key}"
        allowed = PROMPT_CACHE_OPTIONS.get(key)
        if allowed is None:
            raise BadRequestError(f"unknown parameter: `{name}` (`prompt_cache_options` takes "
                                  f"{' and '.join(PROMPT_CACHE_OPTIONS)})", param=name)
        if value is None:  # check_one_of takes None for a parameter left out; a key given null is a wrong value
            raise BadRequestError(f"`{name}` must be one of {', '.join(allowed)}, got null", param=name)
        check_one_of(name, value, allowed)


def check_one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str | None:
    """``value`` if it is one of ``allowed`` (``None`` as ``None``); else a 400 naming ``name`` and the values
    OpenAI takes for it, as OpenAI answers any other."""
    if value is None or (isinstance(value, str) and value in allowed):
        return value
    got = repr(value) if isinstance(value, str) else _kind(value)
    raise BadRequestError(f"`{name}` must be one of {', '.join(allowed)}, got {got}", param=name)


STREAM_OPTIONS_NEED_STREAM = ("`stream_options` is only allowed when `stream` is true (as OpenAI has it): send "
                              "{stream}, or leave `stream_options` out")


def check_stream_options(stream: bool, params: Mapping[str, Any]) -> None:
    """A 400 for ``stream_options`` (given, or in ``extra_body``) on a request that does not stream, as OpenAI
    answers it; the library's own stream needs none."""
    if stream:
        return
    extra_body = params.get("extra_body")
    if params.get("stream_options") is not None or (
            isinstance(extra_body, Mapping) and extra_body.get("stream_options") is not None):
        raise BadRequestError(STREAM_OPTIONS_NEED_STREAM.format(stream="stream=True"), param="stream_options")


def sdk_arguments(params: dict[str, Any]) -> dict[str, Any]:
    """The openai SDK's client-side arguments applied as the SDK applies them, so code written for it runs
    unchanged: ``extra_body``'s fields join the request (the router's own, ``policy`` and the rest, come this way),
    a number of seconds in ``timeout`` bounds the request as ``deadline_s`` does, and ``extra_headers``'
    ``x-request-id`` names it, as the proxy's header does (other headers have nothing to go to)."""
    extra_body = params.pop("extra_body", None)
    timeout = params.pop("timeout", None)
    extra_headers = params.pop("extra_headers", None)
    if extra_body is not None:
        if not isinstance(extra_body, Mapping):
            raise BadRequestError(f"`extra_body` must be a dict of request fields, got {_kind(extra_body)}",
                                  param="extra_body")
        twice = sorted(set(extra_body) & set(params))
        if twice:
            raise BadRequestError(f"`{twice[0]}` is given both as an argument and in extra_body", param=twice[0])
        params.update(extra_body)
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and params.get("deadline_s") is None:
        params["deadline_s"] = timeout
    if isinstance(extra_headers, Mapping) and params.get("request_id") is None:
        rid = next((v for k, v in extra_headers.items() if str(k).lower() == "x-request-id"), None)
        if rid is not None:
            params["request_id"] = rid
    return params

REFUSED_PARAMS = {
    "audio": "audio output is not supported: no model here speaks",
    "web_search_options": "web search is not supported: no model here searches the web",
    "moderation": "moderation is not supported: no moderation model screens requests or answers here",
}
"""OpenAI parameters that are a 400 (:class:`CapabilityError`): ignoring them would change what the caller gets.
Also refused: ``n`` other than 1, and ``modalities`` other than ``["text"]``."""

MAX_STOP = 4
"""The most stop strings a request may give: OpenAI refuses more, so a request that works here works there."""

ROUTER_ALIASES = ("router",)
"""``model`` values that mean "route it" (``router:<policy>`` picks a policy)."""

MAX_REQUEST_ID = 128
"""The longest ``request_id`` taken: the proxy answers a longer ``x-request-id`` under an id the router makes."""


@dataclass(slots=True)
class CheckedRequest:
    """A request whose parameters and messages passed the checks, before classification. Read-only by convention,
    not frozen: one is made per request, and a frozen dataclass's ``__init__`` sets every field through
    ``object.__setattr__``, about three times the cost of a slotted one for these 20 fields."""

    messages: list[ChatMessage]
    text: str
    pinned_name: str | None
    policy: str | None
    accuracy_target: float | None
    max_energy_j: float | None
    max_tokens: int | None
    temperature: float | None
    stop: list[str] | None
    api_key: str | KeySpec | None
    """The caller's key in clear, or (work submitted earlier, e.g. a batch line) the key as the key store holds it."""
    request_id: str
    deadline_s: float | None
    cancel: threading.Event | None
    options: ModelOptions = NO_OPTIONS
    chars: int = 0
    """The prompt's characters, every message's text and tool-call arguments (:func:`validate_messages`)."""
    size: int = 0
    """The same text's UTF-8 bytes, what the decision's token estimate counts."""
    turns: int = 0
    """The user and assistant turns (:func:`context_floor`)."""
    request_id_given: bool = False
    """The caller chose ``request_id`` (the router made it otherwise)."""
    max_tokens_param: str = "max_tokens"
    """The name the caller gave ``max_tokens`` under (``max_completion_tokens`` too): errors about it use it."""
    policy_param: str = "policy"
    """Where ``policy`` came from: the body's ``policy`` or ``model`` (``router:<policy>``); errors about it name it."""


@dataclass
class PreparedRequest:
    """A checked and decided request, ready to send (:meth:`Router.send` / :meth:`Router.asend`)."""

    request_id: str
    messages: list[ChatMessage]
    text: str
    classification: Classification
    decision: Decision
    max_tokens: int | None
    temperature: float | None
    stop: list[str] | None
    key_hash: str | None
    decision_ms: float
    deadline: float
    """``time.monotonic()`` by which the whole request (every attempt) must have ended."""
    cancel: Cancel = field(default_factory=CancelFlag)
    """Set to stop the request: the model in flight stops between tokens and the ledger records ``cancelled``."""
    estimates: dict[str, EnergyEstimate] = field(default_factory=dict)
    """The energy learned from the ledger for each candidate that has enough calls (the others: their cards)."""
    created: int = field(default_factory=lambda: int(time.time()))
    options: ModelOptions = NO_OPTIONS
    """Tools, response format, log probabilities and pass-through parameters, as checked."""
    max_tokens_param: str = "max_tokens"
    """The name the caller gave ``max_tokens`` under (``max_completion_tokens`` too): errors about it use it."""
    task_cancelled_means: str | None = None
    """Who stopped this request when the task running it is cancelled, or its stream closed, without ``cancel`` set
    first; None: its caller ("the caller went away" in the ledger record, or that the Router was closed once
    ``close()`` has begun). The proxy sets it: only the server shutting down cancels its tasks or stops its streams
    so (a client that goes away sets ``cancel``); the record says so also when the Router's ``close()`` has begun
    meanwhile, as it does once a stopping server closes it."""
    sent: bool = field(default=False, init=False)
    """:meth:`Router.send` or :meth:`Router.asend` has taken this request (:meth:`take_to_send`)."""

    def take_to_send(self) -> None:
        """Mark this request sent, or raise :class:`BadRequestError` if it was already: one prepared request is one
        response, whose id (``request_id``) names one ledger record for feedback and budgets, and whose deadline,
        cancel event and decision were made for one call. Sent again it would be a second response under the same
        id, past part of its deadline, perhaps cancelled by the first."""
        with _SENDING:  # two threads sending it at once: one of them sends
            already, self.sent = self.sent, True
        if already:
            raise BadRequestError(
                f"prepared request {self.request_id!r} was already sent: a PreparedRequest is sent once (its id "
                "names one response in the ledger); call prepare() again to send the request again",
                code="request_already_sent")


_SENDING = threading.Lock()
"""Held while a prepared request is marked sent (a moment, once per request)."""


def checked_number(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float | None:
    """``value`` as a float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), ``None`` as ``None``; else a
    :class:`BadRequestError` naming ``name``."""
    if value is None:
        return None
    try:
        # a tuple, not ``int | float``: that expression builds a union object on every call
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an integer beyond any float: JSON numbers may run to hundreds of digits
        number = math.nan
        got = "an integer too large for a float"
    else:
        got = non_finite(value) if isinstance(value, float) and not math.isfinite(value) else _kind(value)
    if not math.isfinite(number):
        raise BadRequestError(f"`{name}` must be a finite number, got {got}", param=name)
    if number < lo or number > hi or (lo_open and number == lo):
        bound = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        raise BadRequestError(f"`{name}` must be in {bound}, got {number:g}", param=name)
    return number


def non_finite(value: float) -> str:
    """What a NaN or infinite ``value`` is, as a 400 says what it got: JSON's ``1e400`` (too large for a float)
    reads as inf, so "a number" alone would leave the caller looking at a number that seems fine."""
    if math.isnan(value):
        return "NaN"
    return f"{value} (a number too large for a float, such as {'-' if value < 0 else ''}1e400, reads as {value})"


def _kind(value: Any) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a number", type(None): "null",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _optional_str(name: str, value: Any, limit: int | None = None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"`{name}` must be a string, got {_kind(value)}", param=name)
    if limit is not None and len(value) > limit:
        raise BadRequestError(f"`{name}` is longer than {limit} characters", param=name)
    return value


def check_params(
    *,
    model: Any = None,
    policy: Any = None,
    accuracy_target: Any = None,
    max_energy_j: Any = None,
    max_tokens: Any = None,
    max_completion_tokens: Any = None,
    temperature: Any = None,
    stop: Any = None,
    n: Any = None,
    api_key: Any = None,
    request_id: Any = None,
    deadline_s: Any = None,
    cancel: Any = None,
    tools: Any = None,
    tool_choice: Any = None,
    parallel_tool_calls: Any = None,
    functions: Any = None,
    function_call: Any = None,
    response_format: Any = None,
    logprobs: Any = None,
    top_logprobs: Any = None,
    reasoning_effort: Any = None,
    modalities: Any = None,
    **params: Any,
) -> dict[str, Any]:
    """Every keyword of :meth:`Router.complete` checked for type and range; the values normalised."""
    if params:  # most requests name only the parameters above
        _check_other_names(params)
        check_metadata(params.get("metadata"))
        check_prompt_cache_options(params.get("prompt_cache_options"))
        for name, allowed in ONE_OF.items():
            check_one_of(name, params.get(name), allowed)
    if n is not None and (isinstance(n, bool) or n != 1):
        raise BadRequestError("only n=1 is supported", param="n")
    if modalities is not None and not isinstance(modalities, list):
        raise BadRequestError(f"`modalities` must be a list such as [\"text\"], got {_kind(modalities)}",
                              param="modalities")
    if modalities is not None and any(m != "text" for m in modalities):
        raise CapabilityError("`modalities` other than [\"text\"] is not supported: no model here answers in audio",
                              param="modalities")
    if max_completion_tokens is not None:
        # two limits that differ: honouring one would silently drop the other (OpenAI refuses the pair outright;
        # the same value twice, which clients written for both names send, drops nothing)
        if max_tokens is not None and max_tokens != max_completion_tokens:
            raise BadRequestError("`max_tokens` and `max_completion_tokens` are both set, to different values; "
                                  "send one of them (max_completion_tokens is OpenAI's newer name for max_tokens)",
                                  param="max_tokens")
        max_tokens, name = max_completion_tokens, "max_completion_tokens"
    else:
        name = "max_tokens"
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise BadRequestError(f"`{name}` must be a positive integer", param=name)
    if isinstance(stop, str):
        stop = [stop]
    elif stop is not None and type(stop) is not list:  # a tuple: the openai SDK takes any sequence of strings
        stop = as_list(stop, MAX_STOP)
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP:
            raise BadRequestError(f"`stop` must be a string or a list of at most {MAX_STOP} strings (OpenAI's "
                                  "limit)", param="stop")
        stop = [s for s in stop if s] or None  # an empty stop string would end every answer at once
    if cancel is not None and not isinstance(cancel, threading.Event):
        raise BadRequestError("`cancel` must be a threading.Event", param="cancel")
    options = NO_OPTIONS
    if (tools is not None or tool_choice is not None or parallel_tool_calls is not None or functions is not None
            or function_call is not None or response_format is not None or logprobs is not None
            or top_logprobs is not None or reasoning_effort is not None or not PASSED_THROUGH.isdisjoint(params)):
        options = ModelOptions(
            tools=check_tools(tools, tool_choice, parallel_tool_calls, functions, function_call),
            response_format=check_response_format(response_format),
            top_logprobs=_logprobs(logprobs, top_logprobs),
            passthrough=_passthrough(params),
            reasoning_effort=check_one_of("reasoning_effort", reasoning_effort, REASONING_EFFORTS),
        )
    return {
        "model": _optional_str("model", model, 256),
        "policy": _optional_str("policy", policy, 256),
        "accuracy_target": checked_number("accuracy_target", accuracy_target, 0.0, 1.0),
        "max_energy_j": checked_number("max_energy_j", max_energy_j, 0.0, math.inf, lo_open=True),
        "max_tokens": max_tokens,
        "max_tokens_param": name,
        "temperature": checked_number("temperature", temperature, 0.0, 2.0),
        "stop": stop,
        "api_key": api_key if isinstance(api_key, KeySpec) else _optional_str("api_key", api_key, MAX_KEY_CHARS),
        "request_id": _optional_str("request_id", request_id, MAX_REQUEST_ID) or new_request_id(),
        "deadline_s": checked_number("deadline_s", deadline_s, 0.0, 86_400.0, lo_open=True),
        "cancel": cancel,
        "options": options,
    }


def _check_other_names(params: dict[str, Any]) -> None:
    """Refuse the parameters :func:`check_params` does not name that are neither ignored nor passed through."""
    unknown = set(params) - IGNORED_PARAMS - PASSED_THROUGH
    refused = sorted(unknown & REFUSED_PARAMS.keys())
    if refused and params[refused[0]] is not None:
        raise CapabilityError(REFUSED_PARAMS[refused[0]], param=refused[0])
    unknown -= REFUSED_PARAMS.keys()
    if unknown:
        raise BadRequestError(f"unknown parameter(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])


def _logprobs(logprobs: Any, top_logprobs: Any) -> int | None:
    """``None`` (no log probabilities) or how many alternatives per token the caller wants."""
    if logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequestError("`logprobs` must be a boolean", param="logprobs")
    if top_logprobs is not None and (isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int)
                                     or not 0 <= top_logprobs <= 20):
        raise BadRequestError("`top_logprobs` must be an integer from 0 to 20", param="top_logprobs")
    if not logprobs:
        if top_logprobs:
            raise BadRequestError("`top_logprobs` needs `logprobs: true`", param="top_logprobs")
        return None
    return top_logprobs or 0


def _passthrough(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    # in the caller's order, not a set's (which changes from process to process): the upstream body and the first
    # error reported are the same on every run
    for name, value in params.items():
        if name not in PASSED_THROUGH:
            continue
        if value is None:
            continue
        if name == "seed":
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadRequestError("`seed` must be an integer", param="seed")
            # JSON's integers have no bound: an endpoint refuses a seed it cannot hold, which the caller would
            # see as the model failing (a 502), not as a bad seed
            if not SEED_MIN <= value <= SEED_MAX:
                raise BadRequestError(f"`seed` must be a 64-bit signed integer, from {SEED_MIN} to {SEED_MAX}",
                                      param="seed")
        elif name == "logit_bias":
            if not isinstance(value, dict) or len(value) > 1024 or not all(
                    _is_token_id(k) and checked_number(name, v, -100.0, 100.0) is not None for k, v in value.items()):
                raise BadRequestError("`logit_bias` must map token ids to numbers from -100 to 100",
                                      param="logit_bias")
        else:
            lo = 0.0 if name == "top_p" else -2.0
            value = checked_number(name, value, lo, 1.0 if name == "top_p" else 2.0)
        out[name] = value
    return out


def _is_token_id(key: Any) -> bool:
    """A token id as JSON object keys write one: ASCII digits only (``str.isdigit`` also takes "²" and other
    Unicode digits, which ``int`` refuses), few enough for any vocabulary."""
    return isinstance(key, str) and 0 < len(key) <= 10 and key.isascii() and key.isdigit()


def validate_messages(messages: Any, max_chars: int, max_messages: int
                      ) -> tuple[list[ChatMessage], int, int, str, int]:
    """Check the OpenAI ``messages`` list and say exactly what to fix. Returns ``(messages, chars, size, question,
    turns)``: the messages; the prompt's characters (every message's text and tool-call arguments) and their UTF-8
    bytes (what a token estimate counts: :func:`~router.backends.base.estimated_tokens`); the question,
    what the classifier reads (the last user message: the question being asked now); and the user and assistant
    turns (:func:`context_floor` counts a token for each). One pass over the messages finds all three."""
    if type(messages) is not list:  # a JSON array is a list, known without asking an ABC (a Python-level check)
        messages = _message_list(messages, max_messages)
    if len(messages) == 0:
        raise BadRequestError("`messages` is empty: send at least one {'role': 'user', 'content': '...'}",
                              param="messages")
    if len(messages) > max_messages:  # before checking them one by one
        raise _too_many_messages(f"{len(messages):,}", max_messages)
    out = [_message(i, raw) for i, raw in enumerate(messages)]
    chars = size = turns = 0
    question = ""
    user_text = False  # some user message has text besides whitespace
    for m in out:
        text = m.text
        chars += len(text)
        size += utf8_size(text)
        if m.tool_calls:  # most messages call no tools
            for call in m.tool_calls:
                arguments = call["function"]["arguments"]
                chars += len(arguments)
                size += utf8_size(arguments)
        if m.role == "user":
            turns += 1
            question = text
            user_text = user_text or text.strip() != ""
        elif m.role == "assistant":
            turns += 1
    if not user_text:
        raise BadRequestError("`messages` has no user message with text: add {'role': 'user', 'content': ...}",
                              param="messages")
    if chars > max_chars:
        raise BadRequestError(
            f"the prompt is {chars:,} characters; this router accepts at most {max_chars:,}",
            param="messages", code="prompt_too_large",
        )
    return out, chars, size, question, turns


def _message_list(messages: Any, max_messages: int) -> list[Any]:
    """``messages`` as a list: any iterable of messages, as the openai SDK takes (:func:`as_list`), is read once.
    One message on its own (a dict or a message object), text and the rest are refused."""
    if messages is None:
        return []
    listed = as_list(messages, max_messages)
    if type(listed) is list:
        if len(listed) > max_messages:
            raise _too_many_messages(count_of(messages, listed, max_messages), max_messages)
        return listed
    if isinstance(messages, Mapping | BaseModel):
        raise BadRequestError("`messages` must be a list of messages, got one message on its own: send "
                              "[{'role': 'user', 'content': '...'}]", param="messages")
    raise BadRequestError(f"`messages` must be a list of {{'role', 'content'}} objects, got {_kind(messages)}",
                          param="messages")


def _too_many_messages(count: str, max_messages: int) -> BadRequestError:
    return BadRequestError(f"`messages` has {count} messages; this router accepts at most {max_messages:,} "
                           "(max_messages)", param="messages", code="array_above_max_length")


def has_tool_history(messages: list[ChatMessage]) -> bool:
    return any(m.tool_calls or m.role == "tool" for m in messages)


def _message(i: int, raw: Any) -> ChatMessage:
    if type(raw) is not dict:  # a JSON object is a dict: the ABC checks below (Python-level) are for the others
        if isinstance(raw, BaseModel):  # a ChatMessage, or an answer's message put back into the history (this
            raw = raw.model_dump(exclude_none=True)  # library's or the openai SDK's): checked like its dict
        if not isinstance(raw, Mapping):
            raise BadRequestError(f"messages[{i}] must be an object with `role` and `content` (a dict, or a "
                                  f"message object such as a response's choices[0].message), got {_kind(raw)}",
                                  param=f"messages[{i}]")
    if raw.get("role") in ("assistant", "tool", "function") or "tool_calls" in raw or "tool_call_id" in raw:
        raw = check_tool_fields(i, raw)
    content = raw.get("content")
    if content is not None and type(content) is not str:  # parts: a list (JSON), or any iterable (the openai SDK;
        content = as_list(content)  # read whole, as the SDK itself reads it to send it)
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        if not all(isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text", ""), str)
                   for p in content):
            raise BadRequestError(f"messages[{i}].content: only text parts ({{'type': 'text', 'text': '...'}}) "
                                  "are supported", param=f"messages[{i}].content")
        content = "".join(p.get("text", "") for p in content)
        raw = {**raw, "content": content}
    if content is None and raw.get("tool_calls"):
        pass  # an assistant turn that only called tools
    elif not isinstance(content, str):
        raise BadRequestError(f"messages[{i}].content must be a string, got {_kind(content)}",
                              param=f"messages[{i}].content")
    elif not content.isascii():  # ASCII is always valid UTF-8
        check_encodable(content, f"messages[{i}].content")
    if raw.get("name") is not None and not isinstance(raw["name"], str):
        raise BadRequestError(f"messages[{i}].name must be a string, got {_kind(raw['name'])}",
                              param=f"messages[{i}].name")
    try:
        # the model's own validator, as model_validate calls it: that wrapper passes seven keyword arguments
        # through Python, a third of the cost of validating a message of two fields (validation copies a dict)
        return ChatMessage.__pydantic_validator__.validate_python(raw if type(raw) is dict else dict(raw))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BadRequestError(
            f"messages[{i}].{where}: {err['msg']} (roles: system, developer, user, assistant, tool)",
            param=f"messages[{i}].{where}",
        ) from None


def check_encodable(text: str, param: str) -> None:
    """Text every model can be given: a lone UTF-16 surrogate (JSON's ``"\\ud800"`` decodes to one) cannot be
    encoded as UTF-8, and would otherwise fail on every model in turn, each failure counting towards its
    cooldown."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BadRequestError(f"{param} holds a lone surrogate (\\u{ord(text[exc.start]):04x} at character "
                              f"{exc.start}), which is not text: send valid UTF-16 pairs or UTF-8",
                              param=param) from None


CHARS_PER_TOKEN_AT_MOST = 32
"""No tokenizer here packs more characters than this into one token on average (the longest tokens are runs of
whitespace; English averages 4-5 characters, a word repeated hundreds of times 14 with SmolLM2's)."""


def context_floor(chars: int, turns: int, max_tokens: int | None) -> int:
    """The fewest tokens a request can take in any model's context: the prompt's characters at the densest
    tokenization, a token for each turn's role (user and assistant turns: :func:`validate_messages` counts them),
    and ``max_tokens``. A model with less is surely too small; one with more is counted exactly by its backend, so
    a prompt that fits is never refused on an estimate (and a huge one is refused before any tokenizer runs:
    thousands of short turns take seconds to tokenize)."""
    return chars // CHARS_PER_TOKEN_AT_MOST + turns + (max_tokens or 0)


def split_model(model: str | None) -> tuple[str | None, str | None]:
    """``model`` -> (model to pin, policy): ``router`` routes, ``router:eco`` routes with policy eco."""
    if not model:
        return None, None
    head, _, policy = model.partition(":")
    if head.lower() in ROUTER_ALIASES:
        return None, policy or None
    return model, None
