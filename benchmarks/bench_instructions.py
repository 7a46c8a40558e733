"""Instructions per request of the proxy's routing, counted by valgrind (callgrind): a figure that does not drift.

On a shared 2-core machine a timing moves by tens of percent within minutes, so a change of a few percent in the
proxy's CPU needs an A/B of many rounds (``ab_proxy.py``) to show. Instructions executed do not drift: this
script runs the measured part under ``valgrind --tool=callgrind`` with collection switched on only around it
(``callgrind_control``), and prints instructions (Ir) per item, repeatable to ~1 % (``decide``, ``classify``) or
~2 % (``request``, whose classification batches vary with timing). What it does not see: system calls' kernel
time and the server protocol (the ASGI app is driven in-process; ``server`` counts that protocol alone), so confirm
a gain with ``ab_proxy.py``.

    python benchmarks/bench_instructions.py request [--n 1000]   # whole proxied requests (ASGI app, c=64)
    python benchmarks/bench_instructions.py decide [--n 2000]    # Router._decide on classified requests
    python benchmarks/bench_instructions.py classify [--n 2600]  # classify_batch, batches of 13 texts
    python benchmarks/bench_instructions.py server [--n 3200]    # router serve's HTTP protocol alone (uvicorn)

The config is ``bench_proxy.py``'s (shipped classifier and policies, one remote card on the instant upstream).
Needs valgrind (``apt install valgrind``); the numbers are this tree's (its ``router`` is imported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import ROOT, free_port, questions, start_upstream, stop, write_config  # noqa: E402

_INNER = "BENCH_INSTRUCTIONS_INNER"
BATCH = 13
"""Texts per classification batch: what the proxy's batches hold at concurrency 64 (benchmarks/README.md)."""


@contextlib.contextmanager
def counted() -> Iterator[None]:
    """Switch callgrind's collection on for the block (the process runs under valgrind, collection off)."""
    switch = ["callgrind_control", "--instr=on", str(os.getpid())]
    subprocess.run(switch, check=True, capture_output=True)
    try:
        yield
    finally:
        subprocess.run([*switch[:1], "--instr=off", switch[2]], check=True, capture_output=True)


def _router(tmp: Path, upstream_port: int = 9) -> Any:
    from router import Router
    from router.config import RouterConfig

    return Router(RouterConfig.load(write_config(tmp, upstream_port, ROOT)))


def measure_decide(n: int, tmp: Path) -> None:
    router = _router(tmp)
    checked = [router._check([{"role": "user", "content": q}], {"model": "router", "max_tokens": 16})
               for q in questions(3000)]
    classified = router.classifier.classify_batch([c.text for c in checked])
    with counted():
        for i in range(n):
            router._decide(checked[i % 3000], classified[i % 3000], 0.0)
    router.close()


def measure_classify(n: int, tmp: Path) -> None:
    router = _router(tmp)
    texts = questions(3000)
    batches = [texts[i:i + BATCH] for i in range(0, len(texts), BATCH)]
    classify = router.classifier.classify_batch
    classify(batches[0])
    with counted():
        for i in range(max(1, n // BATCH)):
            classify(batches[i % len(batches)])
    router.close()


def measure_request(n: int, tmp: Path, concurrency: int = 64, warm_up: int = 500) -> None:
    """Whole requests through the proxy's ASGI app, ``concurrency`` at a time, against the instant upstream; the
    journal grouped per loop iteration and the collector's threshold as under ``router serve``."""
    import gc

    import uvloop

    from router.proxy.app import create_app

    up_port = free_port()
    upstream = start_upstream(up_port, {**os.environ})
    try:
        app = create_app(config=write_config(tmp, up_port, ROOT))
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        bodies = [json.dumps({"model": "router", "messages": [{"role": "user", "content": q}],
                              "max_tokens": 16}).encode() for q in questions(warm_up + n)]

        async def one(body: bytes) -> None:
            scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                     "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                     "root_path": "", "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 1),
                     "client": ("127.0.0.1", 2)}
            sent = False
            statuses: list[int] = []

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.sleep(3600)  # the client stays: no disconnect
                raise AssertionError("unreachable")

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app(scope, receive, send)
            if statuses != [200]:
                raise RuntimeError(f"the proxy answered {statuses}")

        async def run(part: list[bytes]) -> None:
            queue = iter(part)

            async def worker() -> None:
                for body in queue:
                    await one(body)

            await asyncio.gather(*(worker() for _ in range(concurrency)))

        async def main() -> None:
            app.state.router.ledger.defer_journal(True)
            await run(bodies[:warm_up])
            with counted():
                await run(bodies[warm_up:])

        uvloop.run(main())
        app.state.router.close()
    finally:
        stop([upstream])


def measure_server(n: int, tmp: Path, connections: int = 64) -> None:
    """What ``measure_request`` leaves out: ``router serve``'s HTTP protocol (uvicorn's httptools protocol with
    router/proxy/server.py's changes, configured as ``router serve`` configures it) parsing a chat request and
    writing a JSON answer with the proxy's headers, over ``connections`` keep-alive connections, each request
    arriving whole. The ASGI app answers at once and the transport only counts its writes, so what is counted is
    the server's own Python work per request (no routing, no system calls)."""
    import uvloop
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from router.proxy.server import OneWriteHttpToolsProtocol

    body = json.dumps({"model": "router", "messages": [{"role": "user", "content": questions(1)[0]}],
                       "max_tokens": 16}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:8000\r\ncontent-type: application/json\r\n"
               b"content-length: %d\r\n\r\n%s" % (len(body), body))
    answer = b"x" * 990  # an answer's size; its headers are the ones the chat route sends
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer)),
               (b"x-request-id", b"chatcmpl-019ad0c4a1b2c3d4e5f6a7b8"), (b"x-router-model", b"remote-echo"),
               (b"x-router-tier", b"small"), (b"x-router-reason", b"chat task -> remote-echo; predicted 0.12 >= "
                                                                  b"target 0.11 (95% of remote-echo's 0.12); 2.7 J"),
               (b"x-router-energy-j", b"1.6"), (b"x-router-energy-source", b"estimated:token-profile")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    class CountingTransport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.writes = 0

        def write(self, data: Any) -> None:
            self.writes += 1

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

        def is_closing(self) -> bool:
            return False

    async def main() -> None:
        config = Config(app=app, http=OneWriteHttpToolsProtocol, lifespan="off", log_level="warning",
                        access_log=False, proxy_headers=False, server_header=False, timeout_keep_alive=30)
        config.load()
        state = ServerState()
        peers = []
        for _ in range(connections):
            protocol = OneWriteHttpToolsProtocol(config=config, server_state=state, app_state={})
            transport = CountingTransport()
            protocol.connection_made(transport)
            peers.append((protocol, transport))

        async def run(requests: int) -> None:
            for _ in range(requests // connections):
                for protocol, _ in peers:
                    protocol.data_received(request)
                for _ in range(4):  # the app's task, its answer, the write at the iteration's end
                    await asyncio.sleep(0)

        await run(10 * connections)
        with counted():
            await run(n)
        written = sum(t.writes for _, t in peers)
        if written != 10 * connections + n // connections * connections:
            raise RuntimeError(f"{written} writes: not one per answer")

    uvloop.run(main())


PARTS = {"request": (measure_request, 1000, "request"), "decide": (measure_decide, 2000, "decision"),
         "classify": (measure_classify, 2600, "text"), "server": (measure_server, 3200, "request")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=sorted(PARTS), help="what to count")
    ap.add_argument("--n", type=int, help="items counted (default: 1000 requests, 2000 decisions, 2600 texts, "
                                          "3200 server requests)")
    args = ap.parse_args()
    measure, default_n, unit = PARTS[args.part]
    n = args.n or default_n
    if os.environ.get(_INNER):
        tmp = Path(tempfile.mkdtemp(prefix="bench_instructions_"))
        try:
            measure(n, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench_instructions: needs valgrind (apt install valgrind)")
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg",
             sys.executable, __file__, args.part, "--n", str(n)],
            env={**os.environ, _INNER: "1"}, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"bench_instructions: the run failed:\n{done.stderr[-2000:]}")
    print(f"{args.part}: {int(found.group(1)) / n:,.0f} instructions per {unit} ({n:,} counted; valgrind callgrind, "
          f"python {sys.version.split()[0]}, tree {ROOT})")


if __name__ == "__main__":
    main()
