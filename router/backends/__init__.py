"""Backends: ONNX specialists, local GGUF LLMs (llama.cpp) and OpenAI-compatible HTTP endpoints."""

from __future__ import annotations

from ..cards import LlamaCppBackendSpec, ModelCard, OnnxBackendSpec, OpenAIBackendSpec
from ..errors import ConfigError
from .base import Backend, Generation, GenerationRequest, StreamEvent
from .faults import FaultInjectingBackend


def create_backend(card: ModelCard) -> Backend:
    """The backend a card describes. Heavy imports happen here, not at package import."""
    spec = card.backend
    if isinstance(spec, OnnxBackendSpec):
        from .onnx_specialist import OnnxSpecialistBackend

        return OnnxSpecialistBackend(card)
    if isinstance(spec, LlamaCppBackendSpec):
        from .llama_cpp import LlamaCppBackend

        return LlamaCppBackend(card)
    if isinstance(spec, OpenAIBackendSpec):
        from .openai_http import OpenAIHTTPBackend

        return OpenAIHTTPBackend(card)
    raise ConfigError(f"{card.path}: model {card.name!r} has no backend; it can only be used in simulation")


__all__ = [
    "Backend",
    "FaultInjectingBackend",
    "Generation",
    "GenerationRequest",
    "StreamEvent",
    "create_backend",
]
