"""The OpenAI Batch API over the batch store: files, batches, their JSONL in and out, exactly as OpenAI documents
them, for the proxy's routes and ``Router.batch`` alike.

Input file (``purpose: batch``): one JSON object a line, ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...chat completion request...}}``, custom ids unique. A batch whose file breaks
these rules is created with status ``failed`` and ``errors`` naming each bad line, as OpenAI does. What the body
holds is checked when the line runs, by the chat route's rules (:mod:`router.chat_body`): a line that route would
refuse is a line in the error file with the same status and message.

Output file: ``{"id": "batch_req_...", "custom_id", "response": {"status_code": 200, "request_id", "body":
{...chat.completion with its routing block...}}, "error": null}`` for each answered line, in input order; the
error file holds the lines that failed: a refused request keeps its HTTP status and OpenAI-shaped error body
(a spent budget: 429, ``budget_exhausted``, with the reason), a line never run has ``response: null`` and
``error: {"code": "batch_expired" | "batch_cancelled", "message"}``. Each line also carries ``router``: the
number of runs (more than 1 when a worker stopped mid-line and another ran it again), the clock time it ran at,
and the grid intensity then.

Besides OpenAI's fields a batch object has ``carbon``: the scheduler's plan (``plan``, ``forecast``, ``zone``,
``hours``, ``expected_g_per_kwh``), there from creation: :data:`NOT_PLANNED` with no hours until a scheduler has
looked at the batch.

Files and batches belong to the API key that created them (its id, ``router.keys.hash_key``): another key gets
404, as if they did not exist.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .._ids import time_ordered_hex
from .._request import check_metadata
from ..chat_body import a_json_type
from ..errors import BadRequestError, NotFoundError, PayloadTooLargeError
from ..keys import KeySpec
from .store import BatchStore

ENDPOINT = "/v1/chat/completions"
NOT_PLANNED = "not planned yet: a scheduler plans the batch at its next look at the queue (every batch.poll_s)"
"""A new batch's ``carbon.plan``, until a scheduler replaces the block with its plan (``hours`` empty until then)."""
WINDOWS = {"24h": 86_400.0}
PURPOSES = ("assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results", "vision",
            "user_data")
"""OpenAI's file purposes (a files list may filter by any; this router stores ``batch`` and ``batch_output``)."""


def new_id(prefix: str) -> str:
    """``prefix`` and 24 hex digits: the millisecond, then 48 random bits. Files keep OpenAI's whole-second
    ``created_at``, and lists break its ties by id: time-ordered ids list files of one second newest first too."""
    return prefix + time_ordered_hex(12)


def _key_hash(key: KeySpec | None) -> str | None:
    return key.key_hash if key is not None else None


def parse_lines(content: bytes, endpoint: str, max_lines: int) -> tuple[list[tuple[str, dict[str, Any]]],
                                                                          list[dict[str, Any]]]:
    """``(lines, errors)``: the requests of a batch input file, and OpenAI-shaped errors for the lines that break
    the format (``line`` is 1-based)."""
    lines: list[tuple[str, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def bad(n: int, code: str, message: str, param: str | None = None) -> None:
        errors.append({"code": code, "message": message, "param": param, "line": n})

    try:  # "utf-8-sig": a leading byte-order mark (PowerShell's `Out-File -Encoding utf8` writes one) is not text
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], [{"code": "invalid_file", "message": "the file is not UTF-8 text", "param": None, "line": None}]
    # JSONL lines end at "\n" (a "\r" before it is dropped); str.splitlines would also cut at U+2028, U+2029,
    # U+0085 and other characters a JSON string may hold unescaped
    for n, raw in enumerate(text.split("\n"), start=1):
        raw = raw.removesuffix("\r")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            bad(n, "invalid_json_line", f"line {n} is not valid JSON ({exc.msg})")
            continue
        except ValueError:  # json turns a number into an int, and Python refuses one past its digit limit
            bad(n, "invalid_json_line", f"line {n} holds an integer of more than {sys.get_int_max_str_digits():,} "
                "digits")
            continue
        except RecursionError:  # json's own limit: a line nested deeper than the stack allows
            bad(n, "invalid_json_line", f"line {n} nests arrays and objects too deeply")
            continue
        if not isinstance(obj, dict):
            bad(n, "invalid_json_line", f"line {n} is not a JSON object")
            continue
        cid, method, url, body = obj.get("custom_id"), obj.get("method"), obj.get("url"), obj.get("body")
        if not isinstance(cid, str) or not cid:
            bad(n, "missing_required_parameter", "`custom_id` must be a non-empty string", "custom_id")
        elif cid in seen:
            bad(n, "duplicate_custom_id", f"the custom_id {cid!r} is used by an earlier line", "custom_id")
        elif method != "POST":
            bad(n, "invalid_method", f"`method` must be POST, got {method!r}", "method")
        elif url != endpoint:
            bad(n, "mismatched_endpoint", f"`url` must be the batch's endpoint {endpoint}, got {url!r}", "url")
        elif not isinstance(body, dict):  # its parameters are checked when the line runs, as the chat route does
            bad(n, "invalid_body", "`body` must be a chat completion request object", "body")
        elif body.get("stream"):
            bad(n, "invalid_body", "`stream` is not supported in a batch", "body.stream")
        else:
            seen.add(cid)
            lines.append((cid, body))
        if len(lines) > max_lines:
            return [], [{"code": "too_many_requests", "message": f"a batch holds at most {max_lines:,} requests",
                         "param": None, "line": n}]
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "the file holds no request", "param": None, "line": None})
    return lines, errors


def required_string(name: str, value: Any) -> str:
    """``value`` of the required string parameter ``name``; absent (``None``) or of another type, OpenAI's 400 in
    OpenAI's words (what an app ported from OpenAI may look for), with ``param`` naming it."""
    if value is None:
        raise BadRequestError(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if not isinstance(value, str):
        raise BadRequestError(f"Invalid type for '{name}': expected a string, but got {a_json_type(value)} instead.",
                              param=name, code="invalid_type")
    return value


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": more}


class BatchService:
    """Files and batches of one store, owned by API keys; times from ``clock`` (the grid's)."""

    def __init__(self, store: BatchStore, clock: Any, *, max_file_bytes: int, max_lines: int,
                 zone: str | None = None, forecast: str | None = None) -> None:
        self.store = store
        self.clock = clock
        self.max_file_bytes = max_file_bytes
        self.max_lines = max_lines
        self.zone = zone
        self.forecast = forecast

    # -- files -----------------------------------------------------------------------------------------------
    def create_file(self, content: bytes, filename: str, purpose: str, key: KeySpec | None) -> dict[str, Any]:
        if purpose != "batch":
            raise BadRequestError(f"`purpose` {purpose!r} is not supported here: only `batch`", param="purpose")
        if len(content) > self.max_file_bytes:
            raise PayloadTooLargeError(f"the file is {len(content):,} bytes; at most {self.max_file_bytes:,}",
                                       param="file")
        file = {"id": new_id("file-"), "object": "file", "bytes": len(content), "created_at": int(self.clock()),
                "filename": filename or "upload.jsonl", "purpose": purpose, "status": "processed",
                "status_details": None}
        self.store.put_file(file, content, _key_hash(key))
        return file

    def _owned_file(self, file_id: str, key: KeySpec | None) -> dict[str, Any]:
        got = self.store.get_file(file_id)
        if got is None or got[1] != _key_hash(key):
            raise NotFoundError(f"no file {file_id!r} for this API key", param="file_id")
        return got[0]

    def file(self, file_id: str, key: KeySpec | None) -> dict[str, Any]:
        return self._owned_file(file_id, key)

    def file_content(self, file_id: str, key: KeySpec | None) -> bytes:
        self._owned_file(file_id, key)
        return self.store.file_content(file_id) or b""

    def list_files(self, key: KeySpec | None, after: str | None = None, limit: int = 10_000, order: str = "desc",
                   purpose: str | None = None) -> dict[str, Any]:
        """OpenAI's files list: ``limit`` in [1, 10000], ``order`` asc or desc (by creation), ``purpose`` one of
        OpenAI's, ``after`` one of the key's files (the last of the previous page)."""
        if not 1 <= limit <= 10_000:
            raise BadRequestError("`limit` must be in [1, 10000]", param="limit")
        if order not in ("asc", "desc"):
            raise BadRequestError(f"`order` must be asc or desc, got {order!r}", param="order")
        if purpose is not None and purpose not in PURPOSES:
            raise BadRequestError(f"`purpose` must be one of {', '.join(PURPOSES)}, got {purpose!r}", param="purpose")
        got = self.store.get_file(after) if after is not None else None
        if after is not None and (got is None or got[1] != _key_hash(key)):
            raise BadRequestError(f"`after` {after!r} is not a file of this API key", param="after")
        files, more = self.store.list_files(_key_hash(key), after, limit, order, purpose)
        return _page(files, more)

    def delete_file(self, file_id: str, key: KeySpec | None) -> dict[str, Any]:
        self._owned_file(file_id, key)
        self.store.delete_file(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches ---------------------------------------------------------------------------------------------
    def create(self, input_file_id: Any, endpoint: Any, completion_window: Any, metadata: Any,
               key: KeySpec | None) -> dict[str, Any]:
        input_file_id = required_string("input_file_id", input_file_id)
        endpoint = required_string("endpoint", endpoint)
        completion_window = required_string("completion_window", completion_window)
        if endpoint != ENDPOINT:
            raise BadRequestError(f"`endpoint` must be {ENDPOINT} (the only one this router serves), got "
                                  f"{endpoint!r}", param="endpoint")
        if completion_window not in WINDOWS:
            raise BadRequestError(f"`completion_window` must be one of {', '.join(WINDOWS)}, got "
                                  f"{completion_window!r}", param="completion_window")
        check_metadata(metadata)
        file = self._owned_file(input_file_id, key)
        if file["purpose"] != "batch":
            raise BadRequestError(f"file {input_file_id} has purpose {file['purpose']!r}, not batch",
                                  param="input_file_id")
        lines, errors = parse_lines(self.store.file_content(input_file_id) or b"", endpoint, self.max_lines)
        now = self.clock()
        doc: dict[str, Any] = {
            "id": new_id("batch_"), "object": "batch", "endpoint": endpoint, "errors": None,
            "input_file_id": input_file_id, "completion_window": completion_window, "status": "in_progress",
            "output_file_id": None, "error_file_id": None, "created_at": int(now), "in_progress_at": int(now),
            "expires_at": int(now + WINDOWS[completion_window]), "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0}, "metadata": metadata,
            "carbon": {"plan": NOT_PLANNED, "forecast": self.forecast, "zone": self.zone, "hours": [],
                       "expected_g_per_kwh": None},
        }
        if errors:
            doc.update(status="failed", in_progress_at=None, failed_at=int(now),
                       errors={"object": "list", "data": errors[:100]})
            doc["carbon"]["plan"] = "not planned: the input file has bad lines (see errors)"
            lines = []
        self.store.create_batch(doc, lines, _key_hash(key), key.sha256 if key is not None else None)
        return self.retrieve(doc["id"], key)

    def retrieve(self, batch_id: str, key: KeySpec | None) -> dict[str, Any]:
        got = self.store.get_batch(batch_id)
        if got is None or got[1] != _key_hash(key):
            raise NotFoundError(f"no batch {batch_id!r} for this API key", param="batch_id")
        return got[0]

    def list(self, key: KeySpec | None, after: str | None = None, limit: int = 20) -> dict[str, Any]:
        if not 1 <= limit <= 100:
            raise BadRequestError("`limit` must be in [1, 100]", param="limit")
        got = self.store.get_batch(after) if after is not None else None
        if after is not None and (got is None or got[1] != _key_hash(key)):  # not a silent first page
            raise BadRequestError(f"`after` {after!r} is not a batch of this API key", param="after")
        docs, more = self.store.list_batches(_key_hash(key), after, limit)
        return _page(docs, more)

    def cancel(self, batch_id: str, key: KeySpec | None) -> dict[str, Any]:
        """Lines not yet started are not run; lines running finish; then the batch is ``cancelled``."""
        doc = self.retrieve(batch_id, key)
        if doc["status"] in ("validating", "in_progress"):
            self.store.update_batch(batch_id, {"status": "cancelling", "cancelling_at": int(self.clock())},
                                    only_from=("validating", "in_progress"))
        elif doc["status"] not in ("cancelling", "cancelled"):
            raise BadRequestError(f"batch {batch_id} is {doc['status']}: only a validating or in-progress batch "
                                  "can be cancelled", param="batch_id", code="invalid_state")
        return self.retrieve(batch_id, key)


__all__ = ["ENDPOINT", "NOT_PLANNED", "BatchService", "WINDOWS", "new_id", "parse_lines", "required_string"]
