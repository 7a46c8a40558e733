"""Local GGUF models that llama.cpp cannot load, and llama.cpp's own log.

A weights file that exists but is not a GGUF model (a truncated download, the wrong file) fails its attempt like
any backend failure: a typed ``BackendError``, a ledger record, the next model tried; llama.cpp's reasons go to the
log, never into what a client is shown (they name server paths). llama.cpp's log lines go through Python logging
(``router.llama_cpp``) at the levels of ``ggml.h``, not printed to stderr by llama-cpp-python's older level table,
which printed warnings as errors and hid the errors (router/backends/llama_log.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from router import BackendError, ConfigError, Router, RouterConfig
from router.backends.llama_cpp import LlamaCppBackend
from router.backends.weights import resolve_gguf, sha256_file
from router.cards import load_card

BROKEN = """name: broken-gguf
tier: small
backend:
  type: llama_cpp
  weights: {path: broken.gguf}
context_length: 1024
prior_accuracy: {chat: 0.9}
energy: {per_call_j: 0.1, source: estimate, citation: test}
"""


@pytest.fixture
def broken_card(tmp_path: Path):  # noqa: ANN201
    (tmp_path / "broken.gguf").write_bytes(b"not a model, a page of HTML an interrupted download saved")
    (tmp_path / "broken.yaml").write_text(BROKEN)
    return load_card(tmp_path / "broken.yaml")


def test_weights_llama_cpp_cannot_load_are_a_typed_failed_attempt_with_the_reason_in_the_log(
        broken_card, ledger_url: str, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    router = Router(RouterConfig.load(ledger_url=ledger_url), cards={"broken-gguf": broken_card})
    with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as err:
        router.complete(messages=[{"role": "user", "content": "hi"}])
    assert "broken-gguf" in err.value.message and "could not load" in err.value.message
    assert str(tmp_path) not in err.value.message  # the path is the server's, not the client's
    logged = caplog.text
    assert "invalid magic" in logged and "GGUF" in logged and str(tmp_path / "broken.gguf") in logged
    (rec,) = router.ledger.records()
    assert rec.model == "broken-gguf" and rec.outcome == "error" and "backend_failed" in (rec.error or "")


def test_a_request_falls_back_from_weights_that_do_not_load(broken_card, cards, small_backend,
                                                            ledger_url: str) -> None:
    router = Router(RouterConfig.load(ledger_url=ledger_url),
                    cards={"broken-gguf": broken_card, "smollm2-135m": cards["smollm2-135m"]},
                    backends={"smollm2-135m": small_backend})
    resp = router.complete(messages=[{"role": "user", "content": "Say hi"}], model="broken-gguf", max_tokens=4)
    assert [(a.model, a.outcome) for a in resp.routing.attempts] == [("broken-gguf", "error"), ("smollm2-135m", "ok")]
    assert [r.outcome for r in router.ledger.records()] == ["error", "ok"]


def test_llama_cpp_logs_through_python_logging_not_stderr(cards, capfd: pytest.CaptureFixture[str],
                                                          caplog: pytest.LogCaptureFixture) -> None:
    backend = LlamaCppBackend(cards["gemma3-270m"])  # its own load: the shared fixtures are loaded already
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="router.llama_cpp"):
        assert backend.llm is not None
    backend.close()
    assert "llama_kv_cache" not in capfd.readouterr().err  # a warning llama-cpp-python printed as an error
    lines = [r for r in caplog.records if r.name == "router.llama_cpp"]
    assert any("llama_model_loader" in r.getMessage() for r in lines)
    assert all(r.levelno < logging.ERROR for r in lines)  # a model that loads logs no errors


OTHER_THREADS_PRINT = """
import sys, threading, time
from router.backends import create_backend
from router.cards import load_cards
from router.config import RouterConfig

backend = create_backend(load_cards(RouterConfig.load().models_dir)["gemma3-270m"])
loading = threading.Thread(target=lambda: backend.llm)
loading.start()
printed = 0
while loading.is_alive() or printed < 5:
    print(f"line {printed}", flush=True)
    printed += 1
    time.sleep(0.005)
loading.join()
print(printed, file=sys.stderr)
"""


def test_a_model_loading_on_one_thread_silences_no_other_thread() -> None:
    """llama-cpp-python pointed the process's stdout and stderr at /dev/null while a model loaded: a judge loading its
    model on its own thread swallowed the application's prints (6 of 142 lines reached stdout)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", OTHER_THREADS_PRINT], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr
    printed = int(done.stderr.strip().splitlines()[-1])
    assert done.stdout.splitlines() == [f"line {i}" for i in range(printed)]


@pytest.fixture
def unwritable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cache folder under a plain file: no folder can be made there, as in a read-only home (and even root
    cannot, so the test means the same for any user)."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker / "cache"))
    return blocker / "cache"


def test_weights_whose_checksum_cannot_be_remembered_still_load(unwritable_cache: Path, tmp_path: Path) -> None:
    """The checked-checksum marker is only a cache: a home the user cannot write does not make the model unusable
    (router demo's warm-up and every request to it failed with an internal NotADirectoryError/PermissionError)."""
    weights = tmp_path / "small.gguf"
    weights.write_bytes(b"GGUF stand-in bytes: only the checksum is read here")
    (tmp_path / "checked.yaml").write_text(BROKEN.replace("broken-gguf", "checked-gguf").replace(
        "{path: broken.gguf}", f"{{path: small.gguf, sha256: {sha256_file(weights)}}}"))
    card = load_card(tmp_path / "checked.yaml")
    assert resolve_gguf(card.backend.weights, card) == weights
    assert not unwritable_cache.exists()


def test_weights_that_cannot_be_assembled_in_the_cache_are_a_failed_attempt_naming_the_fix(
        unwritable_cache: Path, cards, ledger_url: str) -> None:
    gemma = cards["gemma3-270m"]
    with pytest.raises(ConfigError, match="XDG_CACHE_HOME") as caught:
        resolve_gguf(gemma.backend.weights, gemma)
    assert str(unwritable_cache / "router" / "gguf") in caught.value.message
    router = Router(RouterConfig.load(ledger_url=ledger_url), cards={"gemma3-270m": gemma})
    with pytest.raises(BackendError):  # typed, as a model file that does not load, not an internal error
        router.complete(messages=[{"role": "user", "content": "Say hi"}], max_tokens=4)
    assert [r.outcome for r in router.ledger.records()] == ["error"]
    router.close()
