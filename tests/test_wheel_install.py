"""The commands as a user who ran ``pip install router`` has them: the package laid out as its wheel lays it out
(``router/`` plus what pyproject.toml's force-include table puts under ``router/_embedded/``, and no source
checkout around it), each command run in a process of its own from a folder outside the checkout.

Building the wheel itself needs hatchling from the package index; the force-include table is what hatchling copies,
so laying out its entries is the same tree without the network."""

from __future__ import annotations

import json
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
    own path is not the checkout's), each force-included path copied to its place under the package (copied, not
    linked, so that a command writing into the installed package changes this copy, never the checkout)."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copytree(ROOT / "router", site / "router", ignore=shutil.ignore_patterns("__pycache__"))
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["hatch"]["build"]["targets"][
        "wheel"]
    for source, target in wheel["force-include"].items():
        (site / target).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, site / target)
        else:
            shutil.copy2(ROOT / source, site / target)
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


def files_of(folder: Path) -> dict[Path, tuple[int, bytes]]:
    """Every file under ``folder`` with its modification time and bytes, to tell that nothing was written."""
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()}


SHIPPED_COPY = "the installed package's shipped copy of the {}, which an upgrade or reinstall replaces"


@pytest.mark.slow
def test_calibrate_does_not_rewrite_the_installed_packages_policies(site: Path, tmp_path: Path) -> None:
    # the config's policies_dir is the shipped one: the fit must go to a copy the user owns, not site-packages
    shipped = site / "router" / "_embedded" / "policies"
    before = files_of(site / "router" / "_embedded")
    outcomes = tmp_path / "mmlu"
    outcomes.mkdir()
    for subject in ("anatomy", "astronomy", "marketing", "virology", "sociology", "philosophy"):
        shutil.copy(ROOT / "data" / "routellm_mmlu" / f"mmlu_{subject}.csv", outcomes)
    out = run_installed(site, tmp_path, "calibrate", "balanced", "--outcomes", str(outcomes))
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    message = " ".join(out.stderr.split())
    assert message.startswith(f"error: router calibrate would write into {shipped / 'balanced.yaml'}, "
                              f"{SHIPPED_COPY.format('policies')}")
    assert f"cp -r {shipped} DIR) and pass --policies-dir DIR" in message and "--dry-run" in message
    assert "Traceback" not in out.stderr
    assert files_of(site / "router" / "_embedded") == before

    mine = tmp_path / "policies"
    shutil.copytree(shipped, mine)
    out = run_installed(site, tmp_path, "calibrate", "balanced", "--outcomes", str(outcomes), "--policies-dir",
                        str(mine))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"wrote the calibrated block into {mine / 'balanced.yaml'}" in " ".join(out.stdout.split())
    assert (mine / "balanced.yaml").read_bytes() != (shipped / "balanced.yaml").read_bytes()
    assert files_of(site / "router" / "_embedded") == before


@pytest.mark.slow
def test_energy_profile_does_not_rewrite_the_installed_packages_card(site: Path, tmp_path: Path) -> None:
    shipped = site / "router" / "_embedded" / "models"
    before = files_of(site / "router" / "_embedded")
    args = ("energy", "profile", "sentiment-onnx", "--prompts", "3")
    out = run_installed(site, tmp_path, *args)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    message = " ".join(out.stderr.split())
    assert message.startswith(f"error: router energy profile would write into {shipped / 'sentiment-onnx.yaml'}, "
                              f"{SHIPPED_COPY.format('model cards')}")
    assert f"cp -r {shipped} DIR) and pass --models-dir DIR" in message and "--dry-run" in message
    assert "Profiling" not in out.stdout  # refused before the model ran
    assert files_of(site / "router" / "_embedded") == before

    out = run_installed(site, tmp_path, *args, "--dry-run")
    assert out.returncode == 0 and "dry run: card not changed" in out.stdout, out.stderr[-2000:]

    mine = tmp_path / "models"
    shutil.copytree(shipped, mine)
    out = run_installed(site, tmp_path, *args, "--models-dir", str(mine))
    assert out.returncode == 0, out.stderr[-2000:]
    # rich wraps the path at the terminal width, inside the name too
    assert f"wrotetheprofileinto{mine / 'sentiment-onnx.yaml'}" in "".join(out.stdout.split())
    assert (mine / "sentiment-onnx.yaml").read_bytes() != (shipped / "sentiment-onnx.yaml").read_bytes()
    assert files_of(site / "router" / "_embedded") == before


def test_train_embeddings_needs_out_beside_an_installed_package(site: Path, tmp_path: Path) -> None:
    # its default is the checkout's models/embeddings: beside an installed package, a stray site-packages/models
    out = run_installed(site, tmp_path, "train", "embeddings")
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    message = " ".join(out.stderr.split())
    assert message.startswith("error: router train embeddings without --out writes into the source repository's "
                              "models/embeddings, which an installed package does not have")
    assert "fix: pass --out DIR" in message
    assert not (site / "models").exists()


def _refused_saving_the_classifier(out: subprocess.CompletedProcess[str], command: str, shipped: Path) -> str:
    """``command`` stopped (exit 2, one line, no traceback) before saving into the shipped classifier folder, its
    fix offering ``--no-save``; returns the message, whitespace joined."""
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    message = " ".join(out.stderr.split())
    assert message.startswith(f"error: {command} would write into "
                              f"{shipped / 'classifier' / 'added_models.json'}, {SHIPPED_COPY.format('model cards')}")
    assert "--no-save" in message and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    return message


@pytest.mark.slow
def test_data_measure_does_not_save_into_the_installed_packages_classifier(site: Path, tmp_path: Path) -> None:
    # without a config, the models folder is the shipped one: the measured row must go to a copy the user owns
    shipped = site / "router" / "_embedded" / "models"
    before = files_of(site / "router" / "_embedded")
    args = ("data", "measure", "sentiment-onnx", "--task", "sentiment", "--anchors", "2")
    out = run_installed(site, tmp_path, *args)
    message = _refused_saving_the_classifier(out, "router data measure", shipped)
    assert f"cp -r {shipped} DIR) and pass --config FILE whose models_dir is DIR" in message
    assert "anchors (scored by" not in out.stdout  # refused before the anchors ran
    assert files_of(site / "router" / "_embedded") == before

    mine = tmp_path / "models"
    shutil.copytree(shipped, mine)
    config = tmp_path / "router.yaml"
    config.write_text(f"models_dir: {mine}\n", encoding="utf-8")
    out = run_installed(site, tmp_path, *args, "--config", str(config))
    assert out.returncode == 0, out.stderr[-2000:]
    saved = mine / "classifier" / "added_models.json"
    assert f"saved to {saved}" in " ".join(out.stdout.split())
    assert "sentiment-onnx" in json.loads(saved.read_text(encoding="utf-8"))
    assert files_of(site / "router" / "_embedded") == before


@pytest.mark.slow
def test_train_feedback_does_not_save_into_the_installed_packages_classifier(site: Path, tmp_path: Path) -> None:
    shipped = site / "router" / "_embedded" / "models"
    before = files_of(site / "router" / "_embedded")
    # six chat requests: people liked the first local model's answers and disliked the second's
    good, bad = "smollm2-135m", "gemma3-270m"
    scored = tmp_path / "scored.jsonl"
    scored.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}.", "task": "chat",
                                          "outcomes": {good: {"correct": 1.0}, bad: {"correct": 0.0}}}) + "\n"
                              for i in range(6)), encoding="utf-8")
    args = ("train", "feedback", str(scored), "--min-requests", "3")
    out = run_installed(site, tmp_path, *args)
    message = _refused_saving_the_classifier(out, "router train feedback", shipped)
    assert f"cp -r {shipped} DIR) and pass --models DIR" in message
    assert "refitted from" not in out.stdout
    assert files_of(site / "router" / "_embedded") == before

    mine = tmp_path / "models"
    shutil.copytree(shipped, mine)
    out = run_installed(site, tmp_path, *args, "--models", str(mine))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    saved = mine / "classifier" / "added_models.json"
    assert "savedto" + "".join(str(saved).split()) in "".join(out.stdout.split())  # rich wraps the path
    assert {good, bad} <= set(json.loads(saved.read_text(encoding="utf-8")))
    assert files_of(site / "router" / "_embedded") == before
