"""Which client features work against ``router serve``: each client (the openai Python SDK, LangChain's
ChatOpenAI, the ``llm`` CLI, the openai Node SDK) x each feature (plain chat, streaming, tools, tool history,
json_object, json_schema / parse, logprobs), against a real ``router serve`` on the shipped local models.

    python scripts/client_matrix.py                       # the code in this checkout
    python scripts/client_matrix.py --code /path/to/other  # another checkout's router (PYTHONPATH), same clients

Prints one Markdown table; a cell is ``ok``, ``FAIL (why)`` or ``n/a`` (the client has no such feature). Clients
that are not installed are skipped (the Node SDK: ``npm install openai`` in ``--node-dir``). Requests use
``model: "router"`` (routed) with small ``max_tokens``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers.procs import models_dir, router_serve  # noqa: E402

FEATURES = ["plain chat", "streaming", "tools", "tool history", "json_object", "json_schema / parse", "logprobs"]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HISTORY = ASK + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18, "sky": "sunny"}'},
]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def cell(fn: Callable[[], object]) -> str:
    try:
        result = fn()
    except Exception as exc:  # a client's own exception: the cell says what it was
        text = " ".join(str(exc).split())[:90]
        return f"FAIL ({type(exc).__name__}: {text})"
    return "ok" if result in (True, None) else f"FAIL ({result})"


# -- openai Python SDK ------------------------------------------------------------------------------------------
def openai_sdk(url: str) -> dict[str, str]:
    import openai
    from pydantic import BaseModel

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
    chat = client.chat.completions

    class Person(BaseModel):
        name: str
        age: int

    def plain() -> object:
        return bool(chat.create(model="router", messages=[{"role": "user", "content": "Say hello."}],
                                max_tokens=16).choices[0].message.content)

    def streaming() -> object:
        text = "".join(c.choices[0].delta.content or "" for c in chat.create(
            model="router", messages=[{"role": "user", "content": "Say hello."}], max_tokens=16, stream=True)
            if c.choices)
        return bool(text) or "no text"

    def tools() -> object:
        msg = chat.create(model="router", messages=ASK, tools=[WEATHER], tool_choice="required",
                          max_tokens=40).choices[0].message
        return bool(msg.tool_calls and msg.tool_calls[0].function.name == "get_weather"
                    and json.loads(msg.tool_calls[0].function.arguments)) or "no tool call"

    def history() -> object:
        choice = chat.create(model="router", messages=HISTORY, tools=[WEATHER], max_tokens=40).choices[0]
        return bool(choice.message.content or choice.message.tool_calls) or "empty answer"

    def json_object() -> object:
        text = chat.create(model="router", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                           response_format={"type": "json_object"}, max_tokens=80).choices[0].message.content
        return isinstance(json.loads(text or "null"), dict) or "not a JSON object"

    def parse() -> object:
        parsed = chat.parse(model="router", messages=[{"role": "user", "content": "Invent a person."}],
                            response_format=Person, max_tokens=60).choices[0].message.parsed
        return isinstance(parsed, Person) or "nothing parsed"

    def logprobs() -> object:
        lp = chat.create(model="router", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
                         logprobs=True, top_logprobs=2).choices[0].logprobs
        return bool(lp and lp.content and lp.content[0].top_logprobs) or "no logprobs"

    return dict(zip(FEATURES, map(cell, [plain, streaming, tools, history, json_object, parse, logprobs]),
                    strict=True))


# -- LangChain --------------------------------------------------------------------------------------------------
def langchain(url: str) -> dict[str, str]:
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    def llm(**kw: object) -> ChatOpenAI:
        return ChatOpenAI(model="router", base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300,
                          max_tokens=kw.pop("max_tokens", 60), **kw)

    @tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        return "sunny"

    class Person(BaseModel):
        name: str
        age: int

    def plain() -> object:
        return bool(llm(max_tokens=16).invoke("Say hello.").content)

    def streaming() -> object:
        return bool("".join(str(c.content) for c in llm(max_tokens=16).stream("Say hello."))) or "no text"

    def tools() -> object:
        calls = llm().bind_tools([get_weather], tool_choice="any").invoke("What is the weather in Paris?").tool_calls
        return bool(calls and calls[0]["name"] == "get_weather") or "no tool call"

    def history() -> object:
        msgs = [HumanMessage("What is the weather in Paris?"),
                AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]),
                ToolMessage("sunny, 18 C", tool_call_id="call_1")]
        out = llm().bind_tools([get_weather]).invoke(msgs)
        return bool(out.content or out.tool_calls) or "empty answer"

    def json_mode() -> object:
        out = llm(max_tokens=80).with_structured_output(PERSON | {"title": "Person"}, method="json_mode").invoke(
            "Invent a person. Answer in JSON.")
        return isinstance(out, dict) or f"got {type(out).__name__}"

    def json_schema() -> object:
        outs = [llm().with_structured_output(Person, method=m).invoke("Invent a person.")
                for m in ("json_schema", "function_calling")]
        return all(isinstance(o, Person) for o in outs) or "not a Person"

    def logprobs() -> object:
        lp = llm(max_tokens=8, logprobs=True).invoke("Say hello.").response_metadata.get("logprobs")
        return bool(lp and lp.get("content")) or "no logprobs"

    return dict(zip(FEATURES, map(cell, [plain, streaming, tools, history, json_mode, json_schema, logprobs]),
                    strict=True))


# -- the llm CLI ------------------------------------------------------------------------------------------------
def llm_cli(url: str) -> dict[str, str]:
    exe = shutil.which("llm") or str(Path(sys.executable).parent / "llm")
    home = Path(tempfile.mkdtemp(prefix="llm-home-"))
    (home / "extra-openai-models.yaml").write_text(
        f"- model_id: router\n  model_name: router\n  api_base: {url}/v1\n  api_key_name: router\n"
        "  supports_tools: true\n  supports_schema: true\n")
    env = {**os.environ, "LLM_USER_PATH": str(home)}

    def run(*args: str, allow_error: bool = False) -> str:
        out = subprocess.run([exe, "-m", "router", "--key", "unused", *args], capture_output=True, text=True,
                             env=env, timeout=300)
        if out.returncode != 0 and not allow_error:
            raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode)
        return out.stdout + out.stderr

    def plain() -> object:
        return bool(run("--no-stream", "-o", "max_tokens", "16", "Say hello.").strip())

    def streaming() -> object:
        return bool(run("-o", "max_tokens", "16", "Say hello.").strip())

    chain: list[str] = []

    def tools() -> object:  # llm runs the tool and sends its result back: a call, then tool history
        chain.append(run("-T", "llm_version", "--td", "-o", "max_tokens", "120", "Which version of llm is installed?",
                         allow_error=True))
        return "Tool call: llm_version" in chain[0] or "no tool call"

    def history() -> object:
        if "Tool call: llm_version" not in chain[0]:
            return "no tool round trip"
        if "Chain limit" in chain[0]:  # each result went back and was answered with another call
            return "the model called the tool again after each result until llm's chain limit (5)"
        return True

    def json_object() -> object:
        out = run("--no-stream", "-o", "json_object", "1", "-o", "max_tokens", "80", "Describe Paris as JSON.")
        return isinstance(json.loads(out), dict) or "not a JSON object"

    def schema() -> object:
        out = run("--no-stream", "--schema", "name, age int", "-o", "max_tokens", "60", "Invent a person.")
        value = json.loads(out)
        return (isinstance(value, dict) and isinstance(value.get("age"), int)) or "not the schema"

    results = dict(zip(["plain chat", "streaming", "tools", "tool history", "json_object", "json_schema / parse"],
                       map(cell, [plain, streaming, tools, history, json_object, schema]), strict=True))
    results["logprobs"] = "n/a"  # llm 0.36 offers no logprobs option for chat models
    return results


# -- the openai Node SDK -----------------------------------------------------------------------------------------
def node_sdk(url: str, node_dir: Path) -> dict[str, str] | None:
    if not (node_dir / "node_modules" / "openai").is_dir() or shutil.which("node") is None:
        return None
    out = subprocess.run(["node", str(ROOT / "scripts" / "client_matrix.mjs"), f"{url}/v1"], capture_output=True,
                         text=True, cwd=node_dir, timeout=900, env={**os.environ, "NODE_PATH": str(node_dir /
                                                                                                   "node_modules")})
    if out.returncode != 0:
        return dict.fromkeys(FEATURES, f"FAIL (node: {out.stderr.strip()[-80:]})")
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose router the server runs")
    ap.add_argument("--node-dir", type=Path, default=Path("/tmp/nodeclient"),
                    help="folder with node_modules/openai (npm install openai)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="client-matrix-"))
    models = models_dir(tmp / "models", {})
    for card in ("smollm2-135m.yaml", "gemma3-270m.yaml"):
        shutil.copy(args.code / "models" / card, models / card)
    config = tmp / "config.yaml"
    config.write_text(f"models_dir: {models}\npolicies_dir: {args.code / 'policies'}\n"
                      f"ledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\n")
    env = {"PYTHONPATH": str(args.code.resolve())}
    rows: dict[str, dict[str, str]] = {}
    with router_serve(config, tmp, env=env, timeout=180) as url:
        rows["openai SDK (Python)"] = openai_sdk(url)
        rows["LangChain ChatOpenAI"] = langchain(url)
        rows["llm CLI"] = llm_cli(url)
        node = node_sdk(url, args.node_dir)
        if node is not None:
            rows["openai SDK (Node)"] = node
    print("| client | " + " | ".join(FEATURES) + " |")
    print("|---" * (len(FEATURES) + 1) + "|")
    for client, cells in rows.items():
        print(f"| {client} | " + " | ".join(cells.get(f, "n/a") for f in FEATURES) + " |")


if __name__ == "__main__":
    main()
