"""Shipped policies on held-out MMLU outcomes: achieved quality and energy vs always-large and always-small, and
target vs achieved for `router calibrate`.

Held-out = the MMLU subjects `router calibrate` kept out of the fit (same seeded split: share 0.3, seed 0), with
out-of-fold P(correct) (the classifier recipe refitted with whole subjects held out). Each policy routes with the
engine's own vectorised rule (``decide_batch``) and the calibrated offsets written in its YAML; "uncalibrated"
is the same rule with offset 0 (raw predicted accuracy compared with the target). Joules come from the model
cards (estimates; see models/*.yaml). Run: ``python benchmarks/bench_policies.py [--no-write]``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.cli.calibrate import _shown, calibrate_policy, load_calibration_data  # noqa: E402
from router.policy.calibration import evaluate, split_groups  # noqa: E402
from router.policy.engine import decide_batch  # noqa: E402
from router.policy.loader import load_policy  # noqa: E402

POLICIES = ("eco", "balanced", "quality")


def main(write: bool = True) -> str:
    t0 = time.perf_counter()
    data = load_calibration_data(ROOT / "data" / "routellm_mmlu", "oof", ROOT / "models")
    mask, held = split_groups(data.groups, 0.3, 0)
    test = data.take(~mask)
    m = len(data.models)
    lines = [
        f"Held-out: {len(test.p)} MMLU requests from {len(held)} subjects not used by `router calibrate` "
        f"({', '.join(held)}). Models: {', '.join(data.models)} (joules: card estimates). "
        "Scores: out-of-fold P(correct), subjects held out.",
        "",
        "| routing | target | quality (acc / always-large acc) | accuracy | J / request | energy vs always-large"
        " | share to large |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name: str, target: str, chosen: np.ndarray) -> None:
        ev = evaluate(test, chosen)
        lines.append(f"| {name} | {target} | {ev['quality_vs_large']:.1%} | {ev['accuracy']:.3f} | "
                     f"{ev['energy_j_per_request']:.1f} | {ev['energy_vs_large']:.1%} | {ev['large_share']:.1%} |")

    row("always-large", "-", np.full(len(test.p), m - 1))
    row("always-small", "-", np.zeros(len(test.p), dtype=int))
    for name in POLICIES:
        pol = load_policy(ROOT / "policies" / f"{name}.yaml")
        rel = pol.accuracy.kind == "relative"
        tgt = f"{pol.accuracy.value:.0%} of large" if rel else f"{pol.accuracy.value:.2f} acc"
        cal = pol.calibrated
        offsets = np.array([cal.offsets.get(x, 0.0) for x in data.models]) if cal else np.zeros(m)
        ref = m - 1
        row(f"`{name}` (calibrated)", tgt,
            decide_batch(test.p, test.energy, pol.accuracy.value, relative=rel, offsets=offsets, reference=ref))
        raw = np.zeros(m)
        raw[-1] = -1.0  # the largest is always adequate, as in the calibrated family
        row(f"`{name}` uncalibrated", tgt,
            decide_batch(test.p, test.energy, pol.accuracy.value, relative=rel, offsets=raw, reference=ref))

    lines += [
        "",
        "`router calibrate`: target vs achieved on the held-out subjects, for each bound (confidence 90 %):",
        "",
        "| target | bound | τ | fit n | achieved on fit | achieved held-out | met | energy vs always-large |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, value in (("relative", 0.90), ("relative", 0.95), ("relative", 0.99), ("absolute", 0.70),
                        ("absolute", 0.75)):
        for bound in ("hoeffding", "bernstein"):
            _, r = calibrate_policy(data, kind, value, confidence=0.9, bound=bound, held_out_share=0.3, seed=0)
            tgt = f"{value:.0%} of large" if kind == "relative" else f"{value:.2f} acc"
            fitted = _shown(r["achieved_calibration"], ".3f")
            if "held_out" not in r:  # infeasible: `router calibrate` writes no block and states no held-out figures
                lines.append(f"| {tgt} | {bound} | none certified | {r['n_calibration']} | {fitted} | - | "
                             "NO (no fit) | - |")
                continue
            h = r["held_out"]
            lines.append(f"| {tgt} | {bound} | {r['tau']:+.3f} | {r['n_calibration']} | {fitted} | "
                         f"{_shown(h['achieved'], '.3f')} | {'yes' if h['met'] else 'NO'} | "
                         f"{_shown(h['energy_vs_large'], '.1%')} |")
    lines += ["", f"Regenerate: `python benchmarks/bench_policies.py` ({time.perf_counter() - t0:.0f} s here)."]
    table = "\n".join(lines)
    print(table)
    if write:
        write_section(ROOT / "benchmarks" / "README.md", "## Policies", table)
    return table


def write_section(readme: Path, heading: str, body: str) -> None:
    """Replace (or append) one ``## `` section, leaving the others as they are."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.strip() == heading), None)
    block = [heading, "", *body.splitlines(), ""]
    if start is None:
        out = [*lines, "", *block] if lines and lines[-1].strip() else [*lines, *block]
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        out = lines[:start] + block + lines[end:]
    readme.write_text("\n".join(out).rstrip("\n") + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(write="--no-write" not in sys.argv)
