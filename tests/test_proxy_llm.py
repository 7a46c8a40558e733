"""One short end-to-end run of the proxy with a real local LLM (SmolLM2-135M via llama.cpp), streamed."""

from __future__ import annotations

import shutil
from pathlib import Path

import openai
import pytest
from servers.procs import ROOT, models_dir, router_serve


@pytest.mark.slow
def test_stream_from_the_small_local_llm(tmp_path: Path) -> None:
    models = models_dir(tmp_path / "models", {}, specialist=False)
    shutil.copy(ROOT / "models" / "smollm2-135m.yaml", models / "smollm2-135m.yaml")
    config = tmp_path / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {ROOT / 'policies'}\n"
                      f"ledger_url: sqlite:///{tmp_path / 'ledger.sqlite3'}\n")
    with router_serve(config, tmp_path) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        chunks = list(client.chat.completions.create(
            model="smollm2-135m", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, stream=True,
            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 8
    routing = chunks[-1].model_extra["routing"]
    assert routing["model"] == "smollm2-135m" and routing["tier"] == "small" and routing["energy_j"] > 0
