"""router: send every AI text request to the smallest model that answers it well, and show its energy.

>>> from router import Router
>>> r = Router()
>>> r.complete(messages=[{"role": "user", "content": "Sentiment: 'a gorgeous, witty film'"}]).routing
"""

from ._request import PreparedRequest
from ._router import Router
from .cards import ModelCard, load_card, load_cards
from .config import RouterConfig
from .errors import (
    AuthenticationError,
    BackendError,
    BackendRefusedError,
    BackendUnavailableError,
    BadRequestError,
    BatchStoreError,
    BudgetExhaustedError,
    CancelledError,
    CapabilityError,
    ConfigError,
    ContextLengthError,
    DeadlineExceededError,
    InternalError,
    LedgerError,
    NotFoundError,
    PermissionDeniedError,
    RouterClosedError,
    RouterError,
    StructuredOutputError,
    UnknownModelError,
)
from .ledger.feedback import Feedback
from .types import ChatCompletion, ChatCompletionChunk, ChatMessage, Routing, Usage

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendRefusedError",
    "BackendUnavailableError",
    "BadRequestError",
    "BatchStoreError",
    "BudgetExhaustedError",
    "CancelledError",
    "CapabilityError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatMessage",
    "ConfigError",
    "ContextLengthError",
    "Feedback",
    "DeadlineExceededError",
    "InternalError",
    "LedgerError",
    "ModelCard",
    "NotFoundError",
    "PermissionDeniedError",
    "PreparedRequest",
    "Router",
    "RouterClosedError",
    "RouterConfig",
    "RouterError",
    "Routing",
    "StructuredOutputError",
    "UnknownModelError",
    "Usage",
    "load_card",
    "load_cards",
]
