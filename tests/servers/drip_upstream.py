"""TEST UPSTREAM for time limits: an OpenAI-compatible chat endpoint that answers slowly, on purpose.

A plain asyncio HTTP/1.1 server (standard library only, so nothing in the client's stack is shared with it).
``POST /v1/chat/completions`` picks its behaviour from the request's ``model`` field:

- ``drip[:SECONDS]``: the status line and headers at once, then the body (an SSE stream when ``stream`` is
  true, else one JSON completion with ``Content-Length``) one byte every SECONDS (default ``--interval``). Every
  byte is valid, and the whole answer takes longer than ``--interval`` x 2,000 bytes (at 0.5 s: over 16 minutes),
  so a client that only times each read waits for all of it;
- ``drip-all[:SECONDS]``: the same, but the status line and headers drip too;
- ``cut``: a stream that sends two content chunks and then closes the connection mid-answer (chunked
  framing, so the client sees a broken answer, not a short one);
- ``broken``: HTTP 503 at once;
- anything else: a complete answer at once.

``GET /stats`` returns ``{"calls": {model: n}}``; ``GET /health`` answers ``ok``.

Run: ``python tests/servers/drip_upstream.py --port 8002 --interval 0.5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter

CONTENT_CHUNKS = 500
"""Content chunks in a streamed answer (and words in a JSON one): over 2,000 bytes either way."""

calls: Counter[str] = Counter()


def _chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    data: dict = {"id": "chatcmpl-drip", "object": "chat.completion.chunk", "created": 0, "model": "drip",
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    if usage:
        data["usage"] = usage
    return b"data: " + json.dumps(data).encode() + b"\n\n"


def _sse(chunks: int) -> bytes:
    body = [_chunk({"role": "assistant", "content": ""})]
    body += [_chunk({"content": f"w{i} "}) for i in range(chunks)]
    body.append(_chunk({}, "stop", {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks}))
    return b"".join(body) + b"data: [DONE]\n\n"


def _completion(words: int) -> bytes:
    text = " ".join(f"w{i}" for i in range(words))
    return json.dumps({
        "id": "chatcmpl-drip", "object": "chat.completion", "created": 0, "model": "drip",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": words, "total_tokens": 5 + words},
    }).encode()


def _head(status: str, content_type: str, length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class DripServer:
    def __init__(self, interval: float) -> None:
        self.interval = interval

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                method, path, _ = request_line.split(" ", 2)
                if method == "GET":
                    payload = json.dumps({"calls": dict(calls)}).encode() if path == "/stats" else b"ok"
                    writer.write(_head("200 OK", "application/json", len(payload)) + payload)
                    await writer.drain()
                    continue
                if not await self.answer(json.loads(body or b"{}"), writer):
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def answer(self, request: dict, writer: asyncio.StreamWriter) -> bool:
        """Send one answer; False when the connection is to be closed."""
        model = str(request.get("model", ""))
        kind, _, seconds = model.partition(":")
        calls[kind] += 1
        stream = bool(request.get("stream"))
        if kind == "broken":
            payload = b'{"error": {"message": "broken upstream", "type": "server_error"}}'
            writer.write(_head("503 Service Unavailable", "application/json", len(payload)) + payload)
            await writer.drain()
            return True
        if kind == "cut":  # chunked framing, closed before the last chunk: a broken answer, not a short one
            events = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "w0 "}),
                      _chunk({"content": "w1 "})]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events))
            await writer.drain()
            await asyncio.sleep(0.05)
            return False
        payload = _sse(CONTENT_CHUNKS) if stream else _completion(CONTENT_CHUNKS)
        head = _head("200 OK", "text/event-stream" if stream else "application/json", None if stream else len(payload))
        if kind not in ("drip", "drip-all"):
            writer.write(head + payload)
            await writer.drain()
            return not stream
        interval = float(seconds) if seconds else self.interval
        data = head + payload
        if kind == "drip":
            writer.write(head)
            data = payload
        for i in range(len(data)):
            await asyncio.sleep(interval)
            writer.write(data[i : i + 1])
            await writer.drain()
        return not stream


async def serve(host: str, port: int, interval: float) -> None:
    server = await asyncio.start_server(DripServer(interval).handle, host, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8002)
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between two bytes of a dripped answer")
    args = ap.parse_args()
    asyncio.run(serve(args.host, args.port, args.interval))


if __name__ == "__main__":
    main()
