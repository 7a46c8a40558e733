"""The proxy the environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY) names for a remote card's endpoint is checked when
the Router starts: one httpx cannot call through stops the start with a ConfigError naming the card and the variable,
where ``router serve`` once started and then failed every request to that model (a 500 internal error for a proxy
value that is not a URL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers.procs import ROOT, free_port, models_dir, remote_card

from router import ConfigError, Router, RouterConfig

PASSWORD = "s3cret-never-shown"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                   "NO_PROXY")


def _config(tmp_path: Path) -> Path:
    """A models folder with the shipped classifier and one remote card for https://far.example/v1 (never called:
    only start-up is looked at), and a config naming it."""
    card = remote_card("remote-far", "https://far.example/v1", "echo", max_retries=0)
    models = models_dir(tmp_path / "models", {"remote-far": card}, specialist=False)
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {models}\nledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n"
                      "proxy: {warm_up: false}\n")
    return config


@pytest.mark.parametrize(("proxy", "says"), [
    (f"socks5://user:{PASSWORD}@127.0.0.1:9", "ALL_PROXY names a SOCKS proxy (socks5://) for "
     "https://far.example/v1, and calling through one needs the 'socksio' package, which is not installed; "
     "fix: pip install 'httpx[socks]'"),
    ("socks4://127.0.0.1:9", "ALL_PROXY names a proxy for https://far.example/v1 whose scheme socks4:// is not one "
     "httpx can call through"),
    (f"http://user:{PASSWORD}@proxy:port", "ALL_PROXY names a proxy for https://far.example/v1 that is not a URL "
     "httpx can read; fix: give ALL_PROXY as http://HOST:PORT"),
    ("http://[::1", "ALL_PROXY names a proxy for https://far.example/v1 that is not a URL httpx can read")])
def test_a_proxy_httpx_cannot_call_through_stops_the_routers_start(tmp_path: Path, proxy: str, says: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """FAULT INJECTION for the SOCKS case: ``sys.modules["socksio"] = None`` stands for a machine without it. The
    message names the card's file and the variable, never the proxy's password."""
    monkeypatch.setitem(sys.modules, "socksio", None)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", proxy)
    config = RouterConfig.load(_config(tmp_path))
    with pytest.raises(ConfigError) as refused:
        Router(config)
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'models' / 'remote-far.yaml'}: field `backend.base_url`: the environment "
                              f"variable {says}"), message
    assert PASSWORD not in message
    # the endpoint's host in NO_PROXY: calls to it go direct, and the Router starts
    monkeypatch.setenv("NO_PROXY", "far.example")
    Router(config).close()


def test_router_serve_refuses_to_start_behind_a_proxy_value_that_is_not_a_url(tmp_path: Path) -> None:
    """The real command: it ended with one error line and exit status 2, where it started and answered every request
    to the model with a 500 internal error."""
    env = {**{k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}, "PYTHONPATH": str(ROOT),
           "HTTPS_PROXY": "http://proxy:port"}
    done = subprocess.run([sys.executable, "-m", "router", "serve", "--port", str(free_port()), "--config",
                           str(_config(tmp_path))], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert (f"error: {tmp_path / 'models' / 'remote-far.yaml'}: field `backend.base_url`: the environment variable "
            "HTTPS_PROXY names a proxy for https://far.example/v1 that is not a URL httpx can read") in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
