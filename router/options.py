"""What a request asks of the model besides its messages, length, temperature and stop strings: tools, a
response format, log probabilities, and sampling parameters passed through to remote models. One frozen object,
checked once (:func:`router._request.check_params`), carried from the request to the backend unchanged.

It also says which model *capabilities* the request needs (:attr:`ModelOptions.capabilities`): only models whose
card lists them are candidates (:mod:`router.capabilities`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

from .structured import ResponseFormat
from .tools import ToolOptions

_NOTHING: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class ModelOptions:
    tools: ToolOptions | None = None
    """The tools offered, the choice and whether calls may run in parallel (``None``: no tools offered)."""
    tool_history: bool = False
    """The messages hold tool calls or tool results (the model must read them even when no tools are offered)."""
    response_format: ResponseFormat | None = None
    """JSON mode or a JSON schema (``None``: plain text)."""
    top_logprobs: int | None = None
    """``None``: no log probabilities; else how many alternatives per token (0-20) besides the chosen one."""
    passthrough: Mapping[str, Any] = field(default_factory=lambda: _NOTHING)
    """Sampling parameters sent as they came to remote models (``top_p``, ``seed``, penalties, ``logit_bias``);
    local models apply what their runtime can."""
    reasoning_effort: str | None = None
    """Sent only to models whose card lists ``reasoning``; a hint the others do without."""

    @cached_property
    def tool_use(self) -> bool:
        """Tools offered or tool history: the request is the ``tools`` task and needs the ``tools`` capability."""
        return self.tools is not None or self.tool_history

    @cached_property
    def capabilities(self) -> frozenset[str]:
        """The capabilities a model needs to answer this request."""
        needed = []
        if self.tool_use:
            needed.append("tools")
        if self.response_format is not None:
            needed.append(self.response_format.kind)
        if self.top_logprobs is not None:
            needed.append("logprobs")
        return frozenset(needed)

    @cached_property
    def plain(self) -> bool:
        """Nothing beyond text in, text out."""
        return (self.tools is None and not self.tool_history and self.response_format is None
                and self.top_logprobs is None)


NO_OPTIONS = ModelOptions()


def output_problem(options: ModelOptions, text: str, tool_calls: list[dict[str, Any]] | None,
                   finish_reason: str, context_full: bool = False) -> str | None:
    """Why an answer does not give what the request asked for (JSON, a schema, valid tool calls), or ``None``.

    An answer cut short (``length``) is still checked (a cut call or JSON text is not what was asked for), and the
    message says the cut is why, whatever part of the answer it broke: ``max_tokens``, or, ``context_full``, the
    model's context, which a larger ``max_tokens`` would not help."""
    problem = _problem(options, text, tool_calls)
    if problem is not None and finish_reason == "length":
        cut = ("because the model's context is full (shorten the prompt or use a model with a longer context)"
               if context_full else "at max_tokens (raise it)")
        problem = f"the answer was cut {cut}: {problem}"
    return problem


def _problem(options: ModelOptions, text: str, tool_calls: list[dict[str, Any]] | None) -> str | None:
    if options.tools is not None:
        problem = options.tools.problem(tool_calls or [])
        if problem is not None or tool_calls:
            return problem
    elif tool_calls:
        return "the model called a tool although none was offered"
    if options.response_format is None:
        return None
    return options.response_format.problem(text)
