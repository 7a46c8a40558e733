"""Router.complete() end to end on the real shipped models, with a real SQLite ledger."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import pytest
from openai.types.chat import ChatCompletion as OpenAIChatCompletion
from openai.types.chat import ChatCompletionChunk as OpenAIChunk

from router import (
    BackendError,
    BadRequestError,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    ConfigError,
    ContextLengthError,
    DeadlineExceededError,
    Router,
    RouterClosedError,
    RouterConfig,
    UnknownModelError,
)
from router.backends import FaultInjectingBackend
from router.ledger import SQLiteLedger, open_ledger

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film'"


@pytest.fixture
def router(ledger_url, cards, specialist_backend):
    r = Router(RouterConfig.load(ledger_url=ledger_url), cards=cards,
               backends={"sentiment-onnx": specialist_backend})
    yield r
    r.ledger.close()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_sentiment_goes_to_specialist_and_reads_like_openai(router):
    resp = router.complete(messages=user(REVIEW))
    assert resp.choices[0].message.content == "positive"
    assert resp.routing.model == "sentiment-onnx" and resp.routing.tier == "specialist"
    assert resp.routing.energy_source.startswith(("measured:", "estimated:"))
    assert resp.routing.energy_j > 0
    assert resp.routing.reason
    # code written for the OpenAI client reads it unchanged
    parsed = OpenAIChatCompletion.model_validate(resp.model_dump())
    assert parsed.choices[0].message.content == "positive"
    assert parsed.usage is not None and parsed.usage.total_tokens == resp.usage.total_tokens


def test_negative_review(router):
    resp = router.complete(messages=user("Sentiment: a tedious, lifeless and badly acted mess"))
    assert resp.choices[0].message.content == "negative"


def test_every_request_is_in_the_ledger(router):
    ids = [router.complete(messages=user(REVIEW)).id for _ in range(3)]
    records = router.ledger.records()
    assert [r.request_id for r in records] == ids
    rec = records[0]
    assert rec.model == "sentiment-onnx" and rec.outcome == "ok" and rec.energy_j > 0
    assert rec.energy_source.startswith("estimated:") or rec.energy_source.startswith("measured:")
    assert rec.latency_ms > 0 and rec.policy == router.policy_name


def test_stream_yields_openai_chunks_with_routing_last(router):
    chunks = list(router.complete(messages=user(REVIEW), stream=True))
    for c in chunks:
        OpenAIChunk.model_validate(c.model_dump())
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "positive"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].routing is not None and chunks[-1].routing.model == "sentiment-onnx"
    assert chunks[-1].usage is not None
    assert len({c.id for c in chunks}) == 1


def test_acomplete_and_async_stream(router):
    async def run():
        resp = await router.acomplete(messages=user(REVIEW))
        chunks = [c async for c in await router.acomplete(messages=user(REVIEW), stream=True)]
        return resp, chunks

    resp, chunks = asyncio.run(run())
    assert resp.choices[0].message.content == "positive"
    assert chunks[-1].routing.model == "sentiment-onnx"


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ([], "empty"),
        (None, "empty"),
        ("hello", "list"),
        ([{"role": "wizard", "content": "hi"}], "role"),
        ([{"role": "user", "content": 42}], "must be a string"),
        ([{"role": "user"}], "must be a string"),
        ([{"role": "system", "content": "be nice"}], "no user message"),
        ([{"role": "user", "content": "   "}], "no user message"),
        (["not an object"], "object"),
        # message objects are checked like dicts (a ChatMessage used to skip the checks: KeyError 'function')
        ([{"role": "user", "content": "hi"}, ChatMessage(role="assistant", content=None, tool_calls=[{"id": "x"}])],
         "messages[1].tool_calls[0] must be"),
        ([ChatMessage(role="tool", content="x"), {"role": "user", "content": "hi"}], "tool_call_id is required"),
        # a lone surrogate (JSON's "\ud800") used to fail on every model in turn, each a backend failure
        ([{"role": "user", "content": "Is this review positive? 'bad \ud800 film'"}], "lone surrogate (\\ud800"),
    ],
)
def test_bad_messages_raise_typed_errors(router, messages, needle):
    with pytest.raises(BadRequestError) as err:
        router.complete(messages=messages)
    assert needle in str(err.value)
    assert err.value.http_status == 400
    assert router.ledger.records() == []  # nothing half-written


def test_messages_given_as_any_iterable_are_taken_as_the_openai_sdk_takes_them(router):
    """The openai SDK types ``messages`` as ``Iterable[ChatCompletionMessageParam]``: a generator of messages was
    refused ("must be a list"), sync, async and streaming alike. It is read once, as the list it yields."""
    def turns():
        yield {"role": "system", "content": "Answer in one word."}
        yield {"role": "user", "content": REVIEW}

    assert router.complete(messages=turns()).choices[0].message.content == "positive"
    assert "".join(c.choices[0].delta.content or "" for c in router.complete(messages=turns(), stream=True)) \
        == "positive"
    assert [m.role for m in router.prepare(iter(user(REVIEW))).messages] == ["user"]
    assert [m.role for m in router.prepare(map(dict, user(REVIEW))).messages] == ["user"]

    async def run():
        answer = await router.acomplete(messages=turns())
        chunks = [c async for c in await router.acomplete(messages=turns(), stream=True)]
        return answer, chunks

    answer, chunks = asyncio.run(run())
    assert answer.choices[0].message.content == "positive" and chunks[-1].routing.model == "sentiment-onnx"
    assert len(router.ledger.records()) == 4


@pytest.mark.parametrize(
    ("messages", "needle"),
    [
        ({"role": "user", "content": "hi"}, "got one message on its own"),  # iterated, a dict gives its keys
        (ChatMessage(role="user", content="hi"), "got one message on its own"),  # and a model its fields
        (b"hello", "got bytes"),
        (42, "got an integer"),
        (iter([]), "empty"),
        (({"role": "user", "content": "hi"} for _ in iter(int, 1)), "more than 10,000 messages"),  # never ends
        ((m for m in ["not an object"]), "messages[0] must be an object"),
    ],
)
def test_messages_that_are_not_an_iterable_of_messages_are_typed_errors(router, messages, needle):
    with pytest.raises(BadRequestError, match=re.escape(needle)) as err:
        router.prepare(messages)
    assert err.value.param.startswith("messages")


def test_an_answers_message_goes_back_into_the_history(router):
    """The OpenAI tool-calling guide's pattern, ``messages.append(completion.choices[0].message)``, with this
    library's answer and with the openai SDK's message objects (tool calls included)."""
    first = router.complete(messages=user(REVIEW))
    history = [*user(REVIEW), first.choices[0].message, {"role": "user", "content": "And this one? 'dull'"}]
    assert router.prepare(history).messages[1].openai() == {"role": "assistant", "content": "positive"}
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
    sdk_turn = OpenAIChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
    }).choices[0].message
    history = [*user("look x up"), sdk_turn, {"role": "tool", "tool_call_id": "call_1", "content": "found"}]
    checked = router.prepare(history, tools=[{"type": "function", "function": {"name": "lookup"}}]).messages
    assert checked[1].tool_calls == [call] and checked[2].tool_call_id == "call_1"


def test_a_history_cut_inside_a_tool_exchange_is_a_bad_request_as_openai_answers_it(router):
    """OpenAI answers 400 to a tool message that answers no call of the assistant message before it, and to calls
    left unanswered before the conversation goes on (an app that trims old turns cuts such an exchange in two);
    those histories went to a local model as they were. Whole exchanges, parallel calls included, still pass."""
    call = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    other = {"id": "call_2", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 2}'}}
    calling = {"role": "assistant", "content": None, "tool_calls": [call, other]}
    answer_1 = {"role": "tool", "tool_call_id": "call_1", "content": "found"}
    answer_2 = {"role": "tool", "tool_call_id": "call_2", "content": "found too"}
    for history, param, needle in (
            ([*user("look x up"), answer_1], "messages[1].role", "keep that assistant message"),
            ([*user("look x up"), calling, {**answer_1, "tool_call_id": "call_9"}], "messages[2].tool_call_id",
             "'call_9' is not the id of a call"),
            ([*user("look x up"), calling, answer_1, *user("and?")], "messages[3]", "(call_2)"),
            ([*user("look x up"), calling, answer_1, answer_2, *user("and?"), answer_1], "messages[5].role",
             "must answer")):
        with pytest.raises(BadRequestError, match=re.escape(needle)) as err:
            router.prepare(history)
        assert err.value.param == param and err.value.http_status == 400, history
    assert router.ledger.records() == []  # refused before any model
    whole = [*user("look x up"), calling, answer_2, answer_1, *user("and y?"), calling]  # the last: called just now
    assert [m.role for m in router.prepare(whole).messages] == ["user", "assistant", "tool", "tool", "user",
                                                                "assistant"]


def test_wrong_objects_in_the_public_constructors_and_calls_are_typed_errors(router, ledger_url):
    """Raw pydantic ValidationError, AttributeError ('str' has no 'models_dir') and an InternalError used to leave."""
    with pytest.raises(ConfigError, match=r"RouterConfig\(\.\.\.\): field `foo`: Extra inputs"):
        RouterConfig(foo=1)
    with pytest.raises(ConfigError, match="field `deadline_s`"):
        RouterConfig(deadline_s=-1)
    with pytest.raises(ConfigError, match=r"Router\(policy='eco'\)"):
        Router("eco")  # type: ignore[arg-type]
    with pytest.raises(BadRequestError, match="send\\(\\) takes what prepare\\(\\) returned"):
        router.send(None)  # type: ignore[arg-type]
    with pytest.raises(BadRequestError, match="`stream` must be True or False"):
        router.complete(user("hi"), stream="no")  # type: ignore[arg-type]
    with pytest.raises(BadRequestError, match="`modalities` must be a list"):
        router.prepare(user("hi"), modalities="text")
    with pytest.raises(BadRequestError, match="asend"):
        asyncio.run(router.asend({"messages": user("hi")}))  # type: ignore[arg-type]


def test_stream_given_to_prepare_says_it_belongs_to_send(router):
    """``prepare(..., stream=True)`` was refused as an "unknown parameter(s): stream", though stream is OpenAI's own
    and the README's prepare/send example streams: the error now says where it goes."""
    for prepare in (router.prepare, lambda *a, **k: asyncio.run(router.aprepare(*a, **k))):
        with pytest.raises(BadRequestError, match=r"send\(prepared, stream=True\)") as refused:
            prepare(user(REVIEW), stream=True)
        assert refused.value.param == "stream"
    assert router.complete(user(REVIEW), stream=False).choices[0].message.content == "positive"


def test_the_openai_sdks_client_side_arguments_work_as_the_sdk_applies_them(router):
    """``extra_body`` (the router's own fields come this way in SDK-shaped code), ``timeout`` and ``extra_headers``
    used to be accepted and dropped without a word."""
    assert router.prepare(user(REVIEW), extra_body={"model": "smollm2-135m"}).decision.model == "smollm2-135m"
    with pytest.raises(BadRequestError, match="`policy` is given both as an argument and in extra_body"):
        router.prepare(user(REVIEW), policy="eco", extra_body={"policy": "quality"})
    with pytest.raises(DeadlineExceededError):
        router.complete(user(REVIEW), timeout=1e-9)
    assert router.prepare(user(REVIEW), extra_headers={"X-Request-Id": "mine-1"}).request_id == "mine-1"


def test_a_prepared_request_is_sent_once_so_each_response_has_its_own_ledger_id(router):
    """A PreparedRequest sent twice was answered twice under one id: two responses and two ledger records with one
    request id (feedback scores "the" response by it). The second send, sync or async, streaming or not, is now a
    BadRequestError naming the request; preparing again gives a new id."""
    first = router.prepare(user(REVIEW))
    answer = router.send(first)
    sends = [lambda p: router.send(p), lambda p: router.send(p, stream=True),
             lambda p: asyncio.run(router.asend(p)), lambda p: asyncio.run(router.asend(p, stream=True))]
    for send in sends:
        with pytest.raises(BadRequestError, match=f"prepared request '{answer.id}' was already sent") as err:
            send(first)
        assert err.value.code == "request_already_sent" and err.value.http_status == 400
    streamed = router.prepare(user(REVIEW))
    chunks = list(router.send(streamed, stream=True))
    for send in sends:
        with pytest.raises(BadRequestError, match="already sent"):
            send(streamed)

    async def twice_async():
        prepared = await router.aprepare(user(REVIEW))
        answer = await router.asend(prepared)
        with pytest.raises(BadRequestError, match="already sent"):
            await router.asend(prepared)
        return answer

    again = router.send(router.prepare(user(REVIEW)))
    async_answer = asyncio.run(twice_async())
    ids = [r.request_id for r in router.ledger.records()]
    assert ids == [answer.id, chunks[0].id, again.id, async_answer.id] and len(set(ids)) == 4


def test_unknown_model_and_param(router):
    with pytest.raises(UnknownModelError, match="unknown model 'gpt-17'"):
        router.complete(messages=user("hi"), model="gpt-17")
    with pytest.raises(BadRequestError, match="unknown parameter"):
        router.complete(messages=user("hi"), temprature=0.2)
    with pytest.raises(BadRequestError, match="max_tokens"):
        router.complete(messages=user("hi"), max_tokens=0)


def test_oversize_prompt_is_rejected(ledger_url, cards, specialist_backend):
    r = Router(RouterConfig.load(ledger_url=ledger_url, max_prompt_chars=1000), cards=cards,
               backends={"sentiment-onnx": specialist_backend})
    with pytest.raises(BadRequestError, match="at most 1,000"):
        r.complete(messages=user("x" * 1001))


def test_prompt_over_context_of_pinned_model(router):
    long_text = "word " * 5000
    with pytest.raises(ContextLengthError, match="smollm2-135m holds 2048"):
        router.complete(messages=user(long_text), model="smollm2-135m")
    # the context check happens before any model call: nothing was charged
    assert router.ledger.records() == []


def test_a_prompt_the_chat_template_pushes_past_the_context_is_refused_before_the_model_runs(router):
    """SmolLM2 reads its chat template and default system prompt (~26 tokens) around the messages: the context
    check counted only the messages, so this prompt passed it, llama.cpp failed it (a failed attempt that counts
    towards the model's cooldown) and the error named only the fallback's context."""
    with pytest.raises(ContextLengthError, match="smollm2-135m holds 2048"):
        router.complete(messages=user("apple " * 2030), model="smollm2-135m", max_tokens=4)
    assert router.ledger.records() == []


def test_usage_counts_the_prompt_a_local_chat_model_reads_whichever_way_it_is_run(router):
    """A sampling parameter (``seed``) runs SmolLM2 through the router's own token loop instead of llama.cpp's
    chat completion; both read the same templated prompt, so both must report the same ``prompt_tokens`` (the
    chat completion path reported the messages' tokens alone: 6 instead of 32 for "Say hi")."""
    plain = router.complete(messages=user("Say hi"), model="smollm2-135m", max_tokens=1)
    seeded = router.complete(messages=user("Say hi"), model="smollm2-135m", max_tokens=1, seed=1)
    assert plain.usage.prompt_tokens == seeded.usage.prompt_tokens > 20  # the default system prompt is counted
    assert [r.input_tokens for r in router.ledger.records()] == [plain.usage.prompt_tokens] * 2


def test_max_tokens_beyond_every_context_is_refused_when_deciding_and_says_so(router):
    """``max_tokens=100000`` used to pass ``prepare`` (the decision assumed 128 tokens to generate) and fail at
    send with "shorten the messages"."""
    for max_tokens in (100_000, 10**400, 10**5000):  # JSON's integers have no bound, nor Python's
        with pytest.raises(ContextLengthError, match="lower max_tokens to at most") as err:
            router.prepare(messages=user("Say hi"), max_tokens=max_tokens)
        assert err.value.param == "max_tokens"  # it was blamed on messages, which fit
    with pytest.raises(ContextLengthError, match="shorten the messages") as err:
        router.prepare(messages=user("word " * 40_000), max_tokens=100_000)
    assert err.value.param == "messages"  # no max_tokens would let this prompt in
    with pytest.raises(ContextLengthError, match=r"max_tokens asks for 2000 more.*; lower max_tokens$"):
        router.complete(messages=user("Say hi, " * 60), model="smollm2-135m", max_tokens=2000)
    assert router.ledger.records() == []


def test_two_different_token_limits_are_refused_before_any_model_runs(router):
    """``max_tokens`` and ``max_completion_tokens`` both given and different: one of them used to be dropped
    silently (the answer ran to max_completion_tokens whatever max_tokens said)."""
    with pytest.raises(BadRequestError, match="both set, to different values") as err:
        router.complete(messages=user("Say hi"), model="smollm2-135m", max_tokens=2, max_completion_tokens=40)
    assert err.value.param == "max_tokens"
    assert router.ledger.records() == []


def test_a_token_limit_given_as_max_completion_tokens_is_named_so_in_context_errors(router):
    """OpenAI's newer name for ``max_tokens``: the refusal used to name ``max_tokens``, which the caller never
    sent, as its ``param`` and in its advice."""
    with pytest.raises(ContextLengthError, match="lower max_completion_tokens to at most") as err:
        router.complete(messages=user("Say hi"), max_completion_tokens=100_000)  # refused when deciding
    assert err.value.param == "max_completion_tokens" and "max_tokens" not in err.value.message
    # every model tried (the pin's fallbacks too) refuses it when called: one error for all of them
    with pytest.raises(ContextLengthError, match=r"max_completion_tokens asks for 2000 more.*; lower "
                                                 r"max_completion_tokens$") as err:
        router.complete(messages=user("Say hi, " * 60), model="smollm2-135m", max_completion_tokens=2000)
    assert err.value.param == "max_completion_tokens" and "max_tokens" not in err.value.message
    assert router.ledger.records() == []


def test_a_prompt_that_fits_is_routed_even_when_four_characters_a_token_says_it_does_not(router):
    """``" international" * 560`` is 7,854 characters but 568 SmolLM2 tokens: the decision used to estimate 1,964
    (characters / 4) plus 128 to generate, leave out every 2,048-token model and refuse what a pin answered."""
    prepared = router.prepare(messages=user("Count the words:" + " international" * 560), max_tokens=2)
    assert prepared.decision.model in ("smollm2-135m", "gemma3-270m")


def test_thousands_of_turns_are_refused_before_any_tokenizer_runs(router):
    """15,000 two-character turns took seconds of tokenizing on the event loop before the 400. As many as
    `max_messages` allows (10,000) are refused on the context floor; more, before each message is checked."""
    with pytest.raises(ContextLengthError, match="at least"):
        router.prepare(messages=user("hi") * 10_000)
    with pytest.raises(BadRequestError, match="15,000 messages; this router accepts at most 10,000"):
        router.prepare(messages=user("hi") * 15_000)
    assert set(router.loaded_backends()) <= {"sentiment-onnx"}  # no LLM was even loaded to count tokens


def test_backend_failure_without_fallback_leaves_error_record(ledger_url, cards, specialist_backend):
    only_specialist = {"sentiment-onnx": cards["sentiment-onnx"]}
    broken = FaultInjectingBackend(specialist_backend, fail_on_call=True)
    r = Router(RouterConfig.load(ledger_url=ledger_url), cards=only_specialist,
               backends={"sentiment-onnx": broken})
    with pytest.raises(BackendError, match="injected"):
        r.complete(messages=user(REVIEW))
    (rec,) = SQLiteLedger.from_url(ledger_url).records()
    assert rec.outcome == "error" and "injected" in (rec.error or "")


def test_stream_failure_leaves_error_record(ledger_url, cards, specialist_backend):
    only_specialist = {"sentiment-onnx": cards["sentiment-onnx"]}
    broken = FaultInjectingBackend(specialist_backend, fail_after_events=0)
    r = Router(RouterConfig.load(ledger_url=ledger_url), cards=only_specialist,
               backends={"sentiment-onnx": broken})
    with pytest.raises(BackendError):
        list(r.complete(messages=user(REVIEW), stream=True))
    (rec,) = r.ledger.records()
    assert rec.outcome == "error"


@pytest.mark.slow
def test_mid_stream_failure_of_an_llm_records_what_was_produced(ledger_url, cards, small_backend):
    broken = FaultInjectingBackend(small_backend, fail_after_events=3)
    r = Router(RouterConfig.load(ledger_url=ledger_url), cards=cards, backends={"smollm2-135m": broken})
    got = []
    with pytest.raises(BackendError, match="after 3 events"):
        for chunk in r.complete(messages=user("Tell me about the sea."), model="smollm2-135m", stream=True):
            got.append(chunk.choices[0].delta.content or "")
    (rec,) = r.ledger.records()
    assert rec.outcome == "error" and rec.output_tokens > 0 and rec.energy_j > 0
    assert "".join(got).strip()


@pytest.mark.slow
def test_specialist_failure_falls_back_to_an_llm(ledger_url, cards, specialist_backend, small_backend):
    broken = FaultInjectingBackend(specialist_backend, fail_on_call=True)
    r = Router(RouterConfig.load(ledger_url=ledger_url), cards=cards,
               backends={"sentiment-onnx": broken, "smollm2-135m": small_backend})
    resp = r.complete(messages=user(REVIEW), max_tokens=8)
    assert resp.routing.model != "sentiment-onnx"
    assert [a.outcome for a in resp.routing.attempts] == ["error", "ok"]
    outcomes = [rec.outcome for rec in r.ledger.records()]
    assert outcomes == ["error", "ok"]


@pytest.mark.slow
def test_general_chat_goes_to_a_local_llm(router):
    resp = router.complete(messages=user("What is the capital of France?"), max_tokens=16)
    assert resp.routing.tier in ("small", "large")
    assert resp.choices[0].message.content.strip()
    assert resp.usage.completion_tokens > 0
    assert resp.routing.energy_j > 0


def test_a_keys_policy_comes_from_the_keys_configuration(ledger_url, cards, specialist_backend, tmp_path):
    """One mapping from a key to its policy: the config's `keys`, for the library as for the proxy; a policy file
    that tries to switch a key's policy is refused with the fix."""
    import hashlib

    from router.errors import ConfigError
    from router.policy.loader import load_policy

    config = RouterConfig.load(ledger_url=ledger_url, keys=[
        {"name": "team", "sha256": hashlib.sha256(b"sk-team").hexdigest(), "policy": "eco"}])
    r = Router(config, cards=cards, backends={"sentiment-onnx": specialist_backend})
    assert r.complete(messages=user(REVIEW), api_key="sk-team").routing.policy == "eco"
    assert r.complete(messages=user(REVIEW), api_key="sk-other").routing.policy == r.policy_name
    assert r.complete(messages=user(REVIEW), api_key="sk-team", policy="quality").routing.policy == "quality"
    r.close()
    bad = tmp_path / "p.yaml"
    bad.write_text("name: p\naccuracy: {min_accuracy: 0.5}\nkeys: [{key_hash: key-0123456789abcdef, policy: eco}]\n")
    with pytest.raises(ConfigError, match="keys.*not in a policy file"):
        load_policy(bad)


def test_a_key_whose_policy_does_not_exist_stops_the_router_at_start(ledger_url, cards):
    """It used to start and then refuse every request of that key with a 400."""
    import hashlib

    from router.errors import ConfigError

    config = RouterConfig.load(ledger_url=ledger_url, keys=[
        {"name": "team", "sha256": hashlib.sha256(b"sk-team").hexdigest(), "policy": "ecco"}])
    with pytest.raises(ConfigError, match=r"API key 'team' has policy 'ecco', which is not a policy here "
                                          r"\(balanced, eco, quality.*\); fix the name"):
        Router(config, cards=cards)


def test_a_remote_model_streams_from_one_event_loop_after_another(ledger_url, http_card):
    """Each ``asyncio.run`` has its own loop, and a connection opened on one cannot be used from the next."""
    with Router(RouterConfig.load(ledger_url=ledger_url), cards={http_card.name: http_card}) as router:
        async def ask() -> tuple[list[ChatCompletionChunk], ChatCompletion]:
            stream = await router.acomplete(user("Say hi."), model=http_card.name, max_tokens=3, stream=True)
            chunks = [c async for c in stream]
            return chunks, await router.acomplete(user("Say hi."), model=http_card.name, max_tokens=3)

        for _ in range(2):
            chunks, resp = asyncio.run(ask())
            assert chunks[-1].routing.model == http_card.name and chunks[-1].choices[0].finish_reason
            assert resp.routing.model == http_card.name and resp.choices[0].message.content


def test_local_sampling_follows_the_request_seed(router):
    """At a temperature above 0 a local model draws its tokens at random: the same seed and prompt give the same
    answer, and without a seed each request draws afresh (top_p alone takes the same token loop as seed)."""
    def draw(**params: float) -> str:
        resp = router.complete(user("Write a random word."), model="smollm2-135m", max_tokens=6, temperature=1.5,
                               **params)
        return resp.choices[0].message.content

    assert draw(seed=7) == draw(seed=7)
    assert len({draw(top_p=0.99) for _ in range(4)}) > 1


@pytest.mark.slow
def test_close_lets_a_call_running_in_another_thread_write_its_record_then_refuses_calls(ledger_url, cards):
    """close() from the main thread while a local model streams in another: the call ends and its record is in
    the ledger (read through a new ledger on the same file); every call after close() is a RouterClosedError."""
    r = Router(RouterConfig.load(ledger_url=ledger_url), cards=cards)
    streaming = threading.Event()
    got: list[str] = []
    failed: list[BaseException] = []

    def ask() -> None:
        try:
            for chunk in r.complete(user("Tell me about the sea."), model="smollm2-135m", stream=True, max_tokens=24,
                                    request_id="in-flight"):
                got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
                streaming.set()
        except BaseException as exc:  # the assertion below shows it
            failed.append(exc)
        finally:
            streaming.set()

    thread = threading.Thread(target=ask)
    thread.start()
    assert streaming.wait(120)
    r.close()
    thread.join(60)
    assert not failed and "".join(got).strip()
    ledger = open_ledger(ledger_url)
    try:
        (rec,) = ledger.records()
    finally:
        ledger.close()
    assert rec.request_id == "in-flight" and rec.outcome == "ok" and rec.output_tokens > 0

    with pytest.raises(RouterClosedError, match="closed") as err:
        r.complete(user("Tell me about the sea."), max_tokens=4)
    assert isinstance(err.value, RuntimeError) and err.value.http_status == 503
    with pytest.raises(RouterClosedError):
        r.backend("smollm2-135m")
    with pytest.raises(RouterClosedError):
        asyncio.run(r.acomplete(user(REVIEW)))
    r.close()  # again: nothing left to close


def test_warm_up_after_close_is_refused_like_every_call(ledger_url, cards):
    """warm_up() on a closed Router used to return as if done, after logging for every local model that it could
    not be warmed up and that "its requests will fail over to other models"."""
    r = Router(RouterConfig.load(ledger_url=ledger_url), cards=cards)
    r.close()
    with pytest.raises(RouterClosedError, match="create a new Router"):
        r.warm_up()


def test_close_cancels_the_calls_still_running_after_its_wait_and_says_how_many_are_left():
    from router._closing import InFlight
    from router.backends.base import CancelFlag

    calls, cancel = InFlight(), CancelFlag()
    with calls.running(cancel):
        assert calls.drain(wait_s=0) == 1 and cancel.is_set()  # a model stops at its next token, and records so
        with pytest.raises(RouterClosedError):
            calls.running()
    assert calls.drain(wait_s=0) == 0


def test_close_is_woken_by_the_last_running_call_leaving_and_cancels_nothing():
    from router._closing import InFlight
    from router.backends.base import CancelFlag

    calls, cancel, entered = InFlight(), CancelFlag(), threading.Event()

    def call() -> None:
        with calls.running(cancel):
            entered.set()
            while not calls.closing:  # leaves once drain() has begun waiting for it
                time.sleep(0.001)

    thread = threading.Thread(target=call)
    thread.start()
    assert entered.wait(60)
    assert calls.drain(wait_s=60) == 0 and not cancel.is_set()
    assert calls._idle.is_set()  # set by the call as it left, which is what woke drain() (it sets it only when idle)
    thread.join(60)
