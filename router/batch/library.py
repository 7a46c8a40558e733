"""``Router.batch``: requests from Python become an input file and a batch, exactly as over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..errors import AuthenticationError, BadRequestError
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
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    key = key_spec(router, api_key)
    batches = router.batches
    file = batches.service.create_file(content, "router-batch.jsonl", "batch", key)
    doc = batches.service.create(file["id"], ENDPOINT, completion_window, metadata, key)
    if doc["status"] == "failed":
        first = doc["errors"]["data"][0]
        raise BadRequestError(f"the batch's requests are not valid: line {first['line']}: {first['message']}",
                              param="requests")
    return BatchHandle(batches, doc["id"], key)
