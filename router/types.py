"""OpenAI-shaped request and response types, plus the `routing` block that says what happened.

Responses read like the OpenAI client's objects (``resp.choices[0].message.content``, ``resp.usage``),
and ``model_dump()`` gives the JSON the proxy sends.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import core_schema

from ._ids import new_request_id

Role = Literal["system", "user", "assistant", "tool", "developer"]
Tier = Literal["specialist", "small", "large"]
TIER_ORDER: dict[str, int] = {"specialist": 0, "small": 1, "large": 2}
"""Smallest first: breaks ties in energy, and says which model is the "largest" (the reference of a relative
accuracy target, the always-large baseline)."""
EnergyKind = Literal["measured", "estimated"]


_OPENAI_CALL_FIELDS = frozenset({"index", "id", "type", "function", "name", "arguments"})
"""The fields of OpenAI's tool-call and function-call types, all optional in a streamed delta."""


class OpenAIDict(dict[str, Any]):
    """A tool call (or its ``function``) as a plain dict whose keys also read as attributes, as the openai SDK's
    objects do: ``call["function"]["name"]`` and ``call.function.name`` both work, so code written for the OpenAI
    client reads it unchanged, and it dumps and serialises as the dict it is. A field OpenAI declares that this
    call lacks (a delta's ``id`` after the first) reads ``None``, as the SDK's does; any other is an
    ``AttributeError``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            if name in _OPENAI_CALL_FIELDS:
                return None
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None

    @classmethod
    def of(cls, value: dict[str, Any]) -> OpenAIDict:
        return cls({k: cls.of(v) if isinstance(v, dict) else v for k, v in value.items()})

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # validated as a dict, then wrapped; dumped as the plain dict it is
        return core_schema.no_info_after_validator_function(cls.of, handler.generate_schema(dict[str, Any]))


class ChatMessage(BaseModel):
    """One message of a request. ``content`` is ``None`` only on an assistant turn that called tools
    (``tool_calls``); a ``tool`` turn carries the ``tool_call_id`` it answers. Other OpenAI fields (``name``, ...)
    are kept as they came."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The message's text (``""`` for a turn with only tool calls)."""
        return self.content or ""

    def openai(self) -> dict[str, Any]:
        """The message as OpenAI's request body has it (what a remote model is sent). A turn with only tool calls
        is sent with ``content: ""``: OpenAI takes that as it takes ``null``, and some compatible servers
        (llama.cpp's Python server among them) refuse ``null``."""
        content = "" if self.content is None and self.tool_calls else self.content
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.tool_calls is not None:
            out["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        extra = self.__pydantic_extra__
        if extra and extra.get("name") is not None:
            out["name"] = extra["name"]
        return out


class ResponseMessage(BaseModel):
    """The answer's message: text, or (``content`` ``None``) the tool calls the model made, or a remote model's
    ``refusal`` (it declined, and says why). A request that used the legacy ``functions`` parameter gets
    ``function_call`` instead of ``tool_calls``, as OpenAI sends it. A reasoning model's reasoning comes beside
    ``content`` under the field name its endpoint used, ``reasoning_content`` (DeepSeek) or ``reasoning``
    (OpenRouter, vLLM): ``message.reasoning_content``, or ``message.model_extra``, as the openai SDK reads it."""

    model_config = ConfigDict(extra="allow")  # the reasoning fields, which only some endpoints send

    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[OpenAIDict] | None = None
    function_call: OpenAIDict | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(BaseModel):
    """One output token with its log probability and the most likely alternatives at its position."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Attempt(BaseModel):
    """One model call made for a request; a cascade has several."""

    model: str
    tier: Tier
    energy_j: float
    energy_source: str
    latency_ms: float
    outcome: Literal["ok", "escalated", "error", "rejected", "cancelled"] = "ok"
    """``rejected``: skipped before the call (its budget was spent, or the prompt did not fit)."""
    confidence: float | None = None


class Routing(BaseModel):
    """Why this model answered and what it cost."""

    model: str
    tier: Tier
    reason: str
    energy_j: float
    energy_source: str
    predicted_accuracy: float | None = None
    task: str | None = None
    policy: str | None = None
    latency_ms: float = 0.0
    decision_ms: float = 0.0
    co2e_g: float | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    estimated_j: float | None = None
    """The joules expected for the answering model's call before it ran (what the decision compared)."""
    estimate_source: str | None = None
    """Where ``estimated_j`` comes from: ``ledger:212 calls`` (learned from measurements) or ``card``."""
    flags: list[str] = Field(default_factory=list)
    """What the decision had to work around, for programs to test rather than parse ``reason``:
    ``target_unmet``, ``budget_fallback``, ``budget_unreadable``, ``cooling_down``, ``over_budget_allowed``,
    ``escalation_skipped`` (a cascade's answer kept: its escalation model's budget was spent or could not
    be read), ``refusal`` (the model declined to answer: ``message.refusal`` says why)."""


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str | None = "stop"
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: new_request_id())
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    routing: Routing
    system_fingerprint: str | None = None


class Delta(BaseModel):
    """A piece of a streamed answer. ``tool_calls`` holds OpenAI's tool-call deltas as dicts (``index``,
    then ``id``/``type``/``function.name`` in a call's first delta, ``function.arguments`` pieces after), so a
    chunk carries exactly the keys OpenAI's does; they read as attributes too (:class:`OpenAIDict`). A piece of
    a reasoning model's reasoning comes under the field name its endpoint used (``reasoning_content`` or
    ``reasoning``), as :class:`ResponseMessage`'s does."""

    model_config = ConfigDict(extra="allow")

    role: Role | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[OpenAIDict] | None = None
    function_call: OpenAIDict | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    routing: Routing | None = None


