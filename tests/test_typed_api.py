"""The package's type hints reach its users: ``router/py.typed`` marks it typed (PEP 561), so a type checker reads
the public API instead of skipping the package, and an application written against README's *Use it from Python*
checks clean under ``mypy --strict`` while a misuse of the same API is caught.

Without the marker mypy said `Skipping analyzing "router": module is installed, but missing library stubs or
py.typed marker` and every value from the library was ``Any``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="mypy is a dev dependency (pip install -e '.[dev]')")

APP = '''
import asyncio
import contextlib
import threading

from router import Router, RouterError
from router.errors import BudgetExhaustedError


def sync_use(r: Router) -> tuple[str, float]:
    resp = r.complete(messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, policy="eco")
    text: str = resp.choices[0].message.content or ""
    for chunk in r.complete(messages=[{"role": "user", "content": "Say hi"}], stream=True):
        text += chunk.choices[0].delta.content or ""
    prepared = r.prepare(messages=[{"role": "user", "content": "Say hi"}], cancel=threading.Event())
    reason: str = prepared.decision.reason
    answer = r.send(prepared)
    with contextlib.closing(r.complete(messages=[{"role": "user", "content": "Say hi"}], stream=True)) as chunks:
        for piece in chunks:
            text += piece.choices[0].delta.content or ""
    try:
        r.complete(messages=[])
    except BudgetExhaustedError as exc:
        wait: float | None = exc.retry_after_s
    except RouterError as exc:
        error: dict[str, object] = exc.to_openai()
    return text + reason + answer.routing.model, answer.routing.energy_j


async def async_use(r: Router) -> str:
    resp = await r.acomplete(messages=[{"role": "user", "content": "Say hi"}])
    async for chunk in await r.acomplete(messages=[{"role": "user", "content": "Say hi"}], stream=True):
        print(chunk.choices[0].delta.content or "")
    return resp.routing.tier


with Router() as router:
    print(sync_use(router), asyncio.run(async_use(router)))
'''

MISUSE = '''
from router import Router

r = Router()
resp = r.complete(messages=[{"role": "user", "content": "Say hi"}])
resp.routing.energy_j.upper()
for chunk in r.complete(messages=[{"role": "user", "content": "Say hi"}], stream=True):
    chunk.usage.prompt_tokens + "tokens"
'''


def mypy(tmp_path: Path, name: str, source: str) -> subprocess.CompletedProcess[str]:
    file = tmp_path / name
    file.write_text(source, encoding="utf-8")
    return subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path /
                          ".mypy_cache"), str(file)], capture_output=True, text=True, timeout=240)  # fmt: skip


def test_the_package_is_marked_typed() -> None:
    import router

    assert (Path(router.__file__).parent / "py.typed").is_file()


@pytest.mark.slow
def test_an_app_written_against_the_readme_checks_clean_and_a_misuse_does_not(tmp_path: Path) -> None:
    clean = mypy(tmp_path, "app.py", APP)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    wrong = mypy(tmp_path, "misuse.py", MISUSE)
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert '"float" has no attribute "upper"' in wrong.stdout, wrong.stdout
    assert 'Item "None" of "Usage | None" has no attribute "prompt_tokens"' in wrong.stdout or \
        'Unsupported operand types for + ("int" and "str")' in wrong.stdout, wrong.stdout


@pytest.mark.slow
def test_the_package_checks_clean_under_its_own_mypy_configuration(tmp_path: Path) -> None:
    """``mypy router`` with pyproject.toml's ``[tool.mypy]`` (the pydantic plugin, libraries without types named):
    the hints the package ships agree with its code, so a wrong call inside it is found before it runs (two such
    calls, a shadowed ``journal_folder`` and ``exc.msg`` on a plain ValueError, were found this way)."""
    root = Path(__file__).resolve().parent.parent
    cache = str(tmp_path / ".mypy_cache")
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", cache, "router"], cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
