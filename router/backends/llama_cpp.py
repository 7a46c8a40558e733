"""Local LLMs from GGUF weights through llama.cpp (llama-cpp-python).

Chat models use the chat template stored in the GGUF. Base models (no chat template) are run
completion-style: a short few-shot "Question:/Answer:" prompt, stopped at the next question.

An answer's ``completion_tokens`` are the tokens the model generated for it, on every path: the text's tokens
before any leading whitespace is stripped, and those of a stop string that ended it (the model computed them, and
that is what the energy is spent on); an end-of-generation token is not counted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from ..cards import LlamaCppBackendSpec, ModelCard
from ..errors import BackendError, ConfigError, RouterError
from ..options import NO_OPTIONS, ModelOptions
from ..types import ChatMessage
from .base import Backend, GenerationRequest, StreamEvent
from .llama_chat import CHATML_MARK, DEFAULT_SYSTEM, StructuredChat, render_chatml
from .llama_log import install_log_bridge, load_errors
from .llama_loop import ConfidenceRecorder, is_end
from .weights import resolve_gguf

log = logging.getLogger(__name__)

# llama-cpp-python's Llama() reads its model parameters from llama_model_default_params() and has no argument for
# `use_extra_bufts`, so loading swaps that function, under a lock, for one whose result says no.
_DEFAULT_PARAMS_SWAP = threading.Lock()


@contextlib.contextmanager
def plain_cpu_buffers() -> Iterator[None]:
    """While open, every llama.cpp model loaded in this process keeps its weights in plain CPU buffers.

    llama.cpp's extra buffer types repack weights for AMX tile instructions where the CPU lists AMX. Some
    virtual machines list AMX and then fault on its first tile instruction (SIGILL: the whole process gone), and
    a wheel compiled on one machine of a fleet runs on the others from pip's cache. The plain path runs
    everywhere, and for these small models the repacking gains little (``benchmarks/bench_tiers.py``)."""
    import llama_cpp.llama_cpp as llama_c

    default_params = llama_c.llama_model_default_params

    def plain() -> Any:
        params = default_params()
        params.use_extra_bufts = False
        return params

    with _DEFAULT_PARAMS_SWAP:
        llama_c.llama_model_default_params = plain
        try:
            yield
        finally:
            llama_c.llama_model_default_params = default_params


def load_llama(**kwargs: Any) -> Any:
    """``llama_cpp.Llama(**kwargs)``, its weights in plain CPU buffers (:func:`plain_cpu_buffers`), llama.cpp's log
    in Python logging (:mod:`router.backends.llama_log`); a failed load says what llama.cpp found wrong."""
    from llama_cpp import Llama

    install_log_bridge()
    with plain_cpu_buffers(), load_errors() as errors:
        try:
            return Llama(**kwargs)
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file: PATH", and nothing more
            if not errors:
                raise
            raise ValueError(f"{exc} (llama.cpp: {'; '.join(errors)})") from exc


COMPLETION_PREAMBLE = (
    "The following are questions with short, correct, helpful answers.\n\n"
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris.\n\n"
    "Question: If I have 3 apples and buy 4 more, how many apples do I have?\n"
    "Answer: 3 + 4 = 7, so you have 7 apples.\n\n"
)


def completion_prompt(messages: list[ChatMessage]) -> str:
    """Render a chat as a completion prompt for a base model."""
    system = "\n".join(m.text for m in messages if m.role in ("system", "developer"))
    turns = []
    for m in messages:
        if m.role == "user":
            turns.append(f"Question: {m.text.strip()}\n")
        elif m.role == "assistant":
            turns.append(f"Answer: {m.text.strip()}\n\n")
    head = (system.strip() + "\n\n") if system.strip() else ""
    return head + COMPLETION_PREAMBLE + "".join(turns) + "Answer:"


class LlamaCppBackend(Backend):
    local = True
    concurrency = 1  # a llama.cpp context serves one generation at a time

    def __init__(self, card: ModelCard, n_threads: int | None = None) -> None:
        super().__init__(card)
        spec = card.backend
        if not isinstance(spec, LlamaCppBackendSpec):
            raise ConfigError(f"{card.path}: backend.type must be 'llama_cpp' for {type(self).__name__}")
        self.spec = spec
        self.model_path = resolve_gguf(spec.weights, card)
        self.n_threads = n_threads or spec.n_threads or max(1, os.cpu_count() or 1)
        self._llm: Any = None
        # A plain Lock (not RLock): a stream abandoned in one thread may be finalised in another, and only
        # a Lock can be released from a thread other than the one that took it.
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._formatter: Any = None
        self._generated = GeneratedTokens()

    @property
    def llm(self) -> Any:
        """The llama.cpp model, loaded on first use (a few hundred ms for these sizes)."""
        if self._llm is not None:
            return self._llm
        with self._load_lock:
            if self._llm is not None:
                return self._llm
            log.info("loading %s from %s", self.card.name, self.model_path)
            try:
                self._llm = load_llama(
                    model_path=str(self.model_path),
                    n_ctx=self.spec.n_ctx,
                    n_threads=self.n_threads,
                    verbose=False,
                    seed=0,
                )
            except ValueError as exc:  # llama-cpp-python's word for a file llama.cpp could not load
                # a failed attempt like any backend failure (recorded, the next model tried); the path and
                # llama.cpp's reasons go to the log only, never to a client
                raise BackendError(f"{self.card.name}: llama.cpp could not load the model's weights; the log says "
                                   "why (is `backend.weights` a GGUF file of this model?)", detail=str(exc)) from exc
            self._check_tools_template()
            self._generated.watch(self._llm)
        return self._llm

    def _check_tools_template(self) -> None:
        """A card that lists ``tools`` needs a ChatML model: the function-calling format is written in ChatML turns
        (the GGUF's chat template says which format the model was trained on; it is read with the weights)."""
        template = str(self._llm.metadata.get("tokenizer.chat_template", ""))
        if self.card.can("tools") and CHATML_MARK not in template:
            self._llm = None
            raise ConfigError(f"{self.card.path}: field `capabilities`: `tools` needs a ChatML chat model "
                              f"({CHATML_MARK} turns); {self.model_path.name}'s chat template is not ChatML")

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self.llm.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False))

    def prompt_tokens(self, messages: list[ChatMessage], options: ModelOptions = NO_OPTIONS) -> int:
        if self.spec.prompt_style == "completion":
            return self.count_tokens(completion_prompt(messages))
        # exactly what llama.cpp reads: the tools' text is often most of a tool prompt, and the chat template's
        # turns and default system prompt are tokens the context must hold too
        prompt = self._tool_prompt(messages, options) if options.tool_use else self._chat_prompt(messages)
        return len(self.llm.tokenize(prompt.encode("utf-8", "replace"), add_bos=False, special=True))

    def stream(self, request: GenerationRequest) -> Iterator[StreamEvent]:
        max_tokens = request.max_tokens or self.spec.default_max_tokens
        temperature = self.spec.temperature if request.temperature is None else request.temperature
        stop = list(self.spec.stop) + list(request.stop or [])
        if not request.options.plain or request.options.passthrough:
            yield from self._structured(request, max_tokens, temperature, stop)
            return
        # confidence for cascades, only when asked (costs one softmax over the vocabulary per token)
        top_logprobs: list[float] = []
        extra: dict[str, Any] = (
            {"logits_processor": [ConfidenceRecorder(top_logprobs)]} if request.want_confidence else {}
        )
        self._acquire(request)  # a llama.cpp context serves one generation at a time
        pieces: Any = None
        try:
            try:
                if self.spec.prompt_style == "completion":
                    prompt = completion_prompt(request.messages)
                    prompt_tokens = len(self.llm.tokenize(prompt.encode("utf-8", "replace")))
                    pieces = self.llm.create_completion(
                        prompt,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        stop=stop + ["\nQuestion:", "\n\n"],
                        repeat_penalty=self.spec.repeat_penalty,
                        stream=True,
                        **extra,
                    )
                    get = _completion_text
                else:
                    messages = [{"role": m.role, "content": m.text} for m in request.messages]
                    if self.spec.system_prompt and not any(m["role"] == "system" for m in messages):
                        messages.insert(0, {"role": "system", "content": self.spec.system_prompt})
                    prompt_tokens = self.prompt_tokens(request.messages)
                    pieces = self.llm.create_chat_completion(
                        messages, max_tokens=max_tokens, temperature=temperature, stop=stop or None, stream=True,
                        repeat_penalty=self.spec.repeat_penalty, **extra,
                    )
                    get = _chat_text
                produced: list[str] = []
                finish = "stop"
                for piece in pieces:
                    request.check(self.card.name)  # between tokens: the caller gone or the deadline passed
                    text, reason = get(piece)
                    if reason:
                        finish = reason
                    if not produced:
                        text = text.lstrip()
                    if text:
                        produced.append(text)
                        yield StreamEvent(text=text)
            except RouterError:
                raise
            except Exception as exc:
                raise BackendError(f"{self.card.name}: llama.cpp generation failed ({type(exc).__name__})",
                                   detail=str(exc)) from exc
            completion_tokens = self._generated.count
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # a llama.cpp generator stopped early ends here, while the context is still ours
            self._lock.release()
        yield StreamEvent(
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            confidence=mean_token_probability(top_logprobs),
        )

    def _structured(self, request: GenerationRequest, max_tokens: int, temperature: float,
                    stop: list[str]) -> Iterator[StreamEvent]:
        """Tools, a response format, log probabilities or sampling parameters: the token loop of
        :mod:`.llama_chat` instead of llama-cpp-python's chat completion."""
        extra = request.options.passthrough
        sampling = {"temp": temperature, "repeat_penalty": self.spec.repeat_penalty, "top_k": 40,
                    "top_p": extra.get("top_p", 0.95), "min_p": 0.05,
                    "presence_penalty": extra.get("presence_penalty", 0.0),
                    "frequency_penalty": extra.get("frequency_penalty", 0.0)}
        self._acquire(request)
        events = None
        try:
            try:
                chat = StructuredChat(self, request, max_tokens, sampling, stop)
                if self.spec.prompt_style == "completion":
                    prompt, bos = completion_prompt(request.messages), True
                    chat.stop = stop + ["\nQuestion:", "\n\n"]
                    events = chat.events(prompt, add_bos=bos, completion_style=True)
                elif request.options.tool_use:
                    events = chat.events(self._tool_prompt(request.messages, request.options), add_bos=False)
                else:
                    events = chat.events(self._chat_prompt(request.messages), add_bos=False)
                yield from events
            except RouterError:
                raise
            except Exception as exc:
                raise BackendError(f"{self.card.name}: llama.cpp generation failed ({type(exc).__name__})",
                                   detail=str(exc)) from exc
        finally:
            if events is not None:
                events.close()
            self._lock.release()

    def _tool_prompt(self, messages: list[ChatMessage], options: ModelOptions) -> str:
        """A tool conversation in ChatML with the tools offered (none when ``tool_choice`` is ``none``)."""
        tools = options.tools if options.tools is not None and options.tools.choice != "none" else None
        return render_chatml(messages, tools, self.spec.system_prompt or DEFAULT_SYSTEM)

    def _chat_prompt(self, messages: list[ChatMessage]) -> str:
        """The conversation through the GGUF's own chat template, as ``create_chat_completion`` renders it."""
        from llama_cpp import llama_chat_format

        if self._formatter is None:
            llm = self.llm
            eos, bos = llm.token_eos(), llm.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=llm.metadata["tokenizer.chat_template"],
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "")
        turns = [{"role": m.role, "content": m.text} for m in messages]
        if self.spec.system_prompt and not any(t["role"] == "system" for t in turns):
            turns.insert(0, {"role": "system", "content": self.spec.system_prompt})
        return self._formatter(messages=turns).prompt

    def _acquire(self, request: GenerationRequest) -> None:
        """Take the generation lock, waiting no longer than the request may (checked every 50 ms)."""
        request.check(self.card.name, waiting=True)
        if request.deadline is None and request.cancel is None:
            self._lock.acquire()
        else:
            while not self._lock.acquire(timeout=0.05):
                request.check(self.card.name, waiting=True)
        request.has_turn()

    def close(self) -> None:
        # Wait for a generation in progress, but never hang shutdown on an abandoned one.
        acquired = self._lock.acquire(timeout=30)
        try:
            if self._llm is not None and acquired:
                if hasattr(self._llm, "close"):
                    self._llm.close()
                self._llm = None
        finally:
            if acquired:
                self._lock.release()


class GeneratedTokens:
    """How many tokens the model generated in the last run of ``Llama.generate`` on the watched model: the tokens
    it handed out that are not an end-of-generation token.

    llama-cpp-python's own streamed completion reports no usage, and its text has lost tokens the model generated:
    leading whitespace (stripped here) and the stop string that ended the answer (cut by llama-cpp-python), so
    counting the text's tokens again misses them. The completion takes every token ``generate`` gives it into the
    answer (checking for a stop string after each) and ends at an end-of-generation token without taking it, which
    is also what the token loop (:func:`.llama_loop.run`) counts."""

    def __init__(self) -> None:
        self.count = 0

    def watch(self, llm: Any) -> None:
        """Count what ``llm.generate`` hands out from now on (the wrapper holds the model weakly: a model that held
        itself would outlive its last user until the garbage collector ran)."""
        generate_tokens = type(llm).generate
        model = weakref.ref(llm)

        def generate(*args: Any, **kwargs: Any) -> Iterator[int]:
            self.count = 0
            watched = model()
            tokens = generate_tokens(watched, *args, **kwargs)
            try:
                for token in tokens:
                    if not is_end(watched, token):
                        self.count += 1
                    yield token
            finally:
                tokens.close()

        llm.generate = generate


def _chat_text(piece: dict[str, Any]) -> tuple[str, str | None]:
    choice = piece["choices"][0]
    return choice.get("delta", {}).get("content") or "", choice.get("finish_reason")


def _completion_text(piece: dict[str, Any]) -> tuple[str, str | None]:
    choice = piece["choices"][0]
    return choice.get("text") or "", choice.get("finish_reason")


def mean_token_probability(logprobs: list[float]) -> float | None:
    """Geometric-mean token probability, a cheap confidence signal for cascades."""
    if not logprobs:
        return None
    return math.exp(sum(logprobs) / len(logprobs))
