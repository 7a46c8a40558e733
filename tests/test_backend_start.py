"""A remote backend whose card names a key variable that is not set does not start: a ConfigError naming the card,
the field and the variable (on the request path, a failed attempt: the next model answers, the detail is logged)."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_a_card_naming_an_unset_key_variable_is_refused_before_any_call(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """``backend.api_key_env`` names the variable holding the endpoint's key: unset, the backend does not start
    (a ConfigError naming the card, the field and the variable), instead of calling without a key and relaying
    the endpoint's 401."""
    from router.backends.openai_http import OpenAIHTTPBackend
    from router.cards import load_card
    from router.errors import ConfigError

    card_file = tmp_path / "hosted.yaml"
    card_file.write_text("name: hosted\ntier: large\nbackend:\n  type: openai\n  base_url: http://127.0.0.1:9/v1\n"
                         "  model: m\n  api_key_env: ROUTER_TEST_KEY_VAR\ncontext_length: 8192\n"
                         "energy: {per_call_j: 1, source: estimate, citation: test}\n")
    monkeypatch.delenv("ROUTER_TEST_KEY_VAR", raising=False)
    with pytest.raises(ConfigError, match=r"hosted\.yaml: field `backend.api_key_env`.*ROUTER_TEST_KEY_VAR is not set"):
        OpenAIHTTPBackend(load_card(card_file))
    monkeypatch.setenv("ROUTER_TEST_KEY_VAR", "sk-test")
    backend = OpenAIHTTPBackend(load_card(card_file))
    assert backend._headers["Authorization"] == "Bearer sk-test"
    backend.close()
