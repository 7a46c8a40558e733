"""OpenAI-shaped request and response types, plus the `routing` block that says what happened.

Responses read like the OpenAI client's objects (``resp.choices[0].message.content``, ``resp.usage``),
and ``model_dump()`` gives the JSON the proxy sends.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant", "tool", "developer"]
Tier = Literal["specialist", "small", "large"]
TIER_ORDER: dict[str, int] = {"specialist": 0, "small": 1, "large": 2}
"""Smallest first: breaks ties in energy, and says which model is the "largest" (the reference of a relative
accuracy target, the always-large baseline)."""
EnergyKind = Literal["measured", "estimated"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str


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


class Choice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: str | None = "stop"
    logprobs: None = None


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
    role: Role | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    routing: Routing | None = None


def new_request_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"
