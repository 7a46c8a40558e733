"""A local llama.cpp answer's ``completion_tokens`` are the tokens the model generated (what its energy is spent on),
the same on llama-cpp-python's own completion (plain requests) as on the router's token loop (log probabilities,
tools, JSON, sampling parameters): a leading space the answer loses and the stop string that cut it were generated
too. The real shipped GGUF models: SmolLM2 (chat template) and Gemma 3 (completion style, whose answers begin with
a space)."""

from __future__ import annotations

import pytest

from router.backends import GenerationRequest
from router.options import ModelOptions
from router.types import ChatMessage

COUNT = [ChatMessage(role="user", content="Count from 1 to 50")]
LOGPROBS = ModelOptions(top_logprobs=0)  # logprobs=True: the token loop


@pytest.fixture(params=["small_backend", "large_backend"])
def backend(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


@pytest.mark.slow
def test_an_answer_cut_at_max_tokens_counts_max_tokens_on_both_paths(backend) -> None:
    for options in (ModelOptions(), LOGPROBS):
        request = GenerationRequest(COUNT, max_tokens=20, temperature=0.0, options=options)
        events = list(backend.stream(request))
        assert events[-1].finish_reason == "length", events[-1]
        assert events[-1].completion_tokens == 20, (options.plain, "".join(e.text for e in events))


@pytest.mark.slow
def test_a_stop_cut_answer_counts_the_same_tokens_on_both_paths(backend) -> None:
    """The same greedy answer, cut at the same stop string, on both paths; the stop string's tokens count. (Both
    models' greedy counts hold " 3" early: SmolLM2 "1. 1\n2. 2\n3. 3", Gemma 3 "1 = 0, 2 = 3".)"""
    plain, looped = (backend.generate(GenerationRequest(COUNT, max_tokens=20, temperature=0.0, stop=[" 3"],
                                                        options=options))
                     for options in (ModelOptions(), LOGPROBS))
    assert plain.finish_reason == "stop", plain.text
    assert (plain.text, plain.finish_reason) == (looped.text, looped.finish_reason)
    assert plain.completion_tokens == looped.completion_tokens, plain.text
    assert plain.completion_tokens > backend.count_tokens(plain.text.strip())
