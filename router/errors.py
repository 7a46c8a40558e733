"""Typed exceptions. Every error a caller can fix says what to fix.

The proxy maps each class to an OpenAI-style error body and HTTP status (see ``http_status``/``error_type``),
so library users and HTTP clients see the same taxonomy.
"""

from __future__ import annotations


class RouterError(Exception):
    """Base class for everything `router` raises on purpose."""

    http_status: int = 500
    error_type: str = "router_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict[str, object]:
        """The error in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        }


class BadRequestError(RouterError):
    """The request itself is wrong: empty messages, bad roles, non-string content, bad parameters."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class UnknownModelError(BadRequestError):
    """A model name that no model card describes."""

    http_status = 404
    code = "model_not_found"


class ContextLengthError(BadRequestError):
    """The prompt does not fit the chosen model's context window."""

    code = "context_length_exceeded"


class ConfigError(RouterError):
    """A model card, policy file or config value is invalid. The message names the file and the field."""

    http_status = 500
    error_type = "config_error"
    code = "bad_config"


class BackendError(RouterError):
    """A model backend failed (crash, timeout, HTTP error) and no fallback was allowed."""

    http_status = 502
    error_type = "backend_error"
    code = "backend_failed"


class BackendUnavailableError(BackendError):
    """The backend is cooling down after repeated failures, or cannot be reached at all."""

    http_status = 503
    code = "backend_unavailable"


class BudgetExhaustedError(RouterError):
    """An energy budget is spent and the policy says reject. ``retry_after_s`` says when the window rolls."""

    http_status = 429
    error_type = "budget_exhausted"
    code = "budget_exhausted"

    def __init__(self, message: str, *, retry_after_s: float | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class AuthenticationError(RouterError):
    """Missing or invalid API key (proxy only)."""

    http_status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"
