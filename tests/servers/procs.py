"""Start the test upstream and ``router serve`` as real subprocesses on free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
LLAMA_SERVER = Path(__file__).with_name("llama_server.py")
"""``python -m llama_cpp.server`` with router's way of loading weights; run it with ``sys.executable``."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path | None = None, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{url}: server exited with {proc.returncode}\n{tail}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{url}: not ready after {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextmanager
def upstream(log_dir: Path) -> Iterator[str]:
    """The instant TEST UPSTREAM; yields its base URL (``http://127.0.0.1:PORT/v1``)."""
    port = free_port()
    log = log_dir / f"upstream-{port}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "servers" / "instant_upstream.py"),
                                 "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


@contextmanager
def llama_server(gguf: Path, log_dir: Path, *extra_args: str, timeout: float = 120.0) -> Iterator[str]:
    """llama.cpp's own OpenAI-compatible server (:data:`LLAMA_SERVER`) on ``gguf``, model alias ``smollm2``;
    yields its base URL (``http://127.0.0.1:PORT/v1``)."""
    port = free_port()
    log = log_dir / "server.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, str(LLAMA_SERVER), "--model", str(gguf), "--host", "127.0.0.1",
                                 "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2", *extra_args],
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v1/models", proc, log, timeout)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)


def wait_for_record(ledger_url: str, request_id: str, timeout: float, poll: float) -> Any:
    """The newest ledger record of ``request_id``, waited for: ``router serve`` writes records from a background
    thread, after the answer has gone out."""
    from router.ledger import open_ledger

    deadline = time.time() + timeout
    while True:
        ledger = open_ledger(ledger_url)
        try:
            found = [r for r in ledger.records() if r.request_id == request_id]
        finally:
            ledger.close()
        if found or time.time() > deadline:
            assert found, f"no ledger record for {request_id}"
            return found[-1]
        time.sleep(poll)


def remote_card(name: str, base_url: str, upstream_model: str, tier: str = "large", per_call_j: float = 1.0,
                max_retries: int = 1, timeout_s: float = 20) -> str:
    return f"""name: {name}
tier: {tier}
backend:
  type: openai
  base_url: {base_url}
  model: {upstream_model}
  timeout_s: {timeout_s:g}
  max_retries: {max_retries}
context_length: 8192
energy:
  per_call_j: {per_call_j}
  per_input_token_j: 0.01
  per_output_token_j: 0.1
  source: estimate
  citation: test card for the instant test upstream
"""


def models_dir(folder: Path, cards: dict[str, str], specialist: bool = True) -> Path:
    """A models folder with the shipped classifier (+ the sentiment specialist) and the given extra cards."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classifier").symlink_to(ROOT / "models" / "classifier")
    if specialist:
        (folder / "sentiment").symlink_to(ROOT / "models" / "sentiment")
        shutil.copy(ROOT / "models" / "sentiment-onnx.yaml", folder / "sentiment-onnx.yaml")
    for name, text in cards.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def policies_dir(folder: Path, extra: dict[str, str] | None = None) -> Path:
    """A policies folder with the shipped policies and the given extra ones (file name without ``.yaml`` ->
    YAML text)."""
    folder.mkdir(parents=True, exist_ok=True)
    for file in (ROOT / "policies").glob("*.yaml"):
        shutil.copy(file, folder / file.name)
    for name, text in (extra or {}).items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def only_policy(model: str) -> str:
    """A policy, ``only<what follows remote->``, that allows ``model`` alone at any accuracy."""
    name = "only" + model.removeprefix("remote-")
    return f"name: {name}\naccuracy: {{min_accuracy: 0.0}}\nallowed_models: [{model}]\n"


@contextmanager
def router_serve(config: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 90.0) -> Iterator[str]:
    """``router serve --config CONFIG ARGS`` on a free port; yields ``http://127.0.0.1:PORT``."""
    with router_serve_process(config, log_dir, *args, env=env, timeout=timeout) as (url, _):
        yield url


@contextmanager
def router_serve_process(config: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None,
                         timeout: float = 90.0) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """:func:`router_serve`, also yielding the process (to send it signals); its log is ``serve-PORT.log`` in
    ``log_dir``."""
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    router_bin = shutil.which("router") or str(Path(sys.executable).parent / "router")
    with log.open("wb") as fh:
        proc = subprocess.Popen([router_bin, "serve", "--port", str(port), "--config", str(config), *args],
                                stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, log, timeout)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            stop(proc)


@contextmanager
def drip_upstream(log_dir: Path, interval: float = 0.5) -> Iterator[str]:
    """The slow TEST UPSTREAM (``drip_upstream.py``: model ``drip[:SECONDS]`` answers a byte every SECONDS);
    yields its base URL (``http://127.0.0.1:PORT/v1``)."""
    port = free_port()
    log = log_dir / f"drip-{port}.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "servers" / "drip_upstream.py"), "--port",
                                 str(port), "--interval", str(interval)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(proc)
