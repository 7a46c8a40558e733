"""Load policies from YAML with errors that name the file, the line, the field and the fix.

PyYAML's node marks map each field path to its line, so a typo in a 60-line policy points at the line.
``write_calibrated`` replaces only the ``calibrated:`` block, keeping the file's comments (the documentation
of each shipped policy lives in its comments).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import yaml
from pydantic import ValidationError

from ..errors import ConfigError
from ..types import Tier
from ..yaml_files import meant_field, read_yaml_mapping, yaml_files
from .schema import Calibrated, Policy

if TYPE_CHECKING:
    from ..cards import ModelCard

_FIXES = {
    "extra_forbidden": "remove it or check the spelling (fields: see docs/policies.md)",
    "missing": "add it",
    "literal_error": "use one of the allowed values",
    "greater_than": "use a larger number",
    "greater_than_equal": "use a larger number",
    "less_than_equal": "use a smaller number",
    "float_parsing": "use a number",
    "string_pattern_mismatch": "fix the format",
}


def _line_index(text: str) -> dict[tuple[str, ...], int]:
    """Field path (as strings) -> 1-based line, from the YAML node tree."""
    out: dict[tuple[str, ...], int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return out

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        out.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                out[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, str(i)))

    if root is not None:
        with contextlib.suppress(RecursionError):  # nested deeper than the stack: the lines found so far help
            walk(root, ())
    return out


def _describe(err: ValidationError, file: Path, text: str) -> str:
    lines = _line_index(text)
    msgs = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        where = ".".join(loc) or "(top level)"
        line = None
        for n in range(len(loc), -1, -1):  # the deepest part of the path that exists in the file
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        got = e.get("input")
        got_s = "" if isinstance(got, dict | list) or e["type"] == "missing" else f" (got {got!r})"
        fix = _FIXES.get(e["type"], "")
        if e["type"] == "extra_forbidden" and (meant := meant_field(Policy, e["loc"])):
            fix = f"remove it or check the spelling: did you mean `{meant}`? (fields: see docs/policies.md)"
        msg = e["msg"].removeprefix("Value error, ")
        msgs.append(
            f"{file}:{line if line is not None else '?'}: field `{where}`: {msg}{got_s}"
            + (f"; fix: {fix}" if fix else "")
        )
    return "\n".join(msgs)


def load_policy(file: str | Path) -> Policy:
    """One policy file, validated. Its ``name`` is the file name without ``.yaml`` / ``.yml`` unless it says."""
    file = Path(file)
    raw, text = read_yaml_mapping(file, "policy", "accuracy, budgets, ...; see docs/policies.md")
    raw.setdefault("name", file.stem)
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, file, text)) from exc
    policy._file = file
    return policy


def load_policies(folder: str | Path, *, recursive: bool = False) -> dict[str, Policy]:
    """Every ``*.yaml`` (or ``*.yml``) policy in ``folder`` by name (examples in sub-folders only with
    ``recursive``)."""
    folder = Path(folder)
    if folder.is_file():  # `policies_dir: policies/eco.yaml`: "does not exist" would be wrong
        raise ConfigError(f"{folder}: is a file, not a policy folder: policies_dir names the folder that holds the "
                          f"policies; fix: name the folder it is in ({folder.parent}), or a folder of its own for it")
    if not folder.is_dir():
        raise ConfigError(f"{folder}: policy folder does not exist")
    out: dict[str, Policy] = {}
    for file in yaml_files(folder, recursive=recursive):
        policy = load_policy(file)
        if policy.name in out:
            raise ConfigError(f"{file}: policy name `{policy.name}` is already used by {out[policy.name].file}")
        out[policy.name] = policy
    return out


def check_models(policy: Policy, known: Collection[str] | Mapping[str, ModelCard], file: str | Path = "") -> None:
    """Every model a policy names must have a card: say which, and what exists. Given the cards themselves (a
    mapping by name), what they say is checked too (:func:`check_pins`, and the tiers in :func:`check_escalation`)."""
    names = list(policy.pinned.values()) + list(policy.allowed_models or [])
    names += [b.model for b in policy.budgets if b.model != "*" and not b.model.startswith("tier:")]
    for k in policy.keys:
        names += list(k.allowed_models or [])
        names += [b.model for b in k.budgets if b.model != "*" and not b.model.startswith("tier:")]
    unknown = sorted({n for n in names if n not in known})
    if unknown:
        raise ConfigError(
            f"{file or policy.name}: policy `{policy.name}` names unknown model(s) {', '.join(unknown)}; "
            f"use one of: {', '.join(sorted(known))}"
        )
    escalate_to = policy.cascade.escalate_to
    if escalate_to != "next" and escalate_to not in get_args(Tier) and escalate_to not in known:
        tiers = ", ".join(f"`{t}`" for t in get_args(Tier))
        raise ConfigError(
            f"{file or policy.name}: field `cascade.escalate_to`: `{escalate_to}` is neither `next` (the cheapest more "
            f"accurate model), a tier ({tiers}) nor a model; fix: use one of those, or one of: "
            + ", ".join(sorted(known))
        )
    cards = known if isinstance(known, Mapping) else None
    check_escalation(policy, cards, file)
    if cards is not None:
        check_pins(policy, cards, file)


def check_escalation(policy: Policy, cards: Mapping[str, ModelCard] | None, file: str | Path = "") -> None:
    """A cascade escalates only to candidates, and ``allowed_models`` leaves every other model out of each request:
    an enabled cascade whose ``escalate_to`` model (or, given the cards, every model of whose tier) is not allowed
    would never escalate, and say nothing of it. Refused, so the operator learns it before the traffic does."""
    allowed = policy.allowed_models
    escalate_to = policy.cascade.escalate_to
    if not policy.cascade.enabled or allowed is None or escalate_to == "next":
        return
    if escalate_to in get_args(Tier):
        if cards is None or any(cards[n].tier == escalate_to for n in allowed if n in cards):
            return
        what = f"no model of tier `{escalate_to}` is in `allowed_models` ({', '.join(allowed)})"
    elif escalate_to not in allowed:
        what = f"`{escalate_to}` is not in `allowed_models` ({', '.join(allowed)})"
    else:
        return
    raise ConfigError.at(file or f"policy `{policy.name}`", "cascade.escalate_to",
                         f"{what}, so no request could escalate: a low-confidence answer would be kept as it is",
                         "add the model to `allowed_models`, escalate to an allowed model (or `next`), or turn the "
                         "cascade off (`enabled: false`)")


def check_pins(policy: Policy, cards: Mapping[str, ModelCard], file: str | Path = "") -> None:
    """A pin sends every request of its task to its model, past the rule that keeps a model off the tasks its card
    does not serve: a specialist pinned to another task (``chat: sentiment-onnx``) would answer every chat request
    with a label, so such a pin is refused."""
    for task, name in policy.pinned.items():
        card = cards.get(name)
        if card is not None and not card.serves(task):
            raise ConfigError.at(
                file or f"policy `{policy.name}`", f"pinned.{task}",
                f"`{name}` does not serve {task} (its card's tasks: {', '.join(card.tasks)}), so every {task} "
                f"request would get its answer to another task",
                f"pin {task} to a model whose card serves it, or pin {name} to one of {', '.join(card.tasks)}")


def write_calibrated(file: str | Path, block: Calibrated) -> None:
    """Replace (or append) the ``calibrated:`` block at the end of a policy file, keeping everything above it."""
    file = Path(file)
    text = file.read_text(encoding="utf-8")
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("calibrated:")), None)
    if start is not None:
        end = start + 1
        while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
            end += 1
        # a comment line right above the block belongs to it
        head = lines[:start]
        while head and head[-1].startswith("# calibrated"):
            head.pop()
        lines = head + lines[end:]
    data: dict[str, Any] = {"calibrated": block.model_dump(exclude_none=True)}
    body = yaml.safe_dump(data, sort_keys=False, width=110, allow_unicode=True).rstrip("\n")
    out = "\n".join(lines).rstrip("\n")
    comment = "# calibrated by `router calibrate` (do not edit by hand; rerun the command)"
    file.write_text(f"{out}\n{comment}\n{body}\n", encoding="utf-8")
    load_policy(file)  # the file must still validate
