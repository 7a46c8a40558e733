"""Every backend passes the same conformance suite (tests/conformance/backend_suite.py)."""

from __future__ import annotations

import pytest
from conformance.backend_suite import check_backend

from router.backends import FaultInjectingBackend, create_backend

REVIEW = "Is this review positive or negative? 'a gorgeous, witty film'"


def test_onnx_specialist_conforms(specialist_backend):
    check_backend(specialist_backend, REVIEW)


def test_fault_double_passthrough_conforms(specialist_backend):
    check_backend(FaultInjectingBackend(specialist_backend), REVIEW)


@pytest.mark.slow
def test_llama_cpp_chat_conforms(small_backend):
    check_backend(small_backend, "Say hello in one word.")


@pytest.mark.slow
def test_llama_cpp_completion_style_conforms(large_backend):
    check_backend(large_backend, "What is the capital of France?")


@pytest.mark.slow
def test_openai_http_conforms(http_card):
    backend = create_backend(http_card)
    try:
        check_backend(backend, "Say hello in one word.")
        assert backend.local is False
    finally:
        backend.close()


def test_llama_cpp_loads_weights_in_plain_cpu_buffers(small_backend):
    """AMX repacking (an extra buffer type) faults on VMs that list AMX; the load switches it off, only for itself."""
    import llama_cpp.llama_cpp as llama_c

    assert small_backend.llm.model_params.use_extra_bufts is False
    assert llama_c.llama_model_default_params().use_extra_bufts is True


@pytest.mark.slow
def test_the_llama_cpp_token_loop_ends_at_a_full_context(cards):
    """A prompt that fits but leaves less room than the card's ``default_max_tokens``: the token loop (tools,
    JSON, log probabilities, sampling parameters) ends the answer with ``length`` where the context ends, as
    llama-cpp-python's own chat completion does, instead of failing the call (a 502, towards a cooldown), and says
    the context was full: a JSON answer cut there is blamed on the context, not on max_tokens. SmolLM2 with a
    256-token context, so that filling it takes a moment."""
    from router._request import check_params
    from router.backends import GenerationRequest
    from router.options import ModelOptions, output_problem
    from router.types import ChatMessage

    card = cards["smollm2-135m"]
    card = card.model_copy(update={"backend": card.backend.model_copy(update={"n_ctx": 256})})
    backend = create_backend(card)
    try:
        llm = backend.llm
        n_ctx = llm.n_ctx()

        def request(words: int, options: ModelOptions | None = None,
                    max_tokens: int | None = None) -> GenerationRequest:
            text = "Count on from here: " + " ".join(str(i) for i in range(words))
            return GenerationRequest([ChatMessage(role="user", content=text)], temperature=0.0, max_tokens=max_tokens,
                                     options=options or ModelOptions(passthrough={"top_p": 0.9}))

        def prompt_tokens(words: int) -> int:
            prompt = backend._chat_prompt(request(words).messages).encode()
            return len(llm.tokenize(prompt, add_bos=False, special=True))

        fits, too_long = 0, n_ctx  # the most words whose prompt leaves 3 tokens of room, by bisection
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            fits, too_long = (middle, too_long) if prompt_tokens(middle) <= n_ctx - 3 else (fits, middle)
        assert n_ctx == 256 and n_ctx - prompt_tokens(fits) < backend.spec.default_max_tokens
        gen = backend.generate(request(fits))
        assert gen.finish_reason == "length" and gen.prompt_tokens + gen.completion_tokens <= n_ctx
        assert gen.context_full
        person = check_params(response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {
            "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}}})["options"]
        for words, max_tokens, cut in ((fits, None, "because the model's context is full"),
                                       (3, 2, "at max_tokens (raise it)")):
            gen = backend.generate(request(words, person, max_tokens))
            assert gen.finish_reason == "length" and gen.context_full == (max_tokens is None)
            problem = output_problem(person, gen.text, gen.tool_calls, gen.finish_reason, gen.context_full)
            assert problem is not None and problem.startswith(f"the answer was cut {cut}"), problem
    finally:
        backend.close()
