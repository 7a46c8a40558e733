"""llama.cpp generation driven one token at a time, for requests that need more than text: a grammar (JSON mode, a
JSON schema, a tool call's arguments), log probabilities, or several steps on one context (a tool call, then the
next). Plain requests keep llama-cpp-python's own ``create_chat_completion``.

Why drive ``Llama.generate`` here instead of asking ``create_completion`` for logprobs and grammars:

- log probabilities: llama-cpp-python computes them only with ``logits_all=True``, which keeps n_ctx x vocabulary
  floats per context (~0.4 GB for SmolLM2, ~2 GB for Gemma 3) for every call. :class:`LogprobRecorder` reads the one
  logits row the sampler already has, before sampling, and pairs it with the token sampled from it, which only
  this loop sees;
- each step checks the request (caller gone, deadline passed) between tokens, and ``max_tokens`` bounds the
  request's tokens across all of its steps;
- grammars are checked by llama.cpp's own parser before use (:func:`grammar`): a grammar it cannot parse would
  crash the sampler, and schemas come from callers.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Budget:
    """The tokens one request may still generate, across all of its steps, and what it has generated."""

    left: int
    produced: int = 0


@dataclass
class Step:
    """One run of the sampler: its text (and log probabilities, when asked) as it arrives, and how it ended."""

    finish_reason: str = "stop"
    context_full: bool = False
    """Ended at ``length`` because the model's context is full (not the ``max_tokens`` budget)."""
    text: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    """One entry per token of ``text``, added as the token's text is yielded: their bytes join to exactly
    ``text``'s (see :class:`_LogprobAligner`)."""


class LogprobRecorder:
    """A llama.cpp logits processor that only reads: before each token is sampled it keeps the row's log-sum-exp
    and a copy of the row, so the sampled token's log probability and the ``top`` most likely tokens are known
    once the loop sees which token it was. Also feeds the cascade's confidence signal (log P of the top token)."""

    def __init__(self, top: int, confidence: list[float] | None) -> None:
        self.top = top
        self.confidence = confidence
        self.row: Any = None
        self.lse = 0.0

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        x = np.array(logits, dtype=np.float64)  # a copy: later sampler stages rewrite the buffer
        peak = float(x.max())
        self.lse = peak + math.log(float(np.exp(x - peak).sum()))
        self.row = x
        if self.confidence is not None:
            self.confidence.append(peak - self.lse)
        return logits

    def entry(self, llm: Any, token: int) -> dict[str, Any]:
        """The OpenAI logprob entry of ``token``, sampled from the last row seen."""
        import numpy as np

        x = self.row
        top: list[dict[str, Any]] = []
        if self.top:
            ids = np.argpartition(-x, self.top)[: self.top]
            for i in ids[np.argsort(-x[ids])]:
                top.append(_token_entry(llm, int(i), float(x[i]) - self.lse))
        out = _token_entry(llm, token, float(x[token]) - self.lse)
        out["top_logprobs"] = top
        return out


def _token_entry(llm: Any, token: int, logprob: float) -> dict[str, Any]:
    raw = llm.detokenize([token])
    return {"token": raw.decode("utf-8", "replace"), "logprob": max(logprob, -9999.0), "bytes": list(raw)}


class _LogprobAligner:
    """Keeps a step's logprob entries to the text it returns, as OpenAI's cover exactly the returned content.

    The sampled tokens run past the text where a stop string cuts it (the stop string's tokens are sampled, then
    left out) and before it where leading whitespace is stripped. Each entry is handed to the step once its bytes
    are all in the text yielded; at the end, entries wholly outside the text are dropped, and a token that
    straddles an edge (``" counter"`` when the stop string is ``"ounter"``) is kept, its ``token`` and ``bytes``
    cut to the part inside the text, its ``logprob`` and ``top_logprobs`` still the whole token's: the text
    came from that token, and the client can join the tokens back into the content."""

    def __init__(self, step: Step, recorder: LogprobRecorder, llm: Any) -> None:
        self.step = step
        self.recorder = recorder
        self.llm = llm
        self.waiting: list[tuple[int, dict[str, Any]]] = []  # (offset of the token's first byte, entry)
        self.sampled = 0  # bytes sampled so far
        self.skipped = 0  # leading bytes left out of the text (stripped whitespace)
        self.given = 0  # end of the text yielded so far, in bytes sampled

    def sampled_token(self, token: int) -> None:
        entry = self.recorder.entry(self.llm, token)
        self.waiting.append((self.sampled, entry))
        self.sampled += len(entry["bytes"])

    def skip(self, text: str) -> None:
        self.skipped += len(text.encode("utf-8"))
        self.given = max(self.given, self.skipped)

    def give(self, text: str) -> None:
        """``text`` is about to be yielded: hand over the entries it completes."""
        self.given += len(text.encode("utf-8"))
        while self.waiting:
            start, entry = self.waiting[0]
            if start + len(entry["bytes"]) > self.given:
                break
            self.waiting.pop(0)
            self.step.logprobs.append(self._inside(start, entry))

    def finish(self) -> None:
        """The text is whole: a token it ends inside is cut at its end, those after it dropped."""
        for start, entry in self.waiting:
            if start < self.given:
                self.step.logprobs.append(self._inside(start, entry))
        self.waiting.clear()

    def _inside(self, start: int, entry: dict[str, Any]) -> dict[str, Any]:
        raw = bytes(entry["bytes"])
        kept = raw[max(0, self.skipped - start): self.given - start]
        if kept == raw:
            return entry
        return {**entry, "token": kept.decode("utf-8", "replace"), "bytes": list(kept)}


class ConfidenceRecorder:
    """The cascade's confidence signal alone: log P(most likely next token) per step, no row kept.

    Why this signal: asking llama.cpp for logprobs needs ``logits_all=True`` (n_ctx x vocab floats: ~0.4 GB
    for SmolLM2, ~2 GB for Gemma 3) on every call; reading the one logits row the sampler already has costs a
    softmax per token. With greedy decoding (temperature 0, the cards' default) the top token is the one
    emitted, so this is exactly the emitted token's probability before the repeat penalty."""

    def __init__(self, sink: list[float]) -> None:
        self.sink = sink

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        x = np.asarray(logits, dtype=np.float64)
        top = float(x.max())
        self.sink.append(-math.log(float(np.exp(x - top).sum())))
        return logits


class LogitBias:
    """OpenAI's ``logit_bias`` (token id -> bias added to its logit) as a logits processor."""

    def __init__(self, bias: Mapping[str, float], n_vocab: int) -> None:
        self.bias = {int(k): float(v) for k, v in bias.items() if 0 <= int(k) < n_vocab}

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        for token, value in self.bias.items():
            logits[token] += value
        return logits


def run(llm: Any, tokens: list[int], budget: Budget, *, sampling: Mapping[str, Any], check: Callable[[], None],
        grammar_text: str | None = None, stop: list[str] | None = None, recorder: LogprobRecorder | None = None,
        processors: list[Any] | None = None, strip_leading: bool = False, step: Step | None = None) -> Iterator[str]:
    """Sample after ``tokens`` until an end-of-generation token, a stop string, the grammar's end, the budget or a
    full context; yield the text as it becomes final (a possible stop string is held back until it is ruled out).
    The tokens sampled are appended to ``tokens`` (the next step continues the same context) and ``step`` gets the
    finish reason, the text and the log probabilities."""
    from llama_cpp import LlamaGrammar

    step = step if step is not None else Step()
    aligner = _LogprobAligner(step, recorder, llm) if recorder is not None else None
    stop = [s for s in stop or [] if s]
    chain = [p for p in ([recorder] if recorder else []) + (processors or [])]
    kwargs = dict(sampling)
    if chain:
        kwargs["logits_processor"] = chain
    if grammar_text is not None:
        kwargs["grammar"] = LlamaGrammar.from_string(grammar_text, verbose=False)
    pending = b""  # bytes of an unfinished UTF-8 character
    held = ""  # text that may be the start of a stop string
    text_parts: list[str] = []
    step.finish_reason = "length"
    room = llm.n_ctx()  # a token past the context would fail the decode (and the call): stop at "length" instead
    if budget.left <= 0 or len(tokens) >= room:
        step.context_full = len(tokens) >= room
        return
    tokens_out = llm.generate(list(tokens), reset=True, **kwargs)
    try:
        for token in tokens_out:
            check()
            if is_end(llm, token):
                step.finish_reason = "stop"
                break
            tokens.append(token)
            budget.left -= 1
            budget.produced += 1
            if aligner is not None:
                aligner.sampled_token(token)
            pending += llm.detokenize([token])
            try:
                piece = pending.decode("utf-8")
                pending = b""
            except UnicodeDecodeError as exc:
                if exc.reason != "unexpected end of data":
                    piece, pending = pending.decode("utf-8", "replace"), b""
                else:
                    piece = pending[: exc.start].decode("utf-8")
                    pending = pending[exc.start:]
            held += piece
            if strip_leading and not text_parts:
                stripped = held.lstrip()
                if aligner is not None:
                    aligner.skip(held[: len(held) - len(stripped)])
                held = stripped
            cut = _stop_at(held, stop)
            if cut is not None:
                held = held[:cut]
                step.finish_reason = "stop"
                if held:
                    text_parts.append(held)
                    if aligner is not None:
                        aligner.give(held)
                    yield held
                held = ""
                break
            keep = _stop_prefix(held, stop)
            out, held = held[: len(held) - keep], held[len(held) - keep:]
            if out:
                text_parts.append(out)
                if aligner is not None:
                    aligner.give(out)
                yield out
            if budget.left <= 0 or len(tokens) >= room:
                break
    finally:
        tokens_out.close()  # the context is left consistent before the next step (or the lock) takes it
    step.context_full = step.finish_reason == "length" and len(tokens) >= room
    if held:
        text_parts.append(held)
        if aligner is not None:
            aligner.give(held)
        yield held
    if aligner is not None:
        aligner.finish()
    step.text = "".join(text_parts)


def _stop_at(text: str, stop: list[str]) -> int | None:
    found = [text.index(s) for s in stop if s in text]
    return min(found) if found else None


def _stop_prefix(text: str, stop: list[str]) -> int:
    """How many characters at the end of ``text`` could begin a stop string."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


def is_end(llm: Any, token: int) -> bool:
    import llama_cpp

    model = getattr(llm, "_model", None)
    vocab = getattr(model, "vocab", None)
    if vocab is not None:
        return bool(llama_cpp.llama_vocab_is_eog(vocab, token))
    return token == llm.token_eos()


# -- grammars ---------------------------------------------------------------------------------------------------
def json_grammar() -> str:
    from llama_cpp import llama_grammar

    return llama_grammar.JSON_GBNF


@lru_cache(maxsize=256)
def schema_grammar(schema_json: str) -> str:
    """A grammar for JSON matching ``schema_json``; the plain JSON grammar when the schema uses what the converter
    cannot express (the answer is still validated against the schema afterwards)."""
    from llama_cpp import llama_grammar

    try:
        text = llama_grammar.json_schema_to_gbnf(schema_json)
    except Exception as exc:  # the converter raises plain exceptions for what it does not support
        log.info("JSON schema not expressible as a grammar (%s); using the plain JSON grammar", exc)
        return json_grammar()
    return _astral_escapes(text)


def checked(llm: Any, grammar_text: str) -> str:
    """``grammar_text`` when llama.cpp's parser accepts it, else the plain JSON grammar (a grammar it rejects would
    leave the sampler without one: a crash, not an error)."""
    return grammar_text if _parses(llm, grammar_text) else json_grammar()


_PARSED: dict[str, bool] = {}


def _parses(llm: Any, grammar_text: str) -> bool:
    ok = _PARSED.get(grammar_text)
    if ok is None:
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, grammar_text.encode("utf-8"), b"root")
        ok = bool(sampler)
        if ok:
            llama_cpp.llama_sampler_free(sampler)
        else:
            log.warning("llama.cpp could not parse a grammar built from a schema; using the plain JSON grammar")
        if len(_PARSED) > 1024:
            _PARSED.clear()
        _PARSED[grammar_text] = ok
    return ok


def literal(text: str) -> str:
    """A GBNF string literal."""
    return _astral_escapes(json.dumps(text))


_SURROGATE_PAIR = re.compile(r"\\\\|\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", re.IGNORECASE)


def _astral_escapes(gbnf: str) -> str:
    """``gbnf`` with JSON's surrogate-pair escapes (``\\ud83d\\udc4d``, which ``json.dumps`` writes for a character
    beyond U+FFFF, such as an emoji) as GBNF's ``\\U0001f44d``: GBNF reads each half as a code point of its own,
    so the grammar would ask for two invalid UTF-8 sequences and the value could never be generated. An escaped
    backslash is matched first so that ``\\\\ud83d`` (a backslash, then text) is left alone."""
    def join(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return m.group(0)
        high, low = int(m.group(1), 16), int(m.group(2), 16)
        return f"\\U{0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00):08x}"

    return _SURROGATE_PAIR.sub(join, gbnf)
