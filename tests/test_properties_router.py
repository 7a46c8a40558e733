"""Property-based tests over ``Router.complete``: whatever keyword arguments and message shapes a caller passes,
only ``RouterError`` subclasses escape, and every call ends (nothing hangs).

The Router is real: the shipped classifier and sentiment specialist, and two remote cards on the instant test
upstream (a real HTTP server), so each example costs milliseconds."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers.procs import models_dir, remote_card, upstream

from router import ChatCompletion, Router, RouterConfig, RouterError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    tmp = tmp_path_factory.mktemp("props")
    with upstream(tmp) as url:
        models = models_dir(tmp / "models", {"remote-small": remote_card("remote-small", url, "echo", tier="small"),
                                            "remote-large": remote_card("remote-large", url, "echo", tier="large")})
        config = RouterConfig.load(models_dir=models, policies_dir=ROOT / "policies",
                                   ledger_url=f"sqlite:///{tmp / 'ledger.sqlite3'}", deadline_s=20)
        r = Router(config)
        yield r
        r.close()


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["router", "router:eco", "router:nope", "sentiment-onnx", "remote-small", "gpt-17", "", "0.5"]),
)
json_like = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                               inner, max_size=4),
                         max_leaves=20)
PARAMS = ["model", "policy", "accuracy_target", "max_energy_j", "max_tokens", "max_completion_tokens",
          "temperature", "stop", "n", "api_key", "request_id", "deadline_s", "top_p", "seed", "user", "metadata",
          "response_format", "logprobs", "stream_options", "timeout", "tools", "bogus", "tool_choice", "functions",
          "function_call", "parallel_tool_calls", "top_logprobs", "reasoning_effort", "modalities", "logit_bias",
          "audio"]
kwargs = st.dictionaries(st.sampled_from(PARAMS), json_like, max_size=5)

roles = st.sampled_from(["user", "system", "assistant", "tool", "developer", "wizard", "", None, 3])
content = st.one_of(
    st.text(max_size=200), st.none(), st.integers(),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": json_like}), max_size=3),
    json_like,
)
message = st.one_of(st.fixed_dictionaries({"role": roles, "content": content}),
                    st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id",
                                                     "function_call"]), json_like, max_size=3),
                    json_like)
messages = st.one_of(st.lists(message, max_size=4), json_like,
                     st.just([{"role": "user", "content": "Is this review positive or negative? 'a fine film'"}]))


def _deeply_nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _call(router: Router, msgs: Any, params: dict[str, Any], stream: bool) -> None:
    try:
        if stream:
            for _chunk in router.complete(msgs, stream=True, **params):
                pass
        else:
            assert isinstance(router.complete(msgs, **params), ChatCompletion)
    except RouterError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=messages, params=kwargs, stream=st.booleans())
def test_only_router_errors_escape_complete(router: Router, msgs: Any, params: dict[str, Any], stream: bool) -> None:
    _call(router, msgs, params, stream)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=messages, params=kwargs, stream=st.booleans())
def test_only_router_errors_escape_acomplete(router: Router, msgs: Any, params: dict[str, Any], stream: bool) -> None:
    async def go() -> None:
        try:
            if stream:
                async for _chunk in await router.acomplete(msgs, stream=True, **params):
                    pass
            else:
                await router.acomplete(msgs, **params)
        except RouterError:
            pass

    asyncio.run(go())


@pytest.mark.parametrize(("name", "value"), [
    ("max_energy_j", "abc"), ("accuracy_target", "0.5"), ("model", 123), ("api_key", 123), ("request_id", 123),
    ("deadline_s", math.nan), ("temperature", math.inf), ("max_tokens", True), ("stop", [1]), ("n", 2),
])
def test_each_known_bad_parameter_is_a_bad_request_naming_it(router: Router, name: str, value: Any) -> None:
    before = len(router.ledger.records())
    with pytest.raises(RouterError) as err:
        router.complete([{"role": "user", "content": "hi"}], **{name: value})
    assert err.value.http_status == 400 and err.value.param == name
    assert len(router.ledger.records()) == before  # refused before anything ran or was recorded


def test_deeply_nested_content_parts_are_a_bad_request(router: Router) -> None:
    nested = [{"role": "user", "content": [{"type": "text", "text": _deeply_nested(100_000)}]}]
    with pytest.raises(RouterError) as err:
        router.complete(nested)
    assert err.value.http_status == 400
    extra = [{"role": "user", "content": "hi", "name": _deeply_nested(100_000)}]
    with pytest.raises(RouterError):
        router.complete(extra)
