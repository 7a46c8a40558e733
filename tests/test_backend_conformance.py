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
