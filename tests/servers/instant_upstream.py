"""TEST UPSTREAM: a trivial OpenAI-compatible chat server that answers instantly.

It stands in for a real model endpoint so proxy tests and ``benchmarks/bench_proxy.py`` measure the proxy, not
a model. Behaviour is chosen by the request's ``model`` field:

- anything else: answers ``"echo: <last user message, first 40 chars>"`` at once (JSON or SSE);
- ``slow``: streams ``tokens`` (default 200) pieces, ``delay`` (default 0.02) seconds apart, so a client can
  hang up mid-stream;
- ``broken``: HTTP 503 every time; ``flaky``: HTTP 500 every other call; ``leaky``: HTTP 400 whose error body
  holds what a client must never see (a key, a file path);
- ``json``: answers ``{"answer": "<last user message>"}`` (JSON whatever was asked), whole or streamed in
  pieces; ``slow`` without streaming
  answers after ``max_tokens`` x ``delay`` seconds, and counts the call in ``closed_early`` when the client
  hangs up first;
- ``sleep:SECONDS``: answers like anything else, after SECONDS (a batch line that takes a while);
- ``peer``: answers ``"peer: <client host>:<client port>"``, the connection that carried the call (which of a
  client's keep-alive connections it used);
- ``judge``: answers as a chat model judging an answer may: it quotes the request (the last user message, first 40
  chars), then gives its verdict on a last line ``Score: 8``;
- ``judge:reasoning``: answers as a hosted chat judge that reasons first: several sentences, then ``Score: 7`` on
  its last line; it honours ``max_tokens`` (``max_completion_tokens``) as a real server does, one word a token: an
  answer cut there ends early, with ``finish_reason`` ``length``;
- ``nousage``: answers like anything else, but without ``usage`` (as llama.cpp's server streams);
- ``nostream``: answers like anything else, but always as one JSON body (``application/json``), ignoring
  ``"stream": true`` (as some OpenAI-compatible servers and gateways do); ``nostream:sse`` sends that body labelled
  ``text/event-stream``; ``nostream:calls`` calls every function in ``tools`` so (as ``calls`` does);
- ``refuse:stream_options``: HTTP 400 ``Unknown parameter: 'stream_options'`` to a request that has
  ``stream_options`` (as Azure OpenAI's older API versions and some gateways answer), else answers like
  ``nousage``;
- ``gzip``: answers like anything else, its JSON body gzip-compressed unless the request asks for
  ``Accept-Encoding: identity`` (a request without the header allows any encoding, RFC 9110 12.5.3);
- ``calls``: calls every function in ``tools`` (arguments ``{}``), as a model calling in parallel may, or only the
  first when ``parallel_tool_calls`` is false (JSON, or SSE tool-call deltas: id and name, then the arguments);
  ``calls:noindex`` streams them without ``index`` (as some OpenAI-compatible servers do): each call's first delta
  has its id and name, the arguments follow in two deltas with neither index nor id; ``calls:latename`` streams
  each call's id first and its name in the next delta, with the arguments; ``calls:objectargs`` sends each call's
  arguments ``{"city": "Paris"}`` as a JSON object, not a string holding one (as llama.cpp's server and TGI have
  done), whole and streamed;
- ``usage:PROMPT:COMPLETION``: answers like anything else, with those token counts (JSON values, so ``-5``,
  ``2.5`` or ``1e30``) in ``usage``, whole and streamed (an endpoint reporting counts that are not counts);
- ``refusal``: declines, as OpenAI's models may (notably with a strict ``json_schema``): ``content`` null and
  :data:`REFUSAL` in ``message.refusal``, finish reason ``stop``; streamed, a first delta with ``content`` null and
  ``refusal`` ``""``, then ``delta.refusal`` pieces;
- ``reasoning:FIELD``: answers as a reasoning model behind an OpenAI-compatible endpoint may: :data:`REASONING` in
  ``message.FIELD`` (``reasoning_content`` as DeepSeek sends it, ``reasoning`` as OpenRouter and vLLM do) beside the
  echo in ``content``, without ``usage``; streamed, ``delta.FIELD`` pieces (``content`` null) before the echo's;
- ``errornull``: answers like anything else, with ``"error": null`` beside the completion and in every chunk of a
  stream (as some gateways send on every answer);
- ``error200``: HTTP 200 whose body is an error, :data:`ERROR_200`, not a completion, streamed or not (as gateways
  such as OpenRouter answer when the provider behind them fails);
- ``streamerror``: streamed, HTTP 200 and a role chunk, then :data:`ERROR_200` as the stream's first event, as
  OpenRouter, vLLM and LiteLLM report a failure once the stream has begun; ``streamerror:later`` sends the echo's
  first piece (``"echo: "``) before that event; not streamed, both answer like anything else;
- ``emptystream``: streamed, HTTP 200 and a body that ends at once, with no event at all (an endpoint closing the
  stream before its model began); ``emptystream:comments`` sends only SSE comments (``: keep-alive``) before it
  ends; not streamed, both answer like anything else;
- ``status:CODE``: HTTP CODE every time, with an OpenAI-shaped error body (an endpoint refusing the request, or
  one whose key is wrong); ``status:CODE:RETRY_AFTER`` adds that ``Retry-After`` header (an endpoint rate
  limiting, 429, or down for a while, 503); ``statuses:CODE,CODE,...``: each call the next CODE of the list, in
  turn (an endpoint failing one way, then another on the retry); ``slowstatus:SECONDS:CODE``: HTTP CODE every
  time, SECONDS after the request (a rate limit far away, whose 429s take that long to come back).

``GET /stats`` returns how many chat calls each model name received (and how many streams were closed early).

Run: ``python tests/servers/instant_upstream.py --port 8001``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

app = FastAPI(title="instant test upstream", docs_url=None, redoc_url=None, openapi_url=None)
calls: Counter[str] = Counter()
LEAK = "invalid key sk-live-0123456789abcdef for /srv/internal/secrets.yaml"
closed_early: Counter[str] = Counter()
REFUSAL = "I'm sorry, but I can't help with that request."
REASONING = ("The user wants their words echoed back. Nothing in the request asks for more than that, so the "
             "answer is the echo itself, with no explanation around it.")
ERROR_200 = {"error": {"message": "Provider returned error: upstream model overloaded", "code": 502,
                       "type": "provider_error"}}


def _answer(body: dict, request: Request) -> str:
    if body.get("model") == "peer" and request.client is not None:
        return f"peer: {request.client.host}:{request.client.port}"
    last = next((m.get("content") for m in reversed(body.get("messages") or []) if m.get("role") == "user"), "")
    if body.get("model") == "judge":
        return f"The user asked: \"{str(last)[:40]}\". The reply does what was asked.\nScore: 8"
    if body.get("model") == "judge:reasoning":
        return ("The request asks one question and the reply answers it directly. The answer is correct, but it "
                "gives no reason or source for the user to check it by, and it could be one sentence shorter.\n"
                "Score: 7")
    return f"echo: {str(last)[:40]}"


def _limited(body: dict, text: str) -> tuple[list[str], str]:
    """``text`` in tokens (a word with the space after it), cut at the request's token limit, and the finish
    reason: ``length`` where the limit cut it."""
    tokens = re.findall(r"\S+\s*", text)
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if not limit or len(tokens) <= limit:
        return tokens, "stop"
    return tokens[:limit], "length"


def _tool_calls(body: dict) -> list[dict]:
    names = [t["function"]["name"] for t in body.get("tools") or []]
    if body.get("parallel_tool_calls") is False:
        names = names[:1]
    arguments: str | dict = {"city": "Paris"} if body.get("model") == "calls:objectargs" else "{}"
    return [{"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, name in enumerate(names)]


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    body = json.loads(await request.body())
    model = str(body.get("model", ""))
    calls[model] += 1
    if model == "broken" or (model == "flaky" and calls[model] % 2 == 1):
        return JSONResponse({"error": {"message": f"{model} upstream failure", "type": "server_error"}},
                            status_code=503 if model == "broken" else 500)
    if model.startswith("status:"):
        code, _, retry_after = model[7:].partition(":")
        return JSONResponse({"error": {"message": f"refused with {code}", "type": "invalid_request_error"}},
                            status_code=int(code), headers={"Retry-After": retry_after} if retry_after else None)
    if model.startswith("statuses:"):
        codes = model[9:].split(",")
        return JSONResponse({"error": {"message": "failed in turn", "type": "server_error"}},
                            status_code=int(codes[(calls[model] - 1) % len(codes)]))
    if model.startswith("slowstatus:"):
        seconds, _, code = model[11:].partition(":")
        await asyncio.sleep(float(seconds))
        return JSONResponse({"error": {"message": f"refused with {code}", "type": "rate_limit_exceeded"}},
                            status_code=int(code))
    if model == "refuse:stream_options" and "stream_options" in body:
        unknown = {"message": "Unknown parameter: 'stream_options'.", "type": "invalid_request_error",
                   "param": "stream_options", "code": "unknown_parameter"}
        return JSONResponse({"error": unknown}, status_code=400)
    if model.startswith("sleep:"):
        await asyncio.sleep(float(model[6:]))
    if model == "error200":
        return JSONResponse(ERROR_200)
    if model == "leaky":
        return JSONResponse({"error": {"message": LEAK, "type": "invalid_request_error"}}, status_code=400)
    created = int(time.time())
    rid = f"chatcmpl-up{calls[model]}"
    if model == "slow" and not body.get("stream"):
        for _ in range(int(body.get("max_tokens") or 200)):
            await asyncio.sleep(0.02)
            if await request.is_disconnected():
                closed_early["slow-json"] += 1
                return Response(status_code=499)
    usage = model not in ("nousage", "refuse:stream_options") and not model.startswith("reasoning:")
    thinks = model.partition(":")[2] if model.startswith("reasoning:") else None
    counts = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    if model.startswith("usage:"):
        prompt, _, completion = model[6:].partition(":")
        counts = {"prompt_tokens": json.loads(prompt), "completion_tokens": json.loads(completion)}
    tool_calls = _tool_calls(body) if model.split(":")[0] == "calls" or model == "nostream:calls" else []
    finish = "tool_calls" if tool_calls else "stop"
    tokens: list[str] | None = None
    if model == "judge:reasoning":
        tokens, finish = _limited(body, _answer(body, request))
        counts = {"prompt_tokens": 10, "completion_tokens": len(tokens), "total_tokens": 10 + len(tokens)}
    if not body.get("stream") or model.startswith("nostream"):
        text = json.dumps({"answer": _answer(body, request)}) if model == "json" else _answer(body, request)
        if tokens is not None:
            text = "".join(tokens)
        message: dict = {"role": "assistant", "content": None, "tool_calls": tool_calls} if tool_calls else {
            "role": "assistant", "content": text}
        if model == "refusal":
            message = {"role": "assistant", "content": None, "refusal": REFUSAL}
        if thinks:
            message[thinks] = REASONING
        answer = {
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            **({"usage": counts} if usage else {}),
            **({"error": None} if model == "errornull" else {}),
        }
        if model == "gzip" and "identity" not in request.headers.get("accept-encoding", ""):
            return Response(gzip.compress(json.dumps(answer).encode()), media_type="application/json",
                            headers={"Content-Encoding": "gzip"})
        if model == "nostream:sse":
            return Response(json.dumps(answer, indent=2), media_type="text/event-stream")
        return JSONResponse(answer)

    if model == "slow":
        pieces = [f"t{i} " for i in range(int(body.get("max_tokens") or 200))]
        delay = 0.02
    else:
        answered = not tool_calls and model != "refusal"
        text = json.dumps({"answer": _answer(body, request)}) if model == "json" else _answer(body, request)
        pieces = tokens or ([p + " " for p in text.split()] if answered else [])
        delay = 0.0

    async def events() -> AsyncIterator[bytes]:
        def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if usage:
                data["usage"] = usage
            if model == "errornull":
                data["error"] = None
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        sent = 0
        try:
            if model.startswith("emptystream"):
                if model.endswith(":comments"):
                    yield b": keep-alive\n\n: keep-alive\n\n"
                return
            if tool_calls:
                yield chunk({"role": "assistant", "content": None})
                for i, call in enumerate(tool_calls):
                    fn = call["function"]
                    if model == "calls:noindex":
                        yield chunk({"tool_calls": [{"id": call["id"], "type": "function",
                                                     "function": {"name": fn["name"], "arguments": ""}}]})
                        for half in (fn["arguments"][:1], fn["arguments"][1:]):
                            yield chunk({"tool_calls": [{"function": {"arguments": half}}]})
                    elif model == "calls:latename":
                        yield chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                     "function": {"arguments": ""}}]})
                        yield chunk({"tool_calls": [{"index": i, "function": {"name": fn["name"],
                                                                              "arguments": fn["arguments"]}}]})
                    else:
                        yield chunk({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                     "function": {"name": fn["name"], "arguments": ""}}]})
                        yield chunk({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]})
                yield chunk({}, "tool_calls", counts)
                yield b"data: [DONE]\n\n"
                return
            if model == "refusal":
                yield chunk({"role": "assistant", "content": None, "refusal": ""})
                for piece in re.findall(r"\S+\s*", REFUSAL):
                    yield chunk({"refusal": piece})
                yield chunk({}, "stop", counts)
                yield b"data: [DONE]\n\n"
                return
            yield chunk({"role": "assistant", "content": ""})
            if thinks:
                for piece in re.findall(r"\S+\s*", REASONING):
                    yield chunk({"content": None, thinks: piece})
            for piece in pieces:
                if model.startswith("streamerror") and sent == (1 if model.endswith(":later") else 0):
                    yield b"data: " + json.dumps(ERROR_200).encode() + b"\n\n"
                    return
                if delay:
                    await asyncio.sleep(delay)
                sent += 1
                yield chunk({"content": piece})
            if model.startswith("usage:"):
                yield chunk({}, "stop", counts)
            else:
                yield chunk({}, finish, {"prompt_tokens": 10, "completion_tokens": sent, "total_tokens": 10 + sent}
                            if usage else None)
            yield b"data: [DONE]\n\n"
        finally:
            if sent < len(pieces) and not model.startswith(("streamerror", "emptystream")):  # it ended it itself
                closed_early[model] += 1

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/v1/models")
async def models() -> dict:
    return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"}
                                       for m in ("echo", "slow", "broken", "flaky", "leaky", "json")]}


@app.get("/stats")
async def stats() -> dict:
    return {"calls": dict(calls), "closed_early": dict(closed_early)}


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
