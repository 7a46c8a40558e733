"""Model capabilities: what a model can do besides answering in text, listed on its card and checked when the
card is loaded.

====================  =========================================================  ==========================
capability            what the request sends                                      checked at load against
====================  =========================================================  ==========================
``tools``             ``tools`` / ``functions``, or tool calls in its history     llama.cpp: a chat-style card
                                                                                  and llama-cpp-python's
                                                                                  grammar support (the call's
                                                                                  arguments are constrained
                                                                                  to the function's schema)
``json_object``       ``response_format: {"type": "json_object"}``                llama.cpp: its JSON grammar
``json_schema``       ``response_format: {"type": "json_schema", ...}``           llama.cpp: its JSON-Schema
                                                                                  to grammar converter
``logprobs``          ``logprobs: true`` (``top_logprobs``)                       llama.cpp: always (computed
                                                                                  from the logits row)
``reasoning``         ``reasoning_effort`` is forwarded to it                     remote models only
====================  =========================================================  ==========================

A remote (OpenAI-compatible) model's capabilities are declared: the card says what its endpoint supports. An ONNX
specialist answers with a label and has none. A request that needs a capability is answered only by models that
have it; when none has it the request is a 400 (:class:`~router.errors.CapabilityError`) naming it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal, get_args

Capability = Literal["tools", "json_object", "json_schema", "logprobs", "reasoning"]
CAPABILITIES: tuple[str, ...] = get_args(Capability)

PARAM_OF = {"tools": "tools", "json_object": "response_format", "json_schema": "response_format",
            "logprobs": "logprobs", "reasoning": "reasoning_effort"}
"""The request parameter that asks for each capability (what a :class:`CapabilityError` names)."""


def unsupported(backend_type: str, capabilities: list[str], prompt_style: str | None = None) -> dict[str, str]:
    """The capabilities a backend of this type cannot have, each with the reason (empty when all are possible)."""
    if backend_type == "onnx":
        return {c: "an ONNX specialist answers with a label" for c in capabilities}
    if backend_type == "openai":
        return {}
    if backend_type != "llama_cpp":
        return {c: f"backend type {backend_type!r} has no capabilities" for c in capabilities}
    found = llama_cpp_features()
    out: dict[str, str] = {}
    for c in capabilities:
        if c == "reasoning":
            out[c] = "llama.cpp models here are not reasoning models (no reasoning_effort)"
        elif c == "tools" and prompt_style != "chat":
            out[c] = "tool calling needs a chat model (prompt_style: chat); this card runs completion-style"
        elif c in ("tools", "json_object", "json_schema") and c not in found:
            out[c] = f"the installed llama-cpp-python lacks {found.get('missing:' + c, 'grammar support')}"
    return out


@lru_cache(maxsize=1)
def llama_cpp_features() -> dict[str, str]:
    """What the installed llama-cpp-python can do, by capability (read once): grammars from JSON and from JSON
    Schema are what tool arguments, JSON mode and schemas are held to."""
    try:
        from llama_cpp import llama_grammar
    except ImportError:
        return {f"missing:{c}": "llama_cpp (not installed)" for c in ("tools", "json_object", "json_schema")}
    features: dict[str, str] = {}
    if hasattr(llama_grammar, "JSON_GBNF") and hasattr(llama_grammar.LlamaGrammar, "from_string"):
        features["json_object"] = "LlamaGrammar.from_string(JSON_GBNF)"
    else:
        features["missing:json_object"] = "llama_grammar.JSON_GBNF"
    if hasattr(llama_grammar, "json_schema_to_gbnf") and "json_object" in features:
        features["json_schema"] = "llama_grammar.json_schema_to_gbnf"
        features["tools"] = "llama_grammar.json_schema_to_gbnf"
    else:
        features["missing:json_schema"] = features["missing:tools"] = "llama_grammar.json_schema_to_gbnf"
    return features
