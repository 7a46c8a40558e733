"""The Batch API's routes in the proxy, as OpenAI documents them:

``POST /v1/files`` (multipart: ``file``, ``purpose=batch``), ``GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``, ``POST /v1/batches``, ``GET /v1/batches``,
``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``.

Authentication is the chat route's: with keys configured a bearer key is required and the files and batches it
creates are its own; without keys, a bearer key given still owns what it creates, and requests without one share
the unowned ones. Errors are OpenAI-shaped, with the right 4xx (the app's handler renders them).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..errors import AuthenticationError, BadRequestError, PayloadTooLargeError
from ..keys import KeySpec
from ..proxy.public import read_json, read_limited_body
from .library import key_spec
from .service import required_string
from .store import default_store_url, sqlite_path

if TYPE_CHECKING:
    from fastapi import FastAPI

_JSON = "application/json"


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj).encode(), status_code=status, media_type=_JSON)


class BatchRoutes:
    def __init__(self, router: Any, max_file_bytes: int) -> None:
        self.router = router
        self.max_file_bytes = max_file_bytes

    @property
    def service(self) -> Any:
        return self.router.batches.service  # created (and its scheduler started) on first use

    def key(self, request: Request) -> KeySpec | None:
        header = request.headers.get("authorization") or ""
        scheme, _, value = header.partition(" ")
        key = value.strip() if scheme.lower() == "bearer" and value.strip() else None
        if self.router.keys and key is None:
            raise AuthenticationError("missing API key: send `Authorization: Bearer <key>`")
        return key_spec(self.router, key)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        raw = await read_limited_body(request, 1024 * 1024)
        body = read_json(raw, "a JSON object") if raw.strip() else {}
        if not isinstance(body, dict):
            raise BadRequestError("the request body must be a JSON object")
        return body

    # -- files -----------------------------------------------------------------------------------------------
    async def upload(self, request: Request) -> Response:
        key = self.key(request)
        try:  # room for the multipart framing and the purpose field; the file itself is measured after
            raw = await read_limited_body(request, self.max_file_bytes + 64 * 1024)
        except PayloadTooLargeError:
            raise PayloadTooLargeError(f"the file is too large: at most {self.max_file_bytes:,} bytes",
                                       param="file") from None
        fields, files = parse_multipart(request.headers.get("content-type", ""), raw)
        if "file" not in files:  # a `file` part without a filename is a plain field: no file either
            plain = " The body's `file` part has no filename: send it as a file." if "file" in fields else ""
            raise BadRequestError("Missing required parameter: 'file'." + plain, param="file",
                                  code="missing_required_parameter")
        purpose = required_string("purpose", fields.get("purpose"))
        if any(name == "expires_after" or name.startswith("expires_after[") for name in (*fields, *files)):
            raise _no_expiry("expires_after", "an uploaded file")  # the SDK sends expires_after[anchor], [seconds]
        filename, content = files["file"]
        file = await run_in_threadpool(self.service.create_file, content, filename, purpose, key)
        return _json(file)

    async def list_files(self, request: Request) -> Response:
        q = request.query_params
        return _json(await run_in_threadpool(self.service.list_files, self.key(request), q.get("after"),
                                             _int_param(request, "limit", 10_000), q.get("order", "desc"),
                                             q.get("purpose")))

    async def get_file(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.service.file, request.path_params["file_id"], self.key(request)))

    async def file_content(self, request: Request) -> Response:
        data = await run_in_threadpool(self.service.file_content, request.path_params["file_id"], self.key(request))
        return Response(data, media_type="application/octet-stream")

    async def delete_file(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.service.delete_file, request.path_params["file_id"],
                                             self.key(request)))

    # -- batches ---------------------------------------------------------------------------------------------
    async def create(self, request: Request) -> Response:
        key = self.key(request)
        body = await self._json_body(request)
        if "output_expires_after" in body:
            raise _no_expiry("output_expires_after", "a batch's output and error files")
        unknown = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata"}
        if unknown:
            raise BadRequestError(f"unknown parameter(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
        doc = await run_in_threadpool(self.service.create, body.get("input_file_id"), body.get("endpoint"),
                                      body.get("completion_window"), body.get("metadata"), key)
        return _json(doc)

    async def list(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.service.list, self.key(request),
                                             request.query_params.get("after"), _int_param(request, "limit", 20)))

    async def retrieve(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.service.retrieve, request.path_params["batch_id"],
                                             self.key(request)))

    async def cancel(self, request: Request) -> Response:
        return _json(await run_in_threadpool(self.service.cancel, request.path_params["batch_id"], self.key(request)))


def _no_expiry(param: str, what: str) -> BadRequestError:
    """The 400 for OpenAI's file expiry parameters: files here are kept until deleted, and a request that asks for
    its data to be deleted at a time must not be taken as if it had been honoured."""
    return BadRequestError(f"`{param}` is not supported here: {what} is kept until it is deleted (DELETE "
                           "/v1/files/{id}), never at a set time; send the request without it and delete the files "
                           "when done", param=param, code="unsupported_parameter")


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if re.fullmatch(r"\s*-?[0-9]+\s*", raw) is None:  # one sign at most: int("--5") is a ValueError
        raise BadRequestError(f"`{name}` must be an integer, got {raw!r}", param=name)
    digits = len(raw.strip().lstrip("-"))
    if digits > 18:  # beyond any limit here; int() refuses more than 4,300 digits with a ValueError
        raise BadRequestError(f"`{name}` is out of range: an integer of {digits:,} digits", param=name)
    return int(raw)


_DISPOSITION_PARAM = re.compile(r';\s*([^=;\s]+)\s*=\s*(?:("(?:[^"\\]|\\.)*")|([^;]*))')
"""One ``; key=value`` of a Content-Disposition header: a quoted value may hold ``;`` and backslash escapes."""


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """``(fields, files)`` of a ``multipart/form-data`` body (RFC 7578), as the OpenAI SDK and curl send it."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise BadRequestError("upload the file as multipart/form-data (fields `file` and `purpose`)")
    boundary = None
    for p in params.split(";"):
        key, _, value = p.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise BadRequestError("the multipart body has no boundary")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for part in body.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break
        head, sep, data = part.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequestError("a multipart part has no header/body separator")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        disposition: dict[str, str] = {}
        try:  # RFC 7578: a file name is sent as UTF-8 (the SDK, curl and browsers do)
            headers = head.decode("utf-8")
        except UnicodeDecodeError:
            headers = head.decode("latin-1")
        for line in headers.split("\r\n"):
            h, _, v = line.partition(":")
            if h.strip().lower() == "content-disposition":
                for k, quoted, bare in _DISPOSITION_PARAM.findall(v):
                    value = re.sub(r"\\(.)", r"\1", quoted[1:-1]) if quoted else bare.strip().strip('"')
                    disposition[k.lower()] = value
        name = disposition.get("name")
        if not name:
            continue
        if "filename" in disposition:
            files[name] = (disposition["filename"], data)
        else:
            fields[name] = data.decode("utf-8", "replace")
    return fields, files


def add_batch_routes(app: FastAPI, router: Any) -> None:
    """The routes; the store and its scheduler start now when there is a store to resume (one configured, or the
    default file exists), else with the first batch request."""
    r = BatchRoutes(router, router.config.batch.max_file_bytes)
    store_url = router.config.batch.store_url
    default_file = None if store_url else sqlite_path(default_store_url(router.config.ledger_url))
    if store_url or (default_file is not None and default_file.exists()):
        router.batches  # noqa: B018 - starts the scheduler: batches in progress resume after a restart
    add = app.router.add_route
    add("/v1/files", r.upload, methods=["POST"])
    add("/v1/files", r.list_files, methods=["GET"])
    add("/v1/files/{file_id}", r.get_file, methods=["GET"])
    add("/v1/files/{file_id}", r.delete_file, methods=["DELETE"])
    add("/v1/files/{file_id}/content", r.file_content, methods=["GET"])
    add("/v1/batches", r.create, methods=["POST"])
    add("/v1/batches", r.list, methods=["GET"])
    add("/v1/batches/{batch_id}", r.retrieve, methods=["GET"])
    add("/v1/batches/{batch_id}/cancel", r.cancel, methods=["POST"])


__all__ = ["BatchRoutes", "add_batch_routes", "parse_multipart"]
