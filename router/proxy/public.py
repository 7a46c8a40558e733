"""What a client is shown of an error (a server-side one says what failed and the request id; its details, which
may name files, URLs or an upstream's answer, go to the log), and how a request body is read as JSON: with
pydantic-core's parser, then leniently where it refuses lone surrogate escapes, every failure a 400 that says why
(empty, not JSON, nested too deeply), and how a compressed body (``Content-Encoding: gzip`` or ``deflate``) is
inflated under the same size limit as a plain one."""

from __future__ import annotations

import json
import logging
import re
import zlib
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json

from ..errors import BadRequestError, LedgerError, PayloadTooLargeError, RouterError, UnsupportedEncodingError

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger("router.proxy")

_HIDDEN = {
    "config_error": "the server's configuration is wrong",
    "ledger_error": "the server's energy ledger is unavailable",
    "batch_store_error": "the server's batch store is unavailable",
    "server_error": "internal error",
    "router_error": "internal error",
}
"""5xx errors whose message may name files, URLs or credentials: the client gets this line; the log the rest."""


def public_error(exc: RouterError, request_id: str | None) -> dict[str, Any]:
    """``exc`` as the client sees it: a server-side error's message carries the request id, and where the message
    may hold what a client must not see (config and ledger errors name files and URLs) only a plain line."""
    body: dict[str, Any] = exc.to_openai()  # {"error": {...}}: the inner dict is changed here
    if exc.http_status >= 500:
        hidden = _HIDDEN.get(exc.error_type)
        if hidden is not None:
            # an outage the log has already announced once is no error to repeat for each request it refuses
            level = logging.INFO if isinstance(exc, LedgerError) and exc.outage_logged else logging.ERROR
            log.log(level, "%s: %s: %s%s", request_id or "-", type(exc).__name__, exc.message,
                    f" ({exc.detail})" if exc.detail else "")
            body["error"]["message"] = hidden
        if request_id is not None:
            body["error"]["message"] += f" (request id {request_id}; the server log has the details)"
    return body


MAX_DEPTH = 200
"""How deeply arrays and objects may nest in a request body: pydantic-core's parser refuses deeper (a recursion
limit), and so does :func:`read_json` for a body the lenient reader takes, so the limit is the same either way."""


def read_json(raw: bytes, want: str) -> Any:
    """A request body parsed as JSON; ``want`` says what it should be (``a JSON object with ...``) in the message
    of the 400 (:class:`BadRequestError`) for a body that is empty, not JSON or nested deeper than
    :data:`MAX_DEPTH`."""
    if not raw.strip():
        raise BadRequestError(f"the request body is empty; send {want}")
    try:
        return from_json(raw)  # pydantic-core's parser: ~3x faster than json.loads, same values
    except UnicodeDecodeError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    except ValueError as exc:
        if str(exc).startswith("recursion limit exceeded"):
            raise _too_deep() from None
    try:
        body = lenient_json(raw)  # a lone surrogate escape (or not JSON at all)
    except RecursionError:  # json's own limit, which depends on the stack left
        raise _too_deep() from None
    except ValueError as exc:
        raise BadRequestError(f"the request body is not valid JSON: {exc}") from None
    if _deeper_than(body, MAX_DEPTH):
        raise _too_deep()
    return body


def _too_deep() -> BadRequestError:
    return BadRequestError(f"the request body nests arrays and objects too deeply: at most {MAX_DEPTH} levels")


def _deeper_than(value: Any, limit: int) -> bool:
    pending = [(value, 1)]
    while pending:  # a loop, not recursion: the value may be deeper than the stack allows
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            pending.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


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


_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
"""The content codings a request body may come in (RFC 9110, 8.4.1), as :func:`zlib.decompressobj`'s ``wbits``:
gzip's wrapper, or zlib's for ``deflate``; ``x-gzip`` is gzip's old name."""
_RAW_DEFLATE = -15
"""``wbits`` for a ``deflate`` body without zlib's wrapper, which some clients send under that name; as browsers and
curl do for responses, the first two bytes tell which of the two a body is."""
ACCEPT_ENCODING = "gzip, deflate"
"""What a 415 for an unsupported ``Content-Encoding`` lists as accepted (its ``Accept-Encoding``, RFC 7694)."""


def _has_zlib_header(start: bytes) -> bool:
    """Whether a body's first two bytes are a zlib header (RFC 1950: method 8, a window of at most 32 KiB, the
    pair a multiple of 31). A raw deflate stream starts so only with a stored block whose padding bits are not
    zero, which no common compressor writes."""
    cmf, flg = start[0], start[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


class BodyDecoder:
    """A request body's content coding undone as its parts arrive, never to more than ``limit`` bytes: each part
    is inflated to at most the room left plus one byte, so a small body that would inflate to gigabytes (a zip
    bomb) is refused with a 413 as soon as it passes the limit, with no more than that held in memory. A gzip
    body may hold several members one after another (RFC 1952, 2.2; what ``cat a.gz b.gz`` makes): they inflate
    to their texts joined. A ``deflate`` body is read with or without zlib's wrapper."""

    def __init__(self, coding: str, limit: int) -> None:
        self.coding = coding
        self.limit = limit
        self.size = 0
        self.received = 0
        self._multi_member = _WBITS[coding] == 31
        # deflate: which of its two forms waits for the body's first two bytes
        self._start = b""
        self._inflater: zlib._Decompress | None = zlib.decompressobj(31) if self._multi_member else None

    def feed(self, part: bytes) -> bytes:
        """The inflated bytes of ``part`` (maybe none yet); a 413 once the compressed or the inflated body is
        over the limit, a 400 for data that is not in the coding the header names."""
        self.received += len(part)
        if self.received > self.limit:
            raise PayloadTooLargeError(f"request body exceeds {self.limit:,} bytes")
        inflater = self._inflater
        if inflater is None:
            part = self._start + part
            if len(part) < 2:
                self._start = part
                return b""
            inflater = zlib.decompressobj(_WBITS["deflate"] if _has_zlib_header(part) else _RAW_DEFLATE)
        elif self._multi_member and part and inflater.eof:  # the previous part ended a member
            inflater = zlib.decompressobj(31)
        self._inflater = inflater
        inflated = self._inflate(inflater, part)
        if not (self._multi_member and inflater.eof and inflater.unused_data):
            return inflated
        members = [inflated]
        while inflater.eof and inflater.unused_data:
            rest = inflater.unused_data
            self._inflater = inflater = zlib.decompressobj(31)
            members.append(self._inflate(inflater, rest))
        return b"".join(members)

    def _inflate(self, inflater: zlib._Decompress, data: bytes) -> bytes:
        try:
            inflated = inflater.decompress(data, self.limit - self.size + 1)
        except zlib.error as exc:
            raise BadRequestError(f"the request body is not valid {self.coding} data, as its Content-Encoding "
                                  f"says ({exc}); send it compressed so, or without the header") from None
        # below max_length the inflater has taken all of ``data``: nothing is left in its unconsumed_tail
        self.size += len(inflated)
        if self.size > self.limit:
            raise PayloadTooLargeError(f"request body exceeds {self.limit:,} bytes once inflated "
                                       f"(Content-Encoding: {self.coding})")
        return inflated

    def finish(self) -> None:
        """A 400 for a body that ended inside its compressed stream, or went on after it."""
        if self._inflater is None or not self._inflater.eof:
            raise BadRequestError(f"the request body ends before its {self.coding} stream does: send the whole "
                                  "compressed body")
        if self._inflater.unused_data:
            raise BadRequestError(f"the request body goes on after its {self.coding} stream ends: send one "
                                  "compressed stream")


def body_decoder(content_encoding: str, limit: int) -> BodyDecoder | None:
    """The decoder for a request's ``Content-Encoding`` header (``None``: the body is as it came, ``identity``);
    a 415 for any coding but gzip and deflate, or for more than one."""
    codings = [c for c in (part.strip().lower() for part in content_encoding.split(",")) if c not in ("", "identity")]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _WBITS:
        return BodyDecoder(codings[0], limit)
    raise UnsupportedEncodingError(f"Content-Encoding {content_encoding.strip()!r} is not accepted: send the body "
                                   f"as it is, or compressed with one of: {ACCEPT_ENCODING}")


BODY_TIMED_OUT = "router.body_timed_out"
"""The request's scope key under which ``router serve``'s protocol (:mod:`router.proxy.server`) leaves the
:class:`~router.errors.RequestTimeoutError` it answered (a 408) when the body came too slowly, before it closed the
connection: the app then sees the client gone, and counts that 408 rather than a client that went away."""


async def read_limited_body(request: Request, limit: int, what: str = "request body") -> bytes:
    """The body of a request to a route off the chat fast path (feedback, batches, files), never more than ``limit``
    bytes: refused on its ``Content-Length``, or as soon as what has arrived passes the limit (a chunked body
    declares no length, and reading it whole first would let a client fill the server's memory); with a
    ``Content-Encoding``, inflated as it arrives and counted inflated. ``what`` names the body in the 413."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} is {int(declared):,} bytes; at most {limit:,}")
    encoding = request.headers.get("content-encoding")
    decoder = body_decoder(encoding, limit) if encoding is not None else None
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        if decoder is not None:
            part = decoder.feed(part)
        size += len(part)
        if size > limit:
            raise PayloadTooLargeError(f"{what} exceeds {limit:,} bytes")
        parts.append(part)
    if decoder is not None:
        decoder.finish()
    return b"".join(parts)
