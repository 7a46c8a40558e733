"""Model cards: the shipped ones load; a bad card names the file, the field and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from router import ConfigError, load_card, load_cards
from router.yaml_files import yaml_files

GOOD = """name: tiny
tier: small
backend:
  type: openai
  base_url: http://127.0.0.1:9/v1
  model: tiny
context_length: 1024
energy:
  per_output_token_j: 0.1
  source: estimate
  citation: test
"""


def test_shipped_cards_load_with_sources(cards):
    assert {"sentiment-onnx", "smollm2-135m", "gemma3-270m"} <= set(cards)
    tiers = {c.tier for c in cards.values() if c.callable}
    assert tiers == {"specialist", "small", "large"}
    for card in cards.values():
        assert card.energy.citation, f"{card.name}: energy figures need a source"
        if card.callable and card.tier != "specialist":
            assert card.source and card.license and card.parameters


def test_good_card(tmp_path: Path):
    file = tmp_path / "tiny.yaml"
    file.write_text(GOOD)
    card = load_card(file)
    assert card.energy.joules(10, 10) == pytest.approx(1.0)
    assert card.path == file.resolve()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (("tier: small", "tier: medium"), "field `tier`"),
        (("context_length: 1024", "context_length: -5"), "field `context_length`"),
        (("  type: openai", "  type: telepathy"), "field `backend`"),
        (("  source: estimate", "  source: vibes"), "field `energy.source`"),
        (("name: tiny", "name: tiny\ncolour: blue"), "field `colour`"),
        (("context_length: 1024", "context_length: [1"), "not valid YAML"),
    ],
)
def test_bad_card_names_file_and_field(tmp_path: Path, change, needle):
    file = tmp_path / "bad.yaml"
    file.write_text(GOOD.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_card(file)
    assert str(file) in str(err.value)
    assert needle in str(err.value)


@pytest.mark.parametrize(("base_url", "needle"), [
    ("https://res.openai.azure.com/openai/deployments/gpt-4o?api-version=2024-10-21", "openai.azure.com/openai/v1"),
    ("http://127.0.0.1:9/v1#models", "fragment"),
    ("http://127.0.0.1:9/v1/chat/completions", "drop /chat/completions"),
    ("http://127.0.0.1:9/v1/chat/completions/", "drop /chat/completions"),
    # no scheme: the card loaded, and every call through `router serve` was a 500 bad_config naming no card
    ("localhost:8000/v1", "http://localhost:8000/v1"),
    ("api.openai.com/v1", "https:// URL with a host"),
    ('""', "https:// URL with a host"),
    ("ftp://127.0.0.1:9/v1", "https:// URL with a host"),
    ("http:///v1", "https:// URL with a host"),
])
def test_a_base_url_the_backend_cannot_call_is_refused_saying_what_to_give(tmp_path: Path, base_url: str,
                                                                           needle: str) -> None:
    """The backend calls base_url + /chat/completions with no query: an Azure deployment URL with ?api-version=
    or a base_url that already ends in /chat/completions is refused when the card loads, naming the fix, where
    every call to it failed with an endpoint's 404 naming neither cause."""
    file = tmp_path / "tiny.yaml"
    file.write_text(GOOD.replace("http://127.0.0.1:9/v1", base_url))
    with pytest.raises(ConfigError, match="field `backend.openai.base_url`") as err:
        load_card(file)
    assert needle in str(err.value)


def test_a_base_url_with_a_trailing_slash_loads(tmp_path: Path) -> None:
    file = tmp_path / "tiny.yaml"
    file.write_text(GOOD.replace("http://127.0.0.1:9/v1", "http://127.0.0.1:9/v1/"))
    assert load_card(file).backend.base_url == "http://127.0.0.1:9/v1/"  # type: ignore[union-attr]


@pytest.mark.parametrize("scores", ["{alpaca_eval_lc: 4.4}", "{mmlu: 85.2, alpaca_eval_lc: 0.044}",
                                    "{alpaca_eval_lc: -0.1}"])
def test_a_benchmark_score_outside_0_to_1_is_refused_saying_how_to_write_a_percentage(tmp_path: Path,
                                                                                      scores: str) -> None:
    """A leaderboard's percentage (AlpacaEval's 4.4, MMLU's 85.2) loaded as it was written: the new-model prior
    clipped it to 0.98, so a weak model looked near perfect. It is refused when the card loads, naming the score."""
    file = tmp_path / "tiny.yaml"
    file.write_text(GOOD + f"benchmarks: {scores}\n")
    with pytest.raises(ConfigError, match="field `benchmarks`: .*a benchmark score is a fraction in \\[0, 1\\]") as err:
        load_card(file)
    bad = [part for part in scores.strip("{}").split(", ") if not 0 <= float(part.split(": ")[1]) <= 1]
    assert all(f"`{part}`" in str(err.value) for part in bad), err.value
    assert "alpaca_eval_lc: 0.044`" not in str(err.value)
    assert "4.4 % is 0.044" in str(err.value)
    file.write_text(GOOD + "benchmarks: {alpaca_eval_lc: 0.044, mmlu: 1}\n")
    assert load_card(file).benchmarks == {"alpaca_eval_lc": 0.044, "mmlu": 1.0}


def test_duplicate_names_are_rejected(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(ConfigError, match="already used"):
        load_cards(tmp_path)


def test_a_card_saved_as_yml_is_loaded_too(tmp_path: Path):
    """`my-smol.yml` used to be skipped without a word: only `*.yaml` was read."""
    (tmp_path / "my-smol.yml").write_text(GOOD)
    (tmp_path / "other.yaml").write_text(GOOD.replace("name: tiny", "name: other"))
    cards = load_cards(tmp_path)
    assert set(cards) == {"tiny", "other"} and cards["tiny"].path == (tmp_path / "my-smol.yml").resolve()
    (tmp_path / "my-smol.yaml").write_text(GOOD)  # the same card under both suffixes
    with pytest.raises(ConfigError, match=r"my-smol\.yml: model name `tiny` is already used by .*my-smol\.yaml"):
        load_cards(tmp_path)


def test_hidden_files_beside_the_cards_are_not_read_as_cards(tmp_path: Path):
    """macOS's ``._`` files (in archives, on shared drives) and an editor's lock stopped the router with a misleading
    "not valid YAML" or "cannot read model card"; policies are listed the same way."""
    (tmp_path / "tiny.yaml").write_text(GOOD)
    (tmp_path / "._tiny.yaml").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: binary
    (tmp_path / ".#tiny.yaml").symlink_to("root@host.1234:1700000000")  # Emacs's lock: a link to nowhere
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "old.yaml").write_text("not: [a card")
    assert set(load_cards(tmp_path)) == {"tiny"}
    assert yaml_files(tmp_path, recursive=True) == [tmp_path / "tiny.yaml"]


def test_two_cards_sharing_a_name_or_an_alias_are_rejected_naming_both_files(tmp_path: Path):
    """One card's alias equal to another's alias (or name) used to load, and one of the two won silently."""
    a = tmp_path / "a.yaml"
    a.write_text(GOOD + "aliases: [smol, Tiny-Chat]\n")
    b = tmp_path / "b.yaml"
    b.write_text(GOOD.replace("name: tiny", "name: other") + "aliases: [tiny-chat]\n")
    with pytest.raises(ConfigError) as err:
        load_cards(tmp_path)
    assert str(err.value).startswith(f"{b}: `tiny-chat` (a name or alias of `other`) is also a name or alias of "
                                     f"`tiny` in {a.resolve()}")
    b.write_text(GOOD.replace("name: tiny", "name: other") + "aliases: [TINY]\n")  # another card's name
    with pytest.raises(ConfigError, match="`tiny` .a name or alias of `other`. is also a name or alias of `tiny`"):
        load_cards(tmp_path)
    b.write_text(GOOD.replace("name: tiny", "name: smol"))  # a name equal to another card's alias
    with pytest.raises(ConfigError, match="`smol` .a name or alias of `smol`. is also a name or alias of `tiny`"):
        load_cards(tmp_path)
    b.write_text(GOOD.replace("name: tiny", "name: other") + "aliases: [other, Other-1]\n")  # its own name: fine
    assert set(load_cards(tmp_path)) == {"tiny", "other"}


def test_missing_weights_package_is_a_clear_error(tmp_path: Path):
    from router.backends import create_backend

    file = tmp_path / "ghost.yaml"
    file.write_text(
        GOOD.replace(
            "  type: openai\n  base_url: http://127.0.0.1:9/v1\n  model: tiny\n",
            "  type: llama_cpp\n  weights:\n    package: no_such_weights_pkg\n    file: x.gguf\n",
        )
    )
    with pytest.raises(ConfigError, match="no_such_weights_pkg.*not installed"):
        create_backend(load_card(file))


@pytest.mark.parametrize("pasted", ["sk-proj-Abc123_def456-GHI789", "0123456789abcdef0123456789abcdef"])
def test_a_key_pasted_as_api_key_env_is_refused_without_repeating_it(tmp_path: Path, pasted: str) -> None:
    """`api_key_env` names the variable that holds the key. A key pasted there loaded, every call to the model failed
    over to another, and each failure wrote the key into the log ("the environment variable sk-... is not set")."""
    file = tmp_path / "hosted.yaml"
    file.write_text(GOOD.replace("  model: tiny\n", f"  model: tiny\n  api_key_env: {pasted}\n"))
    refused = r"hosted\.yaml: field `backend.openai.api_key_env`.*not the key itself"
    with pytest.raises(ConfigError, match=refused) as err:
        load_card(file)
    shown = [str(err.value)] + ([str(err.value.__cause__)] if err.value.__cause__ is not None else [])
    assert not any(pasted in text for text in shown)


def test_api_key_env_naming_a_variable_loads(tmp_path: Path) -> None:
    file = tmp_path / "hosted.yaml"
    file.write_text(GOOD.replace("  model: tiny\n", "  model: tiny\n  api_key_env: _My_KEY2\n"))
    assert load_card(file).backend.api_key_env == "_My_KEY2"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "field", "meant"),
    [
        (("  model: tiny\n", "  model: tiny\n  api_key_evn: OPENAI_API_KEY\n"), "backend.openai.api_key_evn",
         "api_key_env"),
        (("  per_output_token_j: 0.1", "  per_output_tokens_j: 0.1"), "energy.per_output_tokens_j",
         "per_output_token_j"),
        (("context_length: 1024", "context_lenght: 1024\ncontext_length: 1024"), "context_lenght", "context_length"),
    ],
)
def test_a_misspelt_field_says_which_field_was_meant(tmp_path: Path, change, field: str, meant: str) -> None:
    """pydantic says only "Extra inputs are not permitted", leaving the user to find the spelling in the source."""
    file = tmp_path / "typo.yaml"
    file.write_text(GOOD.replace(*change))
    with pytest.raises(ConfigError) as err:
        load_card(file)
    assert f"field `{field}`: Extra inputs are not permitted" in str(err.value)
    assert f"did you mean `{meant}`?" in str(err.value)


def test_a_key_pasted_under_a_misspelt_api_key_env_is_not_repeated(tmp_path: Path) -> None:
    """`api_key: sk-...` is an unknown field like any other, but its value is a key: the guess is given, not the
    value (nor in the chained pydantic error that `router -v` prints)."""
    file = tmp_path / "hosted.yaml"
    file.write_text(GOOD.replace("  model: tiny\n", f"  model: tiny\n  api_key: {SECRET}\n"))
    with pytest.raises(ConfigError, match=r"field `backend.openai.api_key`: .*did you mean `api_key_env`\?") as err:
        load_card(file)
    shown = [str(err.value)] + ([str(err.value.__cause__)] if err.value.__cause__ is not None else [])
    assert not any(SECRET in text for text in shown)


SECRET = "sk-proj-Abc123_def456-GHI789"


def test_a_field_like_no_other_gets_no_guess(tmp_path: Path) -> None:
    file = tmp_path / "odd.yaml"
    file.write_text(GOOD + "colour: blue\n")
    with pytest.raises(ConfigError, match="field `colour`: Extra inputs are not permitted") as err:
        load_card(file)
    assert "did you mean" not in str(err.value)


def test_models_dir_naming_one_card_file_says_it_is_a_file(tmp_path: Path) -> None:
    """models_dir: models/remote-large.yaml said "model card folder does not exist", though the path exists."""
    file = tmp_path / "remote-large.yaml"
    file.write_text(GOOD)
    with pytest.raises(ConfigError) as err:
        load_cards(file)
    message = str(err.value)
    assert message.startswith(f"{file}: is a file, not a model card folder") and "does not exist" not in message
    assert "models_dir names the folder that holds the cards" in message and f"({tmp_path})" in message
    with pytest.raises(ConfigError, match="model card folder does not exist"):
        load_cards(tmp_path / "nowhere")
