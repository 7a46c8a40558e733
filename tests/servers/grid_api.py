"""TEST GRID API: answers in the documented shape of Electricity Maps' v3 carbon-intensity endpoints, on loopback.

``GET /v3/carbon-intensity/latest?zone=Z`` and ``/forecast?zone=Z`` (header ``auth-token`` must match), values
from the settable ``GridApi.latest`` and ``GridApi.forecast``; ``GridApi.fail`` makes every call a 503 and
``GridApi.delay`` makes it slow. ``GridApi.calls`` counts the calls. A real HTTP server in a thread: no network.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class GridApi:
    def __init__(self, token: str = "test-token") -> None:
        self.token = token
        self.latest = (300.0, 1_700_000_000.0)
        self.forecast: list[tuple[float, float]] = []
        self.fail = False
        self.delay = 0.0
        self.calls: dict[str, int] = {"latest": 0, "forecast": 0}
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                kind = url.path.rsplit("/", 1)[-1]
                zone = parse_qs(url.query).get("zone", ["?"])[0]
                api.calls[kind] = api.calls.get(kind, 0) + 1
                if api.delay:
                    time.sleep(api.delay)
                if self.headers.get("auth-token") != api.token:
                    return self._send(401, {"error": "bad token"})
                if api.fail:
                    return self._send(503, {"error": "down"})
                if kind == "latest":
                    g, at = api.latest
                    return self._send(200, {"zone": zone, "carbonIntensity": g, "datetime": iso(at),
                                            "updatedAt": iso(at), "emissionFactorType": "lifecycle",
                                            "isEstimated": True, "estimationMethod": "TIME_SLICER_AVERAGE"})
                if kind == "forecast":
                    return self._send(200, {"zone": zone, "forecast": [
                        {"carbonIntensity": g, "datetime": iso(t)} for t, g in api.forecast],
                        "updatedAt": iso(api.latest[1])})
                return self._send(404, {"error": "no such endpoint"})

            def _send(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.handle_error = lambda request, address: None  # a client that timed out and hung up: expected
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
