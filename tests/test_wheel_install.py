"""The commands as a user who ran ``pip install router`` has them: the package laid out as its wheel lays it out
(``router/`` plus what pyproject.toml's force-include table puts under ``router/_embedded/``, and no source
checkout around it), each command run in a process of its own from a folder outside the checkout.

Building the wheel itself needs hatchling from the package index; the force-include table is what hatchling copies,
so laying out its entries is the same tree without the network."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site-packages folder holding the package as the wheel installs it: the sources copied (so the package's
    own path is not the checkout's), each force-included path linked at its place under the package."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copytree(ROOT / "router", site / "router", ignore=shutil.ignore_patterns("__pycache__"))
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["hatch"]["build"]["targets"][
        "wheel"]
    for source, target in wheel["force-include"].items():
        (site / target).parent.mkdir(parents=True, exist_ok=True)
        (site / target).symlink_to(ROOT / source)
    return site


def run_installed(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``router ARGS`` with only the laid-out package importable as ``router``, its data and ledger under ``cwd``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(PYTHONPATH=str(site), HOME=str(cwd), XDG_DATA_HOME=str(cwd / "data-home"),
               ROUTER_LEDGER_URL=f"sqlite:///{cwd / 'ledger.sqlite3'}")
    return subprocess.run([sys.executable, "-c", "from router.cli import main; main()", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)


def test_the_layout_imports_the_laid_out_package(site: Path, tmp_path: Path) -> None:
    out = run_installed(site, tmp_path, "--help")
    assert out.returncode == 0, out.stderr
    probe = subprocess.run([sys.executable, "-c", "import router; print(router.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()) == site / "router" / "__init__.py"


@pytest.mark.slow
def test_data_measure_reads_the_anchors_the_wheel_ships(site: Path, tmp_path: Path) -> None:
    # README's feedback loop: `router data measure MODEL --anchors N` on an installed package
    out = run_installed(site, tmp_path, "data", "measure", "sentiment-onnx", "--task", "sentiment", "--anchors", "2",
                        "--no-save")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sentiment-onnx on 2 sentiment anchors (scored by reference match" in out.stdout


@pytest.mark.parametrize("args", [
    ("train", "specialist", "sentiment", "--model", "linear", "--out", "spec"),
    ("train", "classifier", "--no-embeddings", "--out", "cls"),
    ("data", "measure-local", "sentiment", "--n", "1"),
    ("calibrate", "--dry-run"),
], ids=lambda args: " ".join(args[:2]))
def test_a_command_that_needs_the_checkouts_data_says_so(site: Path, tmp_path: Path, args: tuple[str, ...]) -> None:
    out = run_installed(site, tmp_path, *args)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "FileNotFoundError" not in out.stderr
    assert "reads the source repository's data/ folder, which an installed package does not ship" in out.stderr
    assert "fix:" in out.stderr
    assert not (tmp_path / "spec").exists() and not (tmp_path / "cls").exists()
