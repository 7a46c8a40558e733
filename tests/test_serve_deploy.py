"""``router serve`` as a container or a reverse proxy runs it: listening address, port and workers from
``ROUTER_HOST``, ``ROUTER_PORT`` and ``ROUTER_WORKERS``, and ``--root-path`` (``ROUTER_ROOT_PATH``) for a proxy that
serves the router under a prefix, whether it strips the prefix or passes it on. Real ``router serve`` processes
and real HTTP requests; a request with the prefix is what a proxy that passes it on sends."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from servers.procs import ROOT, free_port, models_dir, remote_card, router_serve, stop, upstream, wait_ready

pytestmark = pytest.mark.slow

ROUTER = shutil.which("router") or str(Path(sys.executable).parent / "router")


@pytest.fixture(scope="module")
def upstream_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with upstream(tmp_path_factory.mktemp("upstream")) as url:
        yield url


def _config(tmp: Path, upstream_url: str) -> Path:
    models = models_dir(tmp / "models", {"remote-echo": remote_card("remote-echo", upstream_url, "echo")},
                        specialist=False)
    config = tmp / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\n"
                      f"ledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\nproxy: {{warm_up: false}}\n")
    return config


def _serve(config: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``router serve --config CONFIG`` with ``env`` added to this environment and no other option."""
    return subprocess.Popen([ROUTER, "serve", "--config", str(config)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def _chat(url: str) -> httpx.Response:
    return httpx.post(url, timeout=20, json={"model": "remote-echo", "messages": [{"role": "user", "content": "hi"}]})


def test_host_port_and_root_path_come_from_the_environment(upstream_url: str, tmp_path: Path) -> None:
    port = free_port()
    proc = _serve(_config(tmp_path, upstream_url),
                  {"ROUTER_HOST": "127.0.0.1", "ROUTER_PORT": str(port), "ROUTER_ROOT_PATH": "/router"})
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # said once the socket listens, before the models load
        assert f"http://127.0.0.1:{port}/v1 " in first and "under /router" in first, first
        wait_ready(f"http://127.0.0.1:{port}/health", proc)  # type: ignore[arg-type]
        r = _chat(f"http://127.0.0.1:{port}/router/v1/chat/completions")
        assert r.status_code == 200, r.text
    finally:
        stop(proc)  # type: ignore[arg-type]


def test_workers_come_from_the_environment(tmp_path: Path, upstream_url: str) -> None:
    """ROUTER_WORKERS=2 over the SQLite ledger is refused as ``--workers 2`` is: the variable was read, and the
    refusal names it (not a --workers the command line never had)."""
    proc = _serve(_config(tmp_path, upstream_url), {"ROUTER_WORKERS": "2", "ROUTER_PORT": str(free_port())})
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("router serve: ROUTER_WORKERS=2: worker processes share energy budgets"), first
        assert "use ROUTER_WORKERS=1 with it" in first and "--workers" not in first, first
        assert proc.wait(60) == 2
    finally:
        stop(proc)  # type: ignore[arg-type]


def test_workers_from_the_command_line_are_named_as_the_option(tmp_path: Path, upstream_url: str) -> None:
    """The same refusal for ``--workers 2`` names the option, even with ROUTER_WORKERS set too (the option wins)."""
    done = subprocess.run([ROUTER, "serve", "--config", str(_config(tmp_path, upstream_url)), "--workers", "2",
                           "--port", str(free_port())], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ROUTER_WORKERS": "3"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("router serve: --workers 2: worker processes share energy budgets"), done.stderr
    assert "use --workers 1 with it" in done.stderr and "ROUTER_WORKERS" not in done.stderr


def test_under_a_root_path_requests_with_and_without_the_prefix_are_served(upstream_url: str, tmp_path: Path
                                                                         ) -> None:
    """A reverse proxy serving the router under /router/ may pass the prefix on (the path as the client sent it)
    or strip it: both are answered, chat (the fast path), the other routes and the dashboard."""
    with router_serve(_config(tmp_path, upstream_url), tmp_path, "--root-path", "/router/") as url:
        for base in (f"{url}/router", url):  # a proxy that passes the prefix on; one that strips it
            r = _chat(f"{base}/v1/chat/completions")
            assert r.status_code == 200, (base, r.text)
            assert r.json()["choices"][0]["message"]["content"] == "echo: hi"
            assert r.headers["x-router-model"] == "remote-echo"
            models = httpx.get(f"{base}/v1/models", timeout=20)
            assert models.status_code == 200 and "remote-echo" in {m["id"] for m in models.json()["data"]}
            assert httpx.get(f"{base}/health", timeout=20).json()["status"] == "ok"
            missing = httpx.get(f"{base}/v1/nothing", timeout=20)
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
            assert httpx.get(f"{base}/v1/chat/completions", timeout=20).status_code == 405
        # the dashboard as a browser opens it behind a proxy that passes the prefix on: the page, what it links
        # and the API its script fetches (app.js: BASE is the page's own path), all under the prefix
        page_url = f"{url}/router/dashboard"
        page = httpx.get(page_url, timeout=20)
        assert page.status_code == 200, page.text
        linked = re.findall(r'(?:href|src)="(dashboard/[^"]+)"', page.text)
        assert len(linked) == 2, page.text
        for link in linked:
            assert httpx.get(urljoin(page_url, link), timeout=20).status_code == 200, link
        totals = httpx.get(f"{page_url}/api/totals", timeout=20)
        assert totals.status_code == 200 and totals.json()["requests"] == 2, totals.text
        slash = httpx.get(f"{page_url}/", timeout=20)
        assert slash.status_code == 307 and urljoin(f"{page_url}/", slash.headers["location"]) == page_url
