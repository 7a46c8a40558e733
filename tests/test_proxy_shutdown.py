"""``router serve`` stopping with requests in flight: a real server process, a real slow upstream
(tests/servers/drip_upstream.py, whose answers take minutes) and a real SQLite ledger.

After SIGTERM the server waits ``proxy.shutdown_timeout_s`` for running requests, then cancels them and exits,
rather than waiting for every stream to end; each cancelled request is still in the ledger, as ``cancelled``.
A request the server stops, so or with a second Ctrl+C, is told why: a 503 ``router_closed`` with its request id,
or for a stream a last error event.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers.procs import drip_upstream, models_dir, policies_dir, remote_card, router_serve_process

from router.ledger import open_ledger

DRIP_S = 0.02
"""Seconds between two bytes of the upstream's answer: a stream's first chunk comes after ~4 s, and the whole
JSON answer takes ~1 minute, the whole stream ~30 minutes."""
EXIT_WITHIN_S = 60.0
"""Generous bound on the server's exit after the signal (it should take the shutdown timeout and a few seconds)."""


@pytest.fixture(scope="module")
def drip_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with drip_upstream(tmp_path_factory.mktemp("drip"), DRIP_S) as url:
        yield url


def _config(tmp: Path, drip_url: str, proxy: str) -> Path:
    card = remote_card("remote-drip", drip_url, "drip", tier="large").replace("timeout_s: 20", "timeout_s: 3600")
    models = models_dir(tmp / "models", {"remote-drip": card}, specialist=False)
    policies = policies_dir(tmp / "policies")
    config = tmp / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {policies}\n"
                      f"ledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\ndeadline_s: 3600\nproxy: {{{proxy}}}\n")
    return config


class _InFlight:
    """One JSON and one streamed request to the slow model, each in a thread, kept until they end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.json_response: httpx.Response | None = None
        self.stream_status: int | None = None
        self.stream_headers: dict[str, str] = {}
        self.events: list[str] = []
        self.stream_started = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._json, daemon=True),
                        threading.Thread(target=self._stream, daemon=True)]
        for thread in self.threads:
            thread.start()

    def _body(self, stream: bool) -> dict[str, Any]:
        return {"model": "remote-drip", "messages": [{"role": "user", "content": "hi"}], "stream": stream}

    def _json(self) -> None:
        try:
            self.json_response = httpx.post(f"{self.url}/v1/chat/completions", json=self._body(False),
                                            headers={"x-request-id": "shutdown-json"}, timeout=600)
        except BaseException as exc:  # the test reports it
            self.errors.append(exc)

    def _stream(self) -> None:
        try:
            with httpx.stream("POST", f"{self.url}/v1/chat/completions", json=self._body(True),
                              headers={"x-request-id": "shutdown-stream"}, timeout=600) as r:
                self.stream_status = r.status_code
                self.stream_headers = dict(r.headers)
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line.removeprefix("data: "))
                        self.stream_started.set()
        except BaseException as exc:  # the test reports it
            self.errors.append(exc)
        finally:
            self.stream_started.set()

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)


def _upstream_calls(drip_url: str) -> int:
    return int(httpx.get(drip_url.removesuffix("/v1") + "/stats").json()["calls"].get("drip", 0))


def _records(ledger_url: str, journal: bool = False) -> dict[str, Any]:
    """The ledger's records by request id; with ``journal``, after replaying the journals of stopped processes into
    the store, as the next process to open the ledger does."""
    ledger = open_ledger(ledger_url, journal=journal)
    try:
        return {r.request_id: r for r in ledger.records()}
    finally:
        ledger.close()


def _stop_with_requests_in_flight(tmp: Path, drip_url: str, proxy: str, signals: list[signal.Signals]
                                  ) -> tuple[_InFlight, subprocess.Popen[bytes], Path]:
    """Serve, start the two requests, send ``signals`` once both are running, and wait for the server to exit."""
    config = _config(tmp, drip_url, proxy)
    before = _upstream_calls(drip_url)
    with router_serve_process(config, tmp) as (url, proc):
        flight = _InFlight(url)
        assert flight.stream_started.wait(120), "the stream's first chunk never came"
        deadline = time.time() + 60
        while _upstream_calls(drip_url) < before + 2 and time.time() < deadline:
            time.sleep(0.1)
        assert _upstream_calls(drip_url) == before + 2, "the JSON request never reached the upstream"
        assert flight.json_response is None and not flight.errors
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(1)  # the second Ctrl+C of a person: after the first has begun the shutdown
        try:
            proc.wait(EXIT_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"router serve still running {EXIT_WITHIN_S:g} s after {[s.name for s in signals]}, waiting "
                        "for requests that take minutes")
        flight.join(30)
    return flight, proc, tmp


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_cancels_long_requests_after_the_shutdown_timeout(drip_url: str, tmp_path: Path) -> None:
    """SIGTERM with a JSON answer and a stream in flight that would take minutes: the server gives them
    ``shutdown_timeout_s``, then cancels them and exits; the ledger has each as ``cancelled``, the stream with the
    tokens it had produced."""
    _stop_with_requests_in_flight(tmp_path, drip_url, "shutdown_timeout_s: 2", [signal.SIGTERM])
    records = _records(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    assert {"shutdown-json", "shutdown-stream"} <= records.keys(), sorted(records)
    assert records["shutdown-json"].outcome == "cancelled"
    assert records["shutdown-stream"].outcome == "cancelled"
    assert records["shutdown-stream"].output_tokens >= 1


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("proxy", "signals"), [
    ("shutdown_timeout_s: 2", [signal.SIGTERM]),
    ("shutdown_timeout_s: 600", [signal.SIGINT, signal.SIGINT]),  # a second Ctrl+C does not wait
    ("shutdown_timeout_s: 2", [signal.SIGHUP]),  # `kill -HUP`, `systemctl reload`: stops as SIGTERM does
], ids=["sigterm-after-timeout", "ctrl-c-twice", "sighup"])
def test_requests_the_server_stops_are_told_so(drip_url: str, tmp_path: Path, proxy: str,
                                                signals: list[signal.Signals]) -> None:
    """A JSON request the stopping server cancels gets a 503 ``router_closed`` error body with its request id (not
    uvicorn's plain-text 500 and a traceback in the log); a stream gets a last ``data: {"error": ...}`` event and
    then ends properly. The ledger has both as ``cancelled`` (after a forced quit, from the journal)."""
    flight, _, _ = _stop_with_requests_in_flight(tmp_path, drip_url, proxy, signals)
    assert not flight.errors, flight.errors
    r = flight.json_response
    assert r is not None
    assert r.status_code == 503, r.text
    assert r.headers["x-request-id"] == "shutdown-json"
    error = r.json()["error"]
    assert error["code"] == "router_closed" and "shutting down" in error["message"], error
    assert "request id shutdown-json" in error["message"]
    assert flight.stream_status == 200 and flight.stream_headers["x-request-id"] == "shutdown-stream"
    last = json.loads(flight.events[-1])
    assert last["error"]["code"] == "router_closed", flight.events[-3:]
    assert "request id shutdown-stream" in last["error"]["message"]
    log = "".join(f.read_text(errors="replace") for f in tmp_path.glob("serve-*.log"))
    assert "Exception in ASGI application" not in log
    records = _records(f"sqlite:///{tmp_path / 'ledger.sqlite3'}", journal=True)
    assert records["shutdown-json"].outcome == "cancelled"
    assert records["shutdown-stream"].outcome == "cancelled"
    # the server stopped both requests, not their clients: the records say so
    for request_id in ("shutdown-json", "shutdown-stream"):
        error_text = records[request_id].error or ""
        assert "server was shutting down" in error_text and "went away" not in error_text, (request_id, error_text)
