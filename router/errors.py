"""Every error ``router`` raises on purpose, in one hierarchy. Each says what to fix.

::

    RouterError                         500  router_error
    ├── BadRequestError                 400  invalid_request_error   the request itself is wrong
    │   ├── UnknownModelError           404                          no card, alias or policy by that name
    │   ├── ContextLengthError          400  context_length_exceeded the prompt does not fit
    │   ├── CapabilityError             400  capability_unsupported  no candidate can do what the request needs
    │   ├── NotFoundError               404                          no such route or object (proxy)
    │   ├── MethodNotAllowedError       405                          (proxy)
    │   ├── RequestTimeoutError         408                          the body came too slowly (proxy)
    │   ├── PayloadTooLargeError        413                          (proxy)
    │   └── UnsupportedEncodingError    415                          a Content-Encoding other than gzip, deflate (proxy)
    ├── AuthenticationError             401                          missing or invalid API key (proxy)
    ├── PermissionDeniedError           403                          the key may not do this (proxy)
    ├── BudgetExhaustedError            429  budget_exhausted        an energy budget is spent; ``retry_after_s``
    ├── BackendError                    502  backend_error           a model backend failed
    │   ├── BackendUnavailableError     503                          cooling down, unreachable, timed out
    │   ├── BackendRefusedError         502                          the endpoint refused the request (400, 413, 422)
    │   └── StructuredOutputError       502  invalid_model_output    no model's answer matched the format asked
    ├── DeadlineExceededError           504  timeout_error           the request's deadline passed
    ├── CancelledError                  499  cancelled               the caller went away (never sent to a client)
    ├── RouterClosedError               503  router_closed           a call after Router.close() (a RuntimeError too)
    ├── ConfigError                     500  config_error            a card, policy or config value is wrong
    ├── LedgerError                     503  ledger_error            the ledger store is unusable
    │   └── BatchStoreError             503  batch_store_error       the batch store is unusable
    └── InternalError                   500  server_error            a bug: the message never shows internals

The proxy answers each with ``to_openai()`` (OpenAI's ``{"error": {"message", "type", "param", "code"}}``) and
``http_status``, so library users and HTTP clients see the same taxonomy; an error whose ``retry_after_s`` is set
(a spent budget's window, a model's cooldown, a store's next check) also carries ``Retry-After``. A message never
holds what a client must not see (an upstream's error body, its URL, a file path): that goes to ``detail``, which
is logged and never sent. Nothing else escapes the library's public calls: anything unexpected is wrapped in
:class:`InternalError` with the original as its cause.
"""

from __future__ import annotations

from pathlib import Path


class RouterError(Exception):
    """Base class for everything ``router`` raises on purpose."""

    http_status: int = 500
    error_type: str = "router_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 detail: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.detail = detail
        """What an operator needs and a client must not see (an upstream's answer, a URL): logged, never sent."""
        self.retry_after_s = retry_after_s
        """Seconds after which a retry may succeed, where the raiser knows them (the proxy's ``Retry-After``);
        ``None``: no retry will help by waiting, or nobody can say when."""

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


class CapabilityError(BadRequestError):
    """The request needs something (tools, a JSON schema, logprobs, ...) that no candidate model can do."""

    code = "capability_unsupported"


class NotFoundError(BadRequestError):
    """No such route, file or batch."""

    http_status = 404
    code = "not_found"


class MethodNotAllowedError(BadRequestError):
    http_status = 405
    code = "method_not_allowed"


class RequestTimeoutError(BadRequestError):
    """The client did not send its request in time (a slow body): the proxy answers and closes the connection."""

    http_status = 408
    code = "request_timeout"


class PayloadTooLargeError(BadRequestError):
    http_status = 413
    code = "request_too_large"


class HeadersTooLargeError(BadRequestError):
    """A request's line and headers are longer than the proxy reads: it answers and closes the connection."""

    http_status = 431
    code = "request_headers_too_large"


class UnsupportedEncodingError(BadRequestError):
    """A request body in a ``Content-Encoding`` the proxy cannot undo (``br``, ``zstd``, ...): read as it is, it
    would be taken for something it is not. The answer carries ``Accept-Encoding`` with what is accepted."""

    http_status = 415
    code = "unsupported_content_encoding"


class AuthenticationError(RouterError):
    """Missing or invalid API key (proxy only)."""

    http_status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDeniedError(RouterError):
    """A valid key that may not use this route (e.g. an admin page without ``admin: true``)."""

    http_status = 403
    error_type = "permission_error"
    code = "permission_denied"


class BudgetExhaustedError(RouterError):
    """An energy budget is spent and the policy says reject. ``retry_after_s`` says when the window rolls;
    ``model`` names the model whose budget is spent, and ``request_id`` is the request's id in the ledger, whose
    ``rejected`` record keeps the refusal. ``budgets``: the ledger keys of that model's budgets, when the decision
    refused it (the proxy lists them in ``/metrics`` as it lists a decided request's)."""

    http_status = 429
    error_type = "budget_exhausted"
    code = "budget_exhausted"

    def __init__(self, message: str, *, retry_after_s: float | None = None, param: str | None = None,
                 model: str | None = None, request_id: str | None = None, budgets: tuple[str, ...] = ()) -> None:
        super().__init__(message, param=param, retry_after_s=retry_after_s)
        self.model = model
        self.request_id = request_id
        self.budgets = budgets


class BackendError(RouterError):
    """A model backend failed (crash, HTTP error) and no fallback was left."""

    http_status = 502
    error_type = "backend_error"
    code = "backend_failed"


class BackendUnavailableError(BackendError):
    """The backend is cooling down after repeated failures, cannot be reached, or timed out."""

    http_status = 503
    code = "backend_unavailable"


class BackendRefusedError(BackendError):
    """A model's endpoint refused the request as one it cannot take (HTTP 400, 413 or 422: a parameter it does not
    support, a body it will not read). The next capable model may take it, so the Router moves on; and since the
    request, not the model, is at fault, it does not count towards the model's cooldown."""


class StructuredOutputError(BackendError):
    """The answer did not match what the request asked for (JSON, a JSON schema, valid tool calls) and no other
    capable model gave one that did: never returned as if it were a good answer."""

    code = "invalid_model_output"


class DeadlineExceededError(RouterError):
    """The request's deadline passed (across every retry and fallback). Nothing more is tried."""

    http_status = 504
    error_type = "timeout_error"
    code = "deadline_exceeded"


class CancelledError(RouterError):
    """The caller went away (a closed stream, a disconnected client); generation stopped. The proxy never sends
    this to anyone (there is nobody to send it to); the ledger records ``cancelled``."""

    http_status = 499
    error_type = "cancelled"
    code = "cancelled"


class RouterClosedError(RouterError, RuntimeError):
    """A call to a :class:`~router.Router` after its ``close()`` began: its backends and ledger are closed or
    closing, so nothing is called and nothing recorded. A :class:`RuntimeError` too, as httpx's "client has been
    closed" is: using a closed client is a mistake in the program, not in the request."""

    http_status = 503
    error_type = "router_closed"
    code = "router_closed"


class ConfigError(RouterError):
    """A model card, policy file or config value is invalid: the message names the file, the field and the fix.

    ``ConfigError("text")`` or ``ConfigError.at(file, field, problem, fix)`` for the usual three parts."""

    http_status = 500
    error_type = "config_error"
    code = "bad_config"

    @classmethod
    def at(cls, file: str | Path | None, field: str | None, problem: str, fix: str | None = None) -> ConfigError:
        where = f"{file}: " if file else ""
        what = f"field `{field}`: " if field else ""
        return cls(f"{where}{what}{problem}" + (f"; fix: {fix}" if fix else ""))


class LedgerError(RouterError):
    """The ledger store cannot be opened, read or written (corrupt, read-only, unreachable): the message names the
    URL, what is wrong and the fix."""

    http_status = 503
    error_type = "ledger_error"
    code = "ledger_unavailable"
    retryable: bool = True
    """True where the store may come back by itself (down, unreachable, locked): a journaled ledger keeps the
    record and replays it later. False where a person must fix something (corrupt, read-only, wrong password,
    a schema newer than the code, an unknown URL scheme)."""
    record_rejected: bool = False
    """True where the store works but refuses this record's data (e.g. a required field missing): retrying it
    cannot succeed, so a journal sets the record aside instead of replaying it for ever."""
    problem: str | None = None
    """What is wrong, without the URL and the fix (``None`` where the message is not in that shape): an error
    that wraps this one says it once, with one fix (:func:`router.ledger.errors.wrapped_parts`)."""
    fix: str | None = None
    outage_logged: bool = False
    """True where the log has said once for this outage what such errors mean (a budget reservation that failed
    while the store is unavailable): the proxy logs each request's own at info, not at error."""


class BatchStoreError(LedgerError):
    """The batch store (files, batches and their lines) cannot be opened, read or written: the message names the
    URL, what is wrong and the fix. A store that is down answers the Batch API with this 503 until it is back."""

    error_type = "batch_store_error"
    code = "batch_store_unavailable"


class InternalError(RouterError):
    """Something went wrong that is not the caller's doing. The message names the request id, never paths or
    upstream bodies; the detail goes to the log."""

    http_status = 500
    error_type = "server_error"
    code = "internal_error"


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
    "ConfigError",
    "ContextLengthError",
    "DeadlineExceededError",
    "HeadersTooLargeError",
    "InternalError",
    "LedgerError",
    "MethodNotAllowedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "RequestTimeoutError",
    "RouterClosedError",
    "RouterError",
    "StructuredOutputError",
    "UnknownModelError",
    "UnsupportedEncodingError",
]
