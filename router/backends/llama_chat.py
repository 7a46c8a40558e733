"""Tools, JSON output and log probabilities on a local llama.cpp model, streamed as :class:`StreamEvent` s.

Tool calling follows llama-cpp-python's own function-calling chat format (``chatml-function-calling``): the
functions are described in the system turn, and the model answers either ``message:`` and text, or
``functions.<name>:`` and the arguments as JSON. The steps are the same as that handler's: a grammar lets the
model choose only between those openings (or only a function, when ``tool_choice`` requires one), then the
function's parameter schema, as a grammar, constrains the arguments, then (when parallel calls are allowed) a
grammar lets it add another call or stop. They are run here rather than through the handler because the handler
leaves ``role: tool`` results out of the prompt (a tool result would never reach the model), does not bound the
arguments' length, cannot be stopped between tokens, and does not stream a call's arguments.

JSON mode and JSON schemas use llama.cpp grammars (the schema's own, from llama-cpp-python's converter). Log
probabilities are read from the logits row before each token is sampled (:mod:`.llama_loop`).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Generator
from typing import Any, Protocol

from ..cards import ModelCard
from ..tools import ToolOptions, new_call_id
from .base import GenerationRequest, StreamEvent
from .llama_loop import (
    Budget,
    ConfidenceRecorder,
    LogitBias,
    LogprobRecorder,
    Step,
    checked,
    json_grammar,
    literal,
    run,
    schema_grammar,
)


class _LlamaModel(Protocol):
    """What a request needs of the llama.cpp backend: its loaded model and its card."""

    card: ModelCard

    @property
    def llm(self) -> Any: ...

MAX_PARALLEL_CALLS = 8
_CUT = "\x00cut"
"""What :meth:`StructuredChat._opening` returns when ``max_tokens`` ran out in (or right after) the answer's
opening: the answer is empty and ends at ``length``."""
_PROTOCOL_TOKENS = 64
"""The most tokens one ``message:`` / ``functions.<name>:`` opening may take (they count against ``max_tokens``,
as everything the model generates does)."""
DEFAULT_SYSTEM = "You are a helpful AI assistant."
CHATML_MARK = "<|im_start|>"


def render_chatml(messages: list[Any], tools: ToolOptions | None, default_system: str) -> str:
    """A tool conversation in ChatML with the function-calling protocol in the system turn (``tools`` ``None``:
    the protocol is not offered, but earlier calls and results are still shown as they happened)."""
    system = "\n".join(m.text for m in messages if m.role in ("system", "developer")).strip() or default_system
    if tools is not None:
        system += "\n\nYou have access to the following functions:\n" + tools.described()
        system += (
            "\n\nYou can respond to users messages with either a single message or one or more function calls."
            "\n\nTo respond with a message begin the message with 'message:', use the following format:"
            "\n\nmessage:\n<message>"
            "\n\nTo respond with one or more function calls begin the message with 'functions.<function_name>:', "
            "use the following format:"
            "\n\nfunctions.<function_name>:\n{ \"arg1\": \"value1\", \"arg2\": \"value2\" }"
            "\nfunctions.<function_name>:\n{ \"arg1\": \"value1\", \"arg2\": \"value2\" }")
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    names = {}  # tool_call_id -> function name, to label results
    for m in messages:
        if m.role in ("system", "developer"):
            continue
        if m.role == "assistant":
            body = []
            if m.text:
                body.append(("message:\n" if tools is not None else "") + m.text)
            for call in m.tool_calls or ():
                names[call["id"]] = call["function"]["name"]
                body.append(f"functions.{call['function']['name']}:\n{call['function']['arguments']}")
            parts.append("<|im_start|>assistant\n" + "\n".join(body) + "<|im_end|>\n")
        elif m.role == "tool":
            name = names.get(m.tool_call_id or "")
            head = f"result of functions.{name}:\n" if name else ""
            parts.append(f"<|im_start|>tool\n{head}{m.text}<|im_end|>\n")
        else:
            parts.append(f"<|im_start|>{m.role}\n{m.text}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class StructuredChat:
    """One request with tools, a response format or log probabilities, as stream events."""

    def __init__(self, backend: _LlamaModel, request: GenerationRequest, max_tokens: int, sampling: dict[str, Any],
                 stop: list[str]) -> None:
        self.backend = backend
        self.llm = backend.llm
        self.request = request
        self.options = request.options
        self.budget = Budget(max_tokens)
        self.sampling = sampling
        self.stop = stop
        self.confidence: list[float] = []
        self.processors: list[Any] = []
        self.context_full = False  # the last step ended at a full context, not at max_tokens
        reseed(self.llm, self.options.passthrough.get("seed"))
        bias = self.options.passthrough.get("logit_bias")
        if bias:
            self.processors.append(LogitBias(bias, self.llm.n_vocab()))
        if request.want_confidence:
            self.processors.insert(0, ConfidenceRecorder(self.confidence))

    def _check(self) -> None:
        self.request.check(self.backend.card.name)

    def events(self, prompt: str, *, add_bos: bool,
               completion_style: bool = False) -> Generator[StreamEvent, None, None]:
        tokens = self.llm.tokenize(prompt.encode("utf-8", "replace"), add_bos=add_bos, special=True)
        prompt_tokens = len(tokens)
        tools = self.options.tools if self.options.tools is not None and self.options.tools.choice != "none" else None
        finish = "stop"
        if tools is None:
            finish = yield from self._text(tokens, completion_style)
        else:
            first = self._opening(tokens, tools, first=True)
            if first is _CUT:
                finish = "length"
            elif first is None:
                tokens += self._tokens("\n")
                finish = yield from self._text(tokens, completion_style)
            else:
                finish = yield from self._calls(tokens, tools, first)
        yield StreamEvent(finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=self.budget.produced,
                          confidence=_mean_probability(self.confidence),
                          context_full=finish == "length" and self.context_full)

    def _tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _text(self, tokens: list[int], completion_style: bool) -> Generator[StreamEvent, None, str]:
        """The answer as text, held to the response format's grammar when there is one."""
        fmt = self.options.response_format
        grammar = None
        stop = list(self.stop)
        if fmt is not None:
            grammar = checked(self.llm, schema_grammar(fmt.schema_json)) if fmt.schema_json else json_grammar()
            if completion_style:  # the few-shot prompt's blank-line stop would cut JSON that spans lines
                stop = [s for s in stop if s.strip()]
        recorder = None
        if self.options.top_logprobs is not None:
            recorder = LogprobRecorder(self.options.top_logprobs, self.confidence if self.request.want_confidence
                                       else None)
        processors = [p for p in self.processors if not (recorder and isinstance(p, ConfidenceRecorder))]
        step = Step()
        given = 0
        for text in run(self.llm, tokens, self.budget, sampling=self.sampling, check=self._check,
                        grammar_text=grammar, stop=stop, recorder=recorder, processors=processors,
                        strip_leading=True, step=step):
            entries = step.logprobs[given:] if recorder is not None else None
            given = len(step.logprobs)
            yield StreamEvent(text=text, logprobs=entries)
        if recorder is not None and given < len(step.logprobs):
            yield StreamEvent(logprobs=step.logprobs[given:])
        self.context_full = step.context_full
        return step.finish_reason

    def _opening(self, tokens: list[int], tools: ToolOptions, *, first: bool) -> str | None:
        """Let the model open its answer (or its next call): ``None`` for a message or no further call, else the
        function's name. The opening's tokens join the context and count against ``max_tokens``; when they run
        out in the opening, or right after it, there is no further call, or (the first opening) :data:`_CUT`."""
        if first and tools.choice not in ("auto", "required", None):
            tokens += self._tokens(f"functions.{tools.choice}:")
            return tools.choice
        names = " | ".join(literal(t.name) for t in tools.tools)
        call = f"\"functions.\" ({names}) \":\""
        if not first:
            grammar = f"root ::= (\"\\n\" {call})?\n"
        elif tools.choice == "required":
            grammar = f"root ::= {call}\n"
        else:
            grammar = f"root ::= \"message:\" | {call}\n"
        protocol = Budget(min(_PROTOCOL_TOKENS, self.budget.left))
        step = Step()
        for _ in run(self.llm, tokens, protocol, sampling=self.sampling, check=self._check,
                     grammar_text=grammar, processors=self.processors, step=step):
            pass
        self.budget.left -= protocol.produced
        self.budget.produced += protocol.produced
        opened = step.text.strip()
        # the grammar's openings end in ":" (function names have none); without it the budget cut the opening
        whole = opened == "message:" or (opened.startswith("functions.") and opened.endswith(":"))
        if step.finish_reason == "length" and (not whole or self.budget.left <= 0):
            # nothing more fits: no further call (those made are whole); a first opening leaves no answer at all
            self.context_full = step.context_full
            return _CUT if first else None
        if not opened.startswith("functions."):
            return None
        return opened.removeprefix("functions.").removesuffix(":")

    def _calls(self, tokens: list[int], tools: ToolOptions, name: str) -> Generator[StreamEvent, None, str]:
        """One or more calls, each function's arguments held to its parameter schema, streamed as OpenAI's
        tool-call deltas."""
        named = tools.choice not in ("auto", "required", None)  # "call this function": one call, as OpenAI makes
        limit = MAX_PARALLEL_CALLS if tools.parallel and not named else 1
        index = 0
        while True:
            tool = tools.tool(name)
            assert tool is not None  # the grammar offers only the tools' names
            tokens += self._tokens("\n")
            yield StreamEvent(tool_calls=[{"index": index, "id": new_call_id(), "type": "function",
                                           "function": {"name": name, "arguments": ""}}])
            step = Step()
            for text in run(self.llm, tokens, self.budget, sampling=self.sampling, check=self._check,
                            grammar_text=checked(self.llm, schema_grammar(tool.parameters_json)),
                            processors=self.processors, step=step):
                yield StreamEvent(tool_calls=[{"index": index, "function": {"arguments": text}}])
            if step.finish_reason == "length":
                if _is_json(step.text):  # the budget ran out with the call's last token: it is whole, none follows
                    return "tool_calls"
                self.context_full = step.context_full
                return "length"
            index += 1
            if index >= limit:
                return "tool_calls"
            following = self._opening(tokens, tools, first=False)
            if following is None:
                return "tool_calls"
            name = following



def reseed(llm: Any, seed: int | None) -> None:
    """Seed one request's random draws (temperature > 0); llama.cpp starts every generation from the context's
    seed. The request's own seed makes the same prompt give the same answer: its prompt is then evaluated whole,
    not after the part cached from the request before (logits computed in another batch shape differ in their
    last bits, enough to change a draw). Without one, a fresh seed makes answers vary from call to call. Seeds
    stay below 2**32 - 1, which llama.cpp reads as "pick one at random": the request's seed (any 64-bit signed
    integer, as remote endpoints take it) is folded into that range, so each seed still gives the same answers
    rather than being refused by local models alone."""
    if seed is None:
        llm.set_seed(random.getrandbits(32) % 0xFFFFFFFF)
    else:
        llm.set_seed(seed % 0xFFFFFFFF)
        llm.reset()


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _mean_probability(logprobs: list[float]) -> float | None:
    """Geometric-mean token probability (the cascade's confidence signal, as the plain path computes it)."""
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else None
