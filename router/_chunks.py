"""One model call's answer as stream chunks, shaped as OpenAI's: a reasoning model's reasoning deltas (under the
endpoint's field names), text deltas (with their log probabilities), refusal deltas (a remote model that declined),
tool-call deltas (``function_call`` deltas for a legacy request), then the closing chunk with the finish reason,
usage and routing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._output import Call, Output, finish_reason
from ._request import PreparedRequest
from .backends import Generation, StreamEvent
from .tools import legacy_delta
from .types import ChatCompletionChunk, ChoiceLogprobs, ChunkChoice, Delta, Routing, Usage

if TYPE_CHECKING:
    from ._attempts import Attempts


class StreamedAnswer:
    """One call's answer as stream chunks: its pieces as they arrive (unless the call is buffered because a
    cascade may escalate past it), then the closing chunks."""

    def __init__(self, prepared: PreparedRequest, call: Call) -> None:
        self.prepared = prepared
        self.call = call
        self.output = Output()
        self.started = False
        tools = prepared.options.tools
        self.legacy = tools is not None and tools.legacy

    @property
    def sent(self) -> bool:
        """Whether output has reached the caller (then no other model may answer instead)."""
        return bool(self.output) and not self.call.buffered

    def take(self, event: StreamEvent) -> list[ChatCompletionChunk]:
        self.output.add(event)
        if self.call.buffered or not (event.text or event.tool_calls or event.logprobs or event.refusal
                                      or event.reasoning):
            return []
        chunks = self._opening(refusing=bool(event.refusal))
        if event.reasoning:
            chunks.append(self._chunk(Delta.model_validate(event.reasoning)))
        if event.refusal:
            chunks.append(self._chunk(Delta(refusal=event.refusal)))
        if event.text or event.logprobs:
            chunks.append(self._chunk(Delta(content=event.text), logprobs=_logprobs(event.logprobs)))
        if event.tool_calls:
            chunks.append(self._chunk(self._calls_delta(event.tool_calls)))
        return chunks

    def generation(self) -> Generation:
        return self.output.generation(self.call)

    def closing(self, attempts: Attempts) -> list[ChatCompletionChunk]:
        """What was not sent yet (everything, for an empty or a buffered answer), then the final chunk with the
        finish reason, usage and routing."""
        gen = self.generation()
        chunks = []
        if not self.sent:
            chunks += self._opening(refusing=gen.refusal is not None)
            if gen.reasoning:
                chunks.append(self._chunk(Delta.model_validate(gen.reasoning)))
            if gen.refusal:
                chunks.append(self._chunk(Delta(refusal=gen.refusal)))
            if gen.text or gen.logprobs:
                chunks.append(self._chunk(Delta(content=gen.text), logprobs=_logprobs(gen.logprobs)))
            if gen.tool_calls:
                whole = [{"index": i, **call} for i, call in enumerate(gen.tool_calls)]
                chunks.append(self._chunk(self._calls_delta(whole)))
        usage = Usage(prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                      total_tokens=gen.prompt_tokens + gen.completion_tokens)
        chunks.append(self._chunk(Delta(), finish_reason(gen, self.prepared.options), usage,
                                  Routing.model_validate(attempts.routing())))
        return chunks

    def _opening(self, refusing: bool = False) -> list[ChatCompletionChunk]:
        if self.started:
            return []
        self.started = True
        # a refusal opens as OpenAI's does: content null, refusal "" (the pieces follow)
        return [self._chunk(Delta(role="assistant", refusal="") if refusing else Delta(role="assistant", content=""))]

    def _calls_delta(self, deltas: list[dict[str, Any]]) -> Delta:
        if self.legacy:
            return Delta(function_call=legacy_delta(deltas[0]))
        return Delta(tool_calls=deltas)

    def _chunk(self, delta: Delta, finish: str | None = None, usage: Usage | None = None,
               routing: Routing | None = None, logprobs: ChoiceLogprobs | None = None) -> ChatCompletionChunk:
        p = self.prepared
        return ChatCompletionChunk(id=p.request_id, created=p.created, model=self.call.model,
                                   choices=[ChunkChoice(delta=delta, finish_reason=finish, logprobs=logprobs)],
                                   usage=usage, routing=routing)


def _logprobs(entries: list[dict[str, Any]] | None) -> ChoiceLogprobs | None:
    return None if entries is None else ChoiceLogprobs.model_validate({"content": entries})
