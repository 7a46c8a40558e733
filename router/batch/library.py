"""``Router.batch``: requests from Python become an input file and a batch, exactly as over HTTP."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel

from ..errors import AuthenticationError, BadRequestError, RouterError
from ..keys import KeySpec, digest
from .handle import BatchHandle
from .service import ENDPOINT


def key_spec(router: Any, api_key: str | None) -> KeySpec | None:
    """The key a batch belongs to: a configured key (its policy and budgets apply to every line), or, where no keys
    are configured, any key given (it still owns its batches)."""
    if api_key is None:
        return None
    if router.keys:
        spec = router.keys.lookup(api_key)
        if spec is None:
            raise AuthenticationError("invalid API key")
        return spec
    return KeySpec(name="unconfigured", sha256=digest(api_key))


def submit(router: Any, requests: Iterable[Any], *, completion_window: str, metadata: dict[str, str] | None,
           api_key: str | None) -> BatchHandle:
    if isinstance(requests, str | bytes) or not isinstance(requests, Iterable):
        raise BadRequestError("`requests` must be a list of chat request bodies or batch lines", param="requests")
    lines = []
    for i, req in enumerate(requests):
        if not isinstance(req, dict):
            raise BadRequestError(f"requests[{i}] must be a dict", param=f"requests[{i}]")
        if "custom_id" in req:
            lines.append(req)
        else:
            lines.append({"custom_id": f"request-{i + 1}", "method": "POST", "url": ENDPOINT, "body": req})
    if not lines:
        raise BadRequestError("no requests given", param="requests")
    content = "".join(_json_line(i, line) for i, line in enumerate(lines)).encode()
    key = key_spec(router, api_key)
    batches = router.batches
    file = batches.service.create_file(content, "router-batch.jsonl", "batch", key)
    try:
        doc = batches.service.create(file["id"], ENDPOINT, completion_window, metadata, key)
    except BaseException:  # a bad window or metadata: no batch refers to the file, which the caller never sees
        with contextlib.suppress(RouterError):  # the store down: its error is the one the caller gets
            batches.service.delete_file(file["id"], key)
        raise
    if doc["status"] == "failed":
        first = doc["errors"]["data"][0]
        raise BadRequestError(f"the batch's requests are not valid: line {first['line']}: {first['message']}",
                              param="requests")
    return BatchHandle(batches, doc["id"], key)


def _json_line(i: int, line: dict[str, Any]) -> str:
    """``requests[i]`` as a line of the input file; a message object in it (a response's ``choices[0].message``,
    a :class:`~router.ChatMessage`) as its dict, as :meth:`Router.complete` takes one. A value JSON cannot hold is a
    400 naming the request, not the ``TypeError`` of :func:`json.dumps`."""
    try:
        return json.dumps(line, default=_message_object) + "\n"
    except (TypeError, ValueError) as exc:  # ValueError: a request that contains itself
        raise BadRequestError(f"requests[{i}] holds a value a batch cannot store ({exc}): a batch's requests are "
                              "kept as JSON until they run; give strings, numbers, booleans, None, lists, dicts and "
                              "message objects", param=f"requests[{i}]") from None


def _message_object(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)  # as Router.complete reads a message object (router/_request.py)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
