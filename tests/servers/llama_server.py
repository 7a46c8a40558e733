"""llama.cpp's own OpenAI-compatible server (``python -m llama_cpp.server``, the same arguments), its weights loaded
the way router loads them: in plain CPU buffers (``router.backends.llama_cpp.plain_cpu_buffers`` says why)."""

from __future__ import annotations

import runpy

from router.backends.llama_cpp import plain_cpu_buffers

if __name__ == "__main__":
    with plain_cpu_buffers():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
