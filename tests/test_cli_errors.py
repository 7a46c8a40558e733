"""Errors every `router` command shares: how a bad option value reads."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from servers.procs import ROOT
from typer.testing import CliRunner

from router.cli import app
from router.ledger import LedgerRecord, SQLiteLedger


def test_a_bad_choice_reads_without_pydantics_prefix() -> None:
    res = CliRunner().invoke(app, ["ledger", "report", "--by", "foo"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--by': 'foo' is not one of 'model', " in res.output
    assert "Value error" not in res.output


def test_demo_refuses_max_tokens_0_before_loading_anything(monkeypatch) -> None:
    def no_router(*_a: object, **_k: object) -> None:
        raise AssertionError("the router was loaded before --max-tokens was checked")

    monkeypatch.setattr("router.Router", no_router)
    res = CliRunner().invoke(app, ["demo", "--max-tokens", "0"])
    assert res.exit_code == 2, res.output
    assert "Invalid value for '--max-tokens': Input should be greater than or equal to 1" in res.output


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1", "ascii"])
def test_output_to_a_stream_that_is_not_utf8_is_written_not_a_traceback(tmp_path: Path, encoding: str) -> None:
    """A terminal under a Latin-1 locale, or a Windows console's code page (output redirected to a file there),
    cannot encode the ``≈`` in `router energy convert`'s line: the command writes it as ``?`` and succeeds, where it
    failed with a UnicodeEncodeError traceback. The real command in its own process: the stream is the one Python
    opens for the encoding (PYTHONIOENCODING stands in for the locale)."""
    env = {**os.environ, "PYTHONIOENCODING": encoding, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "router", "energy", "convert", "1200", "--grid", "475"],
                          capture_output=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr.decode(encoding, "replace")
    assert done.stdout.decode(encoding).startswith("1.2 kJ (0.000333 kWh) ? 0.0247 phone charges ? "), done.stdout
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["import-routellm", "simulate"])
def test_an_output_path_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path: Path, command: str) -> None:
    """Every command that writes a file met an OSError there (its folder is a file, the path is a folder) with a
    traceback and exit status 1; it is one error line naming the option and the path, exit status 2, found before
    the command's work (the whole simulation, for --decisions)."""
    from cli_helpers import router_main

    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a folder\n")
    if command == "import-routellm":
        args = ["data", "import-routellm", str(ROOT / "data" / "routellm_mmlu" / "mmlu_anatomy.csv"),
                "-o", str(a_file / "outcomes.jsonl")]
    else:  # --decisions names a folder, found only once the whole simulation has run
        args = ["simulate", "--outcomes", str(ROOT / "data" / "outcomes" / "sentiment_local.jsonl"),
                "--no-progress", "--decisions", str(tmp_path)]
    code, output = router_main(*args)
    assert code == 2, output
    assert "Traceback" not in output
    option, named = ("'-o' / '--out'", f"{a_file} is a file") if command == "import-routellm" else (
        "'--decisions'", f"{tmp_path} is a folder")
    assert f"Invalid value for {option}: {named}" in " ".join(output.split()), output
    assert "fix: " in output



@pytest.mark.slow
@pytest.mark.parametrize("command", [["ledger", "export", "-o", "-"], ["ledger"]])
def test_a_reader_that_closes_the_pipe_ends_the_command_without_an_error(tmp_path: Path, command: list[str]) -> None:
    """`router ledger export -o - | head -1`: the reader closes the pipe, and the command said `error: Broken pipe`
    with exit status 2 as if it had failed; it ends without a word, status 1, as a table to a closed pipe does. The
    pipe's read end is closed before the command starts, so its first write meets the closed pipe."""
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = SQLiteLedger.from_url(url)
    ledger.record(LedgerRecord("r0", "sentiment-onnx", "specialist", 0.01, "estimated:cpu-time"))
    ledger.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ROUTER_LEDGER_URL": url}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "router", *command], stdout=write_end, stderr=subprocess.PIPE,
                              env=env, cwd=tmp_path, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 1, done.stderr
    assert done.stderr == b""


def test_ctrl_c_says_the_command_was_interrupted_and_what_it_left(tmp_path: Path) -> None:
    """Ctrl+C on a long command ended it with exit status 130 and not a word, so nobody could tell whether its
    output was complete. The real `router data from-ledger` in its own process, stopped by SIGINT while it waits for
    its ledger's store: once the store has the command's first request, the command is running and waits there."""
    import signal
    import socket

    # TEST DOUBLE: a Redis server that takes the connection and never answers (a store that hangs)
    with socket.create_server(("127.0.0.1", 0)) as store:
        port = store.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "router", "data", "from-ledger", "-o",
                                 str(tmp_path / "scored.jsonl"), "--ledger", f"redis://127.0.0.1:{port}/0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
        try:
            store.settimeout(120)
            connection, _ = store.accept()
            with connection:
                assert connection.recv(1024), "the command closed its connection to the store"
                proc.send_signal(signal.SIGINT)
                _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 130, err.decode()
    lines = err.decode().strip().splitlines()
    assert lines and lines[-1] == (
        f"{Path(sys.executable).name} -m router data from-ledger: interrupted; the files it had finished writing are "
        "kept, one it was still writing may be incomplete"), err.decode()
    assert b"Traceback" not in err


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"router {importlib.metadata.version('router')}\n", result.output
