"""What the README and docs/ show is what the code has: every setting they name (`proxy.shutdown_timeout_s`, a
policy's `keys: [{key_hash, ...}]`) is a field of the config, policy or card schema, with the default they state;
every YAML example loads with the real loader (``RouterConfig.load``, ``load_policy``, ``load_card``); every
Python example compiles and uses names the package has; every `router/...py` file, `router.x.y` name and
`Class.attribute` exists. A user copying an example gets a working one, not "Extra inputs are not permitted"."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from router import Router
from router.cards import ModelCard, load_card
from router.config import RouterConfig
from router.errors import ConfigError
from router.policy.loader import load_policy
from router.policy.schema import Policy

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+)`")
REMOTE_CARD = ROOT / "models" / "examples" / "remote-large.yaml"
"""A card fragment in the docs (``capabilities: [...]`` of `models/my-remote.yaml`) is checked on this card."""

# ---------------------------------------------------------------------------------------------------------------
# reading the schemas


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The settings classes a field holds: ``X``, ``X | None``, ``list[X]``, ``dict[str, X]``."""
    found, stack = [], [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            found.append(a)
        else:
            stack += get_args(a)
    return found


def schema_field(root: type[BaseModel], path: list[str]) -> FieldInfo | None:
    """The field ``a.b.c`` (``keys[].lock_policy`` too) names under ``root``, None when there is none."""
    models: list[type[BaseModel]] = [root]
    info = None
    for part in path:
        part = part.removesuffix("[]")
        info = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if info is None:
            return None
        models = _models_in(info.annotation)
    return info


def root_for(doc: Path) -> type[BaseModel]:
    """What a setting named in ``doc`` belongs to: a policy's in docs/policies.md, the config's elsewhere."""
    return Policy if doc.name == "policies.md" else RouterConfig


def validate_setting(root: type[BaseModel], path: list[str], value: Any) -> str | None:
    """Why ``path: value`` is refused by ``root`` (None when accepted), set on an otherwise default one."""
    nested: Any = value
    for part in reversed(path):
        nested = {part.removesuffix("[]"): [nested] if part.endswith("[]") else nested}
    base: dict[str, Any] = {"name": "doc", "accuracy": {"min_accuracy": 0.5}} if root is Policy else {}
    try:
        root.model_validate({**base, **nested})
    except Exception as exc:  # ConfigError from RouterConfig, ValidationError from Policy
        return str(exc).splitlines()[0][:300]
    return None


_UNITS = {"MiB": 1 << 20, "GiB": 1 << 30, "KiB": 1 << 10}
DEFAULT = re.compile(r"^`,?\s*\(?default:?\s+(true|false|\d[\d,]*(?:\.\d+)?)\s*(MiB|GiB|KiB)?")


def default_problem(name: str, info: FieldInfo, after: str) -> str | None:
    """A default the text right after `name` states (``(default 25 s)``) that is not the field's."""
    stated = DEFAULT.match(after)
    if not stated or info.default is PydanticUndefined:
        return None
    word, unit = stated.groups()
    value: Any = word == "true" if word in ("true", "false") else float(word.replace(",", "")) * _UNITS.get(unit, 1)
    return None if value == info.default else f"`{name}`: the docs say default {word}, the code has {info.default!r}"


# ---------------------------------------------------------------------------------------------------------------
# (1) settings named in the text


def setting_problems(doc: Path) -> list[str]:
    """Dotted settings (`proxy.shutdown_timeout_s`, `batch.forecast: provider`), top-level ones given a value
    (`meter: rapl`), field lists (`cascade: {enabled, escalate_below}`), and the list items of a "Settings (`x`
    in the config)" section: each names a field, with a value the schema takes and the default it has."""
    root = root_for(doc)
    text = FENCE.sub("", doc.read_text())
    problems = []
    for m in SPAN.finditer(text):
        span, after = m.group(1), text[m.end() - 1:]
        named = re.fullmatch(r"([a-z_]+(?:\[\])?(?:\.[a-z_]+(?:\[\])?)*)(?::\s+(.+))?", span)
        if not named or (("." not in named[1]) and named[2] is None):
            continue
        path = named[1].split(".")
        if path[0].removesuffix("[]") not in root.model_fields:
            continue  # not a setting (`routing.attempts`, `json.dumps`, `admin: true` of a keys entry)
        info = schema_field(root, path)
        if info is None:
            problems.append(f"`{span}`: no field `{named[1]}` in {root.__name__}")
            continue
        if problem := default_problem(named[1], info, after):
            problems.append(problem)
        value = named[2]
        if value is None or "..." in value:
            continue
        listed = re.fullmatch(r"\[?\{([\w\s,|\\]+)\}\]?", value)  # the block's fields (`a \| b`: a or b)
        if listed:
            problems += [f"`{span}`: no field `{named[1]}.{f}` in {root.__name__}"
                         for f in re.split(r"[\s,|\\]+", listed[1].strip()) if schema_field(root, [*path, f]) is None]
        elif (why := validate_setting(root, path, yaml.safe_load(value))) is not None:
            problems.append(f"`{span}`: refused: {why}")
    for block, section in settings_sections(text):
        for item in re.findall(r"^- `(\w+)`", section, re.M):
            if schema_field(RouterConfig, [block, item]) is None:
                problems.append(f"settings of `{block}`: no field `{block}.{item}`")
        for m in SPAN.finditer(section):
            info = schema_field(RouterConfig, [block, m.group(1)]) or schema_field(RouterConfig, [m.group(1)])
            if info is not None and (problem := default_problem(m.group(1), info, section[m.end() - 1:])):
                problems.append(problem)
    return problems


def settings_sections(text: str) -> Iterator[tuple[str, str]]:
    """(block, text) of each section headed "... (`block` in the config)", up to the next heading."""
    for m in re.finditer(r"^#+ .*\(`(\w+)` in the config\)\n(.*?)(?=^#+ |\Z)", text, re.S | re.M):
        yield m[1], m[2]


# ---------------------------------------------------------------------------------------------------------------
# (2) YAML examples


def fill_elisions(data: Any, key: str = "") -> Any:
    """``sha256: 9f86d0...`` is an abbreviated digest: completed with zeros, as a reader would paste a real one."""
    if isinstance(data, dict):
        return {k: fill_elisions(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [fill_elisions(v, key) for v in data]
    if key == "sha256" and isinstance(data, str) and data.endswith("..."):
        return data.removesuffix("...").ljust(64, "0")
    return data


def load_example(data: Any, tmp_path: Path) -> None:
    """Load a YAML example with the loader of what it is: a config, a policy, or a fragment of a card."""
    assert isinstance(data, dict), "an example is a mapping"
    file = tmp_path / "example.yaml"
    if set(data) <= set(RouterConfig.model_fields):
        file.write_text(yaml.safe_dump(data))
        RouterConfig.load(file)
    elif "accuracy" in data:
        file.write_text(yaml.safe_dump(data))
        load_policy(file)
    elif set(data) <= set(ModelCard.model_fields):
        card = yaml.safe_load(REMOTE_CARD.read_text()) | data
        file.write_text(yaml.safe_dump(card))
        load_card(file)
    else:
        raise AssertionError(f"neither a config, a policy nor a card: keys {sorted(data)}")


def yaml_examples() -> list[tuple[str, str]]:
    return [(f"{doc.relative_to(ROOT)}:{doc.read_text()[:m.start()].count(chr(10)) + 1}", m[2])
            for doc in DOCS for m in FENCE.finditer(doc.read_text()) if m[1] == "yaml"]


# ---------------------------------------------------------------------------------------------------------------
# (3) Python examples


PLACEHOLDERS = {"docs"}
"""Names an example reads as the caller's own inputs (``for doc in docs``), as it writes ``[...]`` for messages."""


def unassigned_names(tree: ast.AST, assigned: set[str]) -> list[str]:
    """The names ``tree`` reads that neither it nor ``assigned`` (earlier examples on the page) defines, type
    annotations aside (a signature shown as ``def f(self, request: DecisionRequest)``)."""
    annotations = {id(n) for node in ast.walk(tree) for a in (getattr(node, "annotation", None),
                                                              getattr(node, "returns", None)) if a is not None
                   for n in ast.walk(a)}
    defined = set(assigned)
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
    assigned |= defined
    return sorted({node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
                   and id(node) not in annotations and node.id not in defined | PLACEHOLDERS})


def python_problems(doc: Path) -> list[str]:
    """Each ```python block compiles (``await`` at top level allowed); what it imports from ``router`` exists, and
    so does every method it calls on a Router (``r = Router()``, also in a later block of the same page); every
    name it reads is defined in it or in an earlier block of the page, so a reader who pastes the page's examples in
    order gets no NameError."""
    problems, routers = [], {"r"}
    assigned = set(dir(builtins)) | routers
    for lang, body in FENCE.findall(doc.read_text()):
        if lang != "python":
            continue
        try:
            tree = compile(body, "<python example>", "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                           dont_inherit=True)
        except SyntaxError as exc:
            problems.append(f"a python example does not compile: {exc.msg}: {(exc.text or '').strip()!r}")
            continue
        problems += [f"`{name}` is used but no example on the page defines it"
                     for name in unassigned_names(tree, assigned)]
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "router":
                module = importlib.import_module(node.module or "router")
                problems += [f"`from {node.module} import {a.name}`: no such name" for a in node.names
                             if not hasattr(module, a.name)]
            elif isinstance(node, ast.Assign) and _is_router(node.value):
                routers |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            on_a_router = _is_router(node.value) or isinstance(node.value, ast.Name) and node.value.id in routers
            if on_a_router and not hasattr(Router, node.attr):
                problems.append(f"Router has no `{node.attr}`")
    return problems


def _is_router(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Router"


# ---------------------------------------------------------------------------------------------------------------
# (4) files, modules, classes


@cache
def class_modules() -> dict[str, list[str]]:
    """Class name -> the modules of ``router`` that define one (read, not imported)."""
    found: dict[str, list[str]] = {}
    for file in (ROOT / "router").rglob("*.py"):
        module = ".".join(file.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ClassDef):
                found.setdefault(node.name, []).append(module)
    return found


def has_attribute(cls: Any, name: str) -> bool:
    """A method, property, pydantic field, dataclass field or constructor keyword ``name``."""
    if hasattr(cls, name) or name in getattr(cls, "model_fields", {}) or name in getattr(
            cls, "__dataclass_fields__", {}):
        return True
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def resolve_dotted(name: str) -> bool:
    """``router.keys.hash_key``: a module of the package, then attributes of it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for part in parts[i:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def code_name_problems(doc: Path) -> list[str]:
    """`router/x.py` files, `router/x.py (name)` definitions, `router.x.y` names and `Class.attribute`s (in the
    text and in diagrams) that the package does not have."""
    markdown = doc.read_text()
    text = FENCE.sub("", markdown)
    code = "\n".join(body for lang, body in FENCE.findall(markdown) if lang not in ("yaml", "json", "bash"))
    problems = []
    for path in sorted(set(re.findall(r"(?<![\w/.-])(router/[\w/.-]*\w)", text + code))):
        if not (ROOT / path).exists():
            problems.append(f"{path}: no such file")
    for path, name in re.findall(r"(router/[\w/]+\.py) \((\w+)\)", code):
        file = ROOT / path
        defined = {n.name for n in ast.walk(ast.parse(file.read_text())) if isinstance(
            n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)} if file.exists() else set()
        if name not in defined:
            problems.append(f"{path} defines no `{name}`")
    spans = SPAN.findall(text) + [code]
    for name in sorted({n for s in spans for n in re.findall(r"^(router(?:\.\w+)+)\b", s)}):
        if not resolve_dotted(name):
            problems.append(f"`{name}`: no such module or name")
    for cls, attr in sorted({p for s in spans for p in re.findall(r"\b([A-Z]\w+)\.([a-z_]\w*)\b", s)}):
        modules = class_modules().get(cls)
        if modules and not any(has_attribute(getattr(importlib.import_module(m), cls, None), attr) for m in modules):
            problems.append(f"`{cls}.{attr}`: {cls} has no `{attr}`")
    return problems


# ---------------------------------------------------------------------------------------------------------------
# the tests


def test_a_wrong_setting_or_default_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "policies.md"
    doc.write_text("`keys: [{key_hash, policy}]` and `cascade: {enabled, start}` and `accuracy.min_accuracy`\n")
    assert setting_problems(doc) == ["`keys: [{key_hash, policy}]`: no field `keys.policy` in Policy"]
    doc = tmp_path / "proxy.md"
    doc.write_text("`proxy.shutdown_timeout_s` (default 30 s), `proxy.max_body_bytes` (default 8 MiB), `meter: rapl`,"
                   " `batch.forecast: tomorrow`, `proxy.shutdown_s`, `routing.attempts`, `admin: true`\n\n"
                   "## Settings (`proxy` in the config)\n\n- `warm_up` (default false)\n- `header_timeout`\n")
    expected = [
        "`proxy.shutdown_timeout_s`: the docs say default 30, the code has 25.0",
        "`batch.forecast: tomorrow`: refused: "
        "RouterConfig(...): field `batch.forecast`: Input should be 'provider' or 'persistence' (got 'tomorrow')",
        "`proxy.shutdown_s`: no field `proxy.shutdown_s` in RouterConfig",
        "settings of `proxy`: no field `proxy.header_timeout`",
        "`warm_up`: the docs say default false, the code has True"]
    found = setting_problems(doc)
    assert len(found) == len(expected) and all(f.startswith(e) for f, e in zip(found, expected, strict=True)), found


def test_a_wrong_python_example_or_code_name_is_found(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("```python\nfrom router import Router, Routr\nr = Router()\nr.complete(messages=[...])\n"
                   "r.compleet()\n```\n\n```python\nclient.files.create(purpose='batch')\n"
                   "client.batches.create(input_file_id=f.id)\n```\n\n"
                   "```python\ndecide(classification) -> Decision\n```\n")
    assert python_problems(doc) == ["`from router import Routr`: no such name", "Router has no `compleet`",
                                    "`client` is used but no example on the page defines it",
                                    "`f` is used but no example on the page defines it",
                                    "a python example does not compile: invalid syntax: "
                                    "'decide(classification) -> Decision'"]
    doc.write_text("`router/_router.py`, `router/nope.py`, `router.keys.hash_key`, `router.runs`, "
                   "`Router.aprepare`, `Router.compleet`\n\n```\nx  router/tools.py (tools_task)  router/tools.py "
                   "(no_such)\n```\n")
    assert code_name_problems(doc) == ["router/nope.py: no such file", "router/tools.py defines no `no_such`",
                                       "`router.runs`: no such module or name", "`Router.compleet`: Router has no "
                                       "`compleet`"]


@pytest.mark.parametrize("example", [
    "dashboard: {refresh_s: 0}",                                        # a config, out of range
    "keys:\n  - {name: ops, sha256: 9f86d0..., admn: true}",             # a config, a misspelt field
    "name: p\naccuracy: {min_accuracy: 0.8}\nkeys: [{key_hash: key-0123456789abcdef, policy: eco}]",  # a policy
    "capabilities: [tools, telepathy]",                                 # a card fragment
    "proxies: {warm_up: false}",                                        # none of them
])
def test_a_wrong_yaml_example_is_refused(example: str, tmp_path: Path) -> None:
    with pytest.raises((ConfigError, AssertionError)):
        load_example(fill_elisions(yaml.safe_load(example)), tmp_path)


def test_an_abbreviated_digest_is_completed(tmp_path: Path) -> None:
    load_example(fill_elisions(yaml.safe_load("keys:\n  - {name: ops, sha256: 9f86d0..., admin: true}")), tmp_path)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_setting_the_docs_name_is_a_field_with_that_default(doc: Path) -> None:
    problems = setting_problems(doc)
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize(("where", "example"), yaml_examples(), ids=[w for w, _ in yaml_examples()])
def test_every_yaml_example_loads(where: str, example: str, tmp_path: Path) -> None:
    load_example(fill_elisions(yaml.safe_load(example)), tmp_path)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_python_example_compiles_and_uses_names_that_exist(doc: Path) -> None:
    problems = python_problems(doc)
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_file_module_and_class_attribute_the_docs_name_exists(doc: Path) -> None:
    problems = code_name_problems(doc)
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)
