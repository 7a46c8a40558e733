"""Rotating an API key: the new key has a new digest, so by default a new id, fresh per-key budgets and none of
the policy files' entries of the old key. An entry's ``id`` keeps the old key's id, and with it its budgets (what
they spent this window too), so rotating a key no longer lets its spending escape the limit."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_budgets import REVIEW, setup

from router import Router, RouterConfig
from router.errors import BudgetExhaustedError, ConfigError
from router.keys import KeyStore, digest
from router.ledger import hash_key

OLD, NEW = "sk-team-a-2025", "sk-team-a-2026"

POLICY = """\
    name: t
    accuracy: {min_accuracy: 0.0}
    budgets: [{model: 'tier:specialist', joules: 1.5, per: hour, scope: per_key}]
    on_budget_exhausted: reject
    """


def _router(root: Path, new_entry: dict[str, str]) -> Router:
    config = RouterConfig.load(models_dir=root / "models", policies_dir=root / "policies", default_policy="t",
                               ledger_url=f"sqlite:///{root / 'ledger.sqlite3'}",
                               keys=[{"name": "team-a", "sha256": digest(OLD)}, new_entry])
    return Router(config)


def test_a_rotated_key_given_the_old_id_keeps_its_spent_budget(tmp_path: Path) -> None:
    root = setup(tmp_path, POLICY)
    r = _router(root, {"name": "team-a-new", "sha256": digest(NEW), "id": hash_key(OLD)})
    try:
        assert r.complete(REVIEW, api_key=OLD).routing.model == "spec-a"  # 1 J of the key's 1.5 J this hour
        with pytest.raises(BudgetExhaustedError):  # the new key spends from the same budget
            r.complete(REVIEW, api_key=NEW)
        assert {rec.key_hash for rec in r.ledger.records()} == {hash_key(OLD)}  # one key in reports
    finally:
        r.close()


def test_a_rotated_key_without_an_id_starts_afresh(tmp_path: Path) -> None:
    """As docs/proxy.md says: a new key is a new id unless its entry keeps the old one."""
    root = setup(tmp_path, POLICY)
    r = _router(root, {"name": "team-a-new", "sha256": digest(NEW)})
    try:
        r.complete(REVIEW, api_key=OLD)
        assert r.complete(REVIEW, api_key=NEW).routing.model == "spec-a"
    finally:
        r.close()


@pytest.mark.parametrize("bad", ["team-a", "key-XYZ", hash_key(OLD) + "0", 7])  # type: ignore[operator]
def test_an_id_that_is_no_key_id_is_refused_naming_the_entry(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"keys\[0\] \(team-a\): `id` must be a key id"):
        KeyStore.from_entries([{"name": "team-a", "sha256": digest(NEW), "id": bad}])
