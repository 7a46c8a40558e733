"""``POST /v1/feedback``: a client scores an answer it received, by the response's ``id``.

Body: ``{"id": "chatcmpl-...", "score": 0.8, "comment": "optional"}`` (score in [0, 1]). Answer (200):
``{"object": "feedback", "id": "fb-...", "response_id": ..., "score": ..., "source": "user", "created": ...}``.
Errors in OpenAI's shape: 400 for bad input (not JSON, a missing or wrong field, an unknown one), 401 without a
valid key when keys are configured, 403 for a response another key made (unless the caller's key is marked
``admin: true``), 404 for an id the ledger does not hold or whose request got no answer (refused or failed), 503
while the ledger is unavailable. The rules (who may score, every feedback kept, how they combine) are
:mod:`router.feedback`'s.

Not on the chat fast path: the body is small, and the ledger is read and written in a worker thread, never on the
event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from .._router import Router
from ..errors import BadRequestError
from .fastpath import bearer_key
from .public import read_json, read_limited_body

MAX_BODY_BYTES = 64 * 1024
_FIELDS = {"id", "score", "comment"}


def add_feedback_route(app: FastAPI, router: Router) -> None:
    """Register ``POST /v1/feedback`` (and ``/feedback``, as the chat routes are) on the proxy app; its errors are
    answered by the app's handler for every route's (counted in ``router_errors_total``, with the request id)."""

    async def feedback(request: Request) -> Response:
        api_key = bearer_key(request.headers.get("authorization"), router.keys)
        body = _parse(await read_limited_body(request, MAX_BODY_BYTES, "a feedback body"))
        fb = await asyncio.to_thread(router.feedback, body["id"], body["score"],  # _parse: both are there
                                     comment=body.get("comment"), api_key=api_key)
        data = {"object": "feedback", "id": f"fb-{fb.feedback_id}", "response_id": fb.request_id, "score": fb.score,
                "source": fb.source, "comment": fb.comment, "created": int(fb.ts)}
        return Response(json.dumps(data).encode(), media_type="application/json")

    for path in ("/v1/feedback", "/feedback"):
        app.router.add_route(path, feedback, methods=["POST"])


def _parse(raw: bytes) -> dict[str, Any]:
    body = read_json(raw, 'a JSON object: {"id": "chatcmpl-...", "score": 0.8}')
    if not isinstance(body, dict):
        raise BadRequestError('the request body must be a JSON object: {"id": "chatcmpl-...", "score": 0.8}')
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise BadRequestError(f"unknown parameter: {unknown[0]} (a feedback has id, score and comment)",
                              param=unknown[0])
    for name in ("id", "score"):
        if name not in body:
            raise BadRequestError(f"`{name}` is required", param=name)
    return body
