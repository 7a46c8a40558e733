"""One model call about to be made (:class:`Call`), what it produced, collected from its stream events
(:class:`Output`), and the answer's ``choices[0]`` as OpenAI's JSON has it (text, tool calls or a legacy
``function_call``, log probabilities)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .backends import Backend, Generation, GenerationRequest, StreamEvent
from .backends.base import reasoning_text
from .cards import ModelCard
from .energy import MeterSpan
from .ledger import Reservation
from .options import ModelOptions
from .tools import legacy_message, merge_tool_deltas


@dataclass
class Call:
    """One model call about to be made: the driver calls ``backend`` with ``request``."""

    index: int
    """Attempt number within the request (what the ledger records as ``attempt``)."""
    model: str
    card: ModelCard
    backend: Backend
    request: GenerationRequest
    held: list[Reservation]
    span: MeterSpan | None
    started: float = field(default_factory=time.perf_counter)
    buffered: bool = False
    """Another model may answer instead once this answer is in (a cascade may escalate past it, or it may fail the
    request's ``response_format``): a streaming driver collects it before sending anything."""


class Output:
    """Stream events collected into what was produced so far (a whole answer, or a partial one)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.calls: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] | None = None
        self.refusal: list[str] = []
        self.reasoning: dict[str, list[str]] = {}
        self.last = StreamEvent()

    def add(self, event: StreamEvent) -> None:
        if event.text:
            self.parts.append(event.text)
        if event.tool_calls:
            merge_tool_deltas(self.calls, event.tool_calls)
        if event.logprobs is not None:
            self.logprobs = (self.logprobs or []) + event.logprobs
        if event.refusal:
            self.refusal.append(event.refusal)
        if event.reasoning:
            for name, piece in event.reasoning.items():
                self.reasoning.setdefault(name, []).append(piece)
        self.last = event

    def __bool__(self) -> bool:
        return bool(self.parts) or bool(self.calls) or bool(self.refusal) or bool(self.reasoning)

    def generation(self, call: Call, *, finished: bool = True) -> Generation:
        text = "".join(self.parts)
        refusal = "".join(self.refusal) or None
        reasoning = {name: "".join(pieces) for name, pieces in self.reasoning.items()} or None
        last = self.last
        return Generation(
            text=text,
            finish_reason=last.finish_reason or ("stop" if finished else "error"),
            prompt_tokens=last.prompt_tokens if last.prompt_tokens is not None
            else call.backend.prompt_tokens(call.request.messages, call.request.options),
            completion_tokens=last.completion_tokens if last.completion_tokens is not None
            else call.backend.turn_tokens(text + (refusal or "") + reasoning_text(reasoning), self.calls),
            confidence=last.confidence,
            tool_calls=self.calls or None,
            logprobs=self.logprobs,
            context_full=last.context_full,
            refusal=refusal,
            reasoning=reasoning,
        )


def finish_reason(gen: Generation, options: ModelOptions) -> str:
    """``tool_calls`` (``function_call`` for a legacy request) when the model called tools and simply stopped."""
    if gen.tool_calls and gen.finish_reason in ("stop", "tool_calls", "function_call"):
        return "function_call" if options.tools is not None and options.tools.legacy else "tool_calls"
    return gen.finish_reason


def answer_choice(gen: Generation, options: ModelOptions) -> dict[str, Any]:
    """``choices[0]`` as ``Choice.model_dump()`` gives it (same keys, same order)."""
    calls = gen.tool_calls
    # a refusal comes with content null, as OpenAI sends it (the SDK's parse() reads content only without one)
    content = gen.text if gen.text or not (calls or gen.refusal) else None
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": gen.refusal,
                               "tool_calls": None, "function_call": None}
    if calls:
        if options.tools is not None and options.tools.legacy:
            message["function_call"] = legacy_message(calls)
        else:
            message["tool_calls"] = calls
    if gen.reasoning:  # under the endpoint's own field names, last: where ResponseMessage dumps its extra fields
        message.update(gen.reasoning)
    logprobs = {"content": gen.logprobs, "refusal": None} if gen.logprobs is not None else None
    return {"index": 0, "message": message, "finish_reason": finish_reason(gen, options), "logprobs": logprobs}
