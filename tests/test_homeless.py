"""router run by a user with no home folder: a container started with a bare UID (``docker run --user 12345``, a
Kubernetes ``runAsUser``) that has no entry in ``/etc/passwd``, and no ``HOME``. Where router would put a file in
its per-user data folder, it says which setting names that file instead, as one line, not a traceback."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from cli_helpers import router_main

from router.config import RouterConfig
from router.errors import ConfigError
from router.ledger import open_ledger
from tests.servers.procs import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    # set, then deleted: monkeypatch then restores each as it was, also one that `router serve`, run in this process
    # below, sets for its workers (a deleted variable that was not set is not restored, and leaked into later tests)
    for name in ("HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "ROUTER_LEDGER_URL", "ROUTER_PROXY_CONFIG",
                 "ROUTER_PROXY_KEYS", "ROUTER_METRICS_DIR", "ROUTER_PROXY_LISTEN_HOST"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    def no_passwd_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    # TEST DOUBLE: the user database without this process's user (tests run as users that have an entry)
    monkeypatch.setattr(pwd, "getpwuid", no_passwd_entry)


def test_the_default_ledger_names_the_setting_that_moves_it(no_home: None) -> None:
    with pytest.raises(ConfigError, match=r"HOME is not set .* set HOME or XDG_DATA_HOME to a writable folder, or "
                       r"name the ledger \(ledger_url in the config, ROUTER_LEDGER_URL or --ledger\)"):
        RouterConfig.load(None)


def test_a_journal_for_a_server_store_names_journal_folder(no_home: None) -> None:
    with pytest.raises(ConfigError, match=r"name the journal folder \(journal.folder in the config\)"):
        open_ledger("redis://127.0.0.1:1/0", journal=True)  # nothing listens on port 1: the journal is made first


def test_serve_with_a_redis_ledger_says_to_set_the_batch_store_in_one_line(no_home: None, tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {ROOT / 'models'}\npolicies_dir: {ROOT / 'policies'}\n")
    code, out = router_main("serve", "--config", str(config), "--ledger", "redis://127.0.0.1:1/0",
                            "--port", str(free_port()))
    assert code == 2, out
    assert out.strip().splitlines() == [
        "error: router's data folder is under the home folder, and there is none: HOME is not set and user id "
        f"{os.getuid()} has no home in the user database (a container run with a bare UID); fix: set "
        "HOME or XDG_DATA_HOME to a writable folder, or name the batch store (batch.store_url in the config)"]


def test_ledger_doctor_with_a_named_journal_folder_needs_no_home(no_home: None, tmp_path: Path) -> None:
    """With the journal folder named, the doctor of a server store has no use for the data folder: it checks the
    named folder and says the store does not open (nothing listens on port 1), not that there is no home."""
    journal = tmp_path / "journal"
    journal.mkdir()
    code, out = router_main("ledger", "doctor", "--ledger", "redis://127.0.0.1:1/0", "--journal", str(journal))
    assert code == 1 and "the store does not open" in out and f"journal {journal}: nothing pending" in out, out
    assert "data folder" not in out, out
