"""The proxy's server stack with no routing: what ``router serve`` costs before it classifies, decides or records.

The same uvicorn protocol (:class:`router.proxy.server.OneWriteHttpToolsProtocol`, uvloop) and the same upstream
client (:class:`router.backends._http11.HTTPPool`) as ``router serve``; per request it parses the body, names the
upstream's model, posts it, and answers the upstream's JSON with a ``routing`` block added. No classifier, policy,
ledger, journal or metrics. ``benchmarks/bench_proxy.py --floor`` runs it beside the proxy, so the difference
between the two rows is the CPU the routing itself takes.

    python benchmarks/_passthrough.py PORT UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson
import uvicorn

from router.backends._http11 import HTTPPool
from router.proxy.server import OneWriteHttpToolsProtocol


class PassThrough:
    """ASGI app: ``POST`` bodies go to the upstream's ``/v1/chat/completions``; ``GET`` answers ``ok``."""

    def __init__(self, upstream_port: int) -> None:
        self.url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        self.pool: HTTPPool | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await self._answer(send, 200, b'"ok"')
            return
        if self.pool is None:
            self.pool = HTTPPool(self.url, {"content-type": "application/json"}, timeout_s=30,
                                 connect_timeout_s=5, loop=asyncio.get_running_loop())
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        request = orjson.loads(body)
        request["model"] = "echo"
        status, raw, _ = await self.pool.post(orjson.dumps(request))
        answer = orjson.loads(raw)
        answer["routing"] = {"model": "echo", "tier": "small"}
        await self._answer(send, status, orjson.dumps(answer))

    @staticmethod
    async def _answer(send: Any, status: int, data: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), int(sys.argv[2])
    uvicorn.run(PassThrough(upstream), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http=OneWriteHttpToolsProtocol)
