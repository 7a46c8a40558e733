"""Every `router ...` command line the README and docs/ show names a command that exists, and only options that
command has: a user copying one gets the command, not "No such command" or "No such option"."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from typer.main import get_command

from router.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def command_lines(markdown: str) -> list[str]:
    """What follows `router ` at the start of a code span, or of a shell line in a fenced block, or of a command a
    shell line pipes into (`router data from-ledger -o - | router simulate --outcomes -`)."""
    lines = []
    for lang, body in FENCE.findall(markdown):
        if lang in ("bash", "sh", "console", ""):
            lines += [m for line in body.splitlines() if (m := re.sub(r"^\$ ", "", line.strip())).startswith("router ")]
    lines += [span for span in re.findall(r"`([^`\n]+)`", FENCE.sub("", markdown)) if span.startswith("router ")]
    piped = [part.strip() for line in lines for part in line.split("#", 1)[0].split(" | ")]
    return [part.removeprefix("router ") for part in piped if part.startswith("router ")]


def check(line: str, root: Any) -> list[str]:
    """The problems of one command line: an unknown command, or options its command does not have."""
    words = line.split()
    if words and words[0] in ("-v", "--verbose"):
        words = words[1:]
    command, path = root, []
    while words and hasattr(command, "commands") and re.fullmatch(r"[a-z][a-z-]*", words[0]):
        if words[0] not in command.commands:
            return [f"`router {' '.join(path + words[:1])}`: no such command"]
        command = command.commands[words[0]]
        path.append(words.pop(0))
    if not path:  # output quoted in the docs (`router serve: worker ...`) or a placeholder (`router -v ...`)
        return []
    known = {"--help"} | {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    used = re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", " ".join(words))
    return [f"`router {' '.join(path)}` has no option {o}" for o in used if o not in known]


def test_a_wrong_command_or_option_is_found() -> None:
    root = get_command(app)
    assert check("ledger report --by tier --format html -o r.html", root) == []
    assert check("energy profile M [--prompts N] [--write/--dry-run]", root) == []
    assert check("ledgr", root) == ["`router ledgr`: no such command"]
    assert check("ledger report --format html --colour", root) == ["`router ledger report` has no option --colour"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_every_command_line_in_the_docs_runs_as_written(doc: Path) -> None:
    root = get_command(app)
    lines = command_lines(doc.read_text())
    problems = [p for line in lines for p in check(line, root)]
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


def test_ledger_help_says_what_the_bare_command_prints() -> None:
    """The README's `router ledger` prints totals, but its --help read "Usage: router ledger [OPTIONS] COMMAND" and
    never said that the command alone does anything: the group's help now says what it prints."""
    from typer.testing import CliRunner

    shown = CliRunner().invoke(app, ["ledger", "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    assert "`router ledger` alone prints the totals per model and per day" in " ".join(shown.output.split())
