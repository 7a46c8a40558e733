"""What a client is shown of an error (a server-side one says what failed and the request id; its details, which
may name files, URLs or an upstream's answer, go to the log), and the lenient reading of a body pydantic-core's
JSON parser refuses (lone surrogate escapes)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from ..errors import RouterError

log = logging.getLogger("router.proxy")

_HIDDEN = {
    "config_error": "the server's configuration is wrong",
    "ledger_error": "the server's energy ledger is unavailable",
    "server_error": "internal error",
    "router_error": "internal error",
}
"""5xx errors whose message may name files, URLs or credentials: the client gets this line; the log the rest."""


def public_error(exc: RouterError, request_id: str | None) -> dict[str, Any]:
    """``exc`` as the client sees it: a server-side error's message carries the request id, and where the message
    may hold what a client must not see (config and ledger errors name files and URLs) only a plain line."""
    body = exc.to_openai()
    if exc.http_status >= 500:
        hidden = _HIDDEN.get(exc.error_type)
        if hidden is not None:
            log.error("%s: %s: %s%s", request_id or "-", type(exc).__name__, exc.message,
                      f" ({exc.detail})" if exc.detail else "")
            body["error"]["message"] = hidden
        if request_id is not None:
            body["error"]["message"] += f" (request id {request_id}; the server log has the details)"
    return body


def lenient_json(raw: bytes) -> Any:
    """A body pydantic-core's parser refused, read by ``json``, which accepts a lone surrogate escape (``\\ud83d``
    alone: a JavaScript client that cut an emoji in half); each lone surrogate becomes U+FFFD, as a UTF-8 decoder
    would make of it. A body that is not JSON at all raises ``ValueError`` here too."""
    return _replace_surrogates(json.loads(raw))


def _replace_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_surrogates(v) for v in value]
    if isinstance(value, dict):
        return {_replace_surrogates(k): _replace_surrogates(v) for k, v in value.items()}
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")
