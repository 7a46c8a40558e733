"""Mixed-workload benchmark: what proportional routing saves against always-large at each quality level.

Workload (built here, from data the project ships):

* MMLU: the RouteLLM outcomes (Mixtral-8x7B vs GPT-4) of the subjects `router train classifier` holds out of
  task-detection training; the P(correct) heads are refitted by the shipped recipe on the *other* subjects
  (``HeldOutClassifier``), so no MMLU request here was seen by any part of the classifier.
* Sentiment: ``data/outcomes/sentiment_local.jsonl``, the project's own measurement of sentiment-onnx,
  smollm2-135m and gemma3-270m on the same held-out review sentences (score and joules per call).
* Chat: ``data/outcomes/chat_local.jsonl``, smollm2-135m and gemma3-270m measured on 113 short chat requests
  with checkable answers (``data/chat_checked``, written for this project, lenient reference match). Open-ended
  chat (writing, advice, code) is not in it: scoring that needs a judge model or people.

"Always-large" is, per request, the largest model measured for it: GPT-4 for MMLU, gemma3-270m (the local
large tier) for sentiment and chat. Joules: measured for the sentiment and chat rows, the model cards'
estimates for MMLU.
The accuracy target is swept through the policy engine (``decide_batch`` = ``decide_pure``'s rule).

    python benchmarks/bench_mixed.py [--policy balanced] [--no-readme]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from _simulate_common import (  # noqa: E402
    CHAT,
    IMG,
    ROOT,
    SENTIMENT,
    HeldOutClassifier,
    held_out_subjects,
    import_mmlu,
    md_table,
    write_section,
)

from router.cards import load_catalogue  # noqa: E402
from router.policy.schema import Policy  # noqa: E402
from router.simulate.outcomes import load_outcomes  # noqa: E402
from router.simulate.policy_bridge import PolicyEngineBridge  # noqa: E402
from router.simulate.report import plot_png  # noqa: E402
from router.simulate.simulator import Simulator  # noqa: E402

TARGETS = [round(x, 3) for x in np.linspace(0.40, 0.95, 23)]


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", default="balanced", help="policy name in policies/ or a YAML path")
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args()
    cards = load_catalogue(ROOT / "models")
    test_subjects = held_out_subjects()
    with tempfile.TemporaryDirectory() as tmp:
        mmlu = import_mmlu(Path(tmp) / "mmlu.jsonl", cards)
        keep = [x for x in mmlu.read_text(encoding="utf-8").split("\n")
                if x.strip() and any(f'"task": "mmlu/{s}"' in x for s in test_subjects)]
        sent = [x for x in SENTIMENT.read_text(encoding="utf-8").split("\n") if x.strip()]
        chat = [x for x in CHAT.read_text(encoding="utf-8").split("\n") if x.strip()]
        mixed = Path(tmp) / "mixed.jsonl"
        mixed.write_text("\n".join(keep + sent + chat) + "\n", encoding="utf-8")
        table = load_outcomes(mixed, cards)
    print(f"workload: {len(keep):,} MMLU requests from {len(test_subjects)} held-out subjects + {len(sent)} "
          f"sentiment requests + {len(chat)} chat requests")
    print("refitting P(correct) heads on the other subjects ...")
    clf = HeldOutClassifier(ROOT / "models", test_subjects)
    policies_dir = ROOT / "policies"
    if (policies_dir / f"{args.policy}.yaml").exists() or Path(args.policy).is_file():
        engine = PolicyEngineBridge(args.policy, policies_dir)
    else:  # before the shipped policies exist: the engine's rule with a plain relative target
        print(f"policy {args.policy!r} not found; using relative_to_largest 0.95")
        engine = PolicyEngineBridge(Policy(name="relative-0.95", accuracy={"relative_to_largest": 0.95}))
    sim = Simulator(table, cards, clf, engine, progress=None)
    res = sim.run(policy_name=engine.name, classifier_name="shipped ONNX + held-out P(correct) heads",
                  sweep=TARGETS, threshold=0.6)
    IMG.mkdir(parents=True, exist_ok=True)
    png = IMG / "quality_vs_energy.png"
    plot_png(res, png, title=f"Mixed workload ({len(keep):,} held-out MMLU + {len(sent)} sentiment + {len(chat)} "
                             "chat requests): quality vs energy")
    base = [res.router, *res.baselines.values()]
    rows = [[p.name + (" (policy)" if p is res.router else ""), pct(p.accuracy), pct(p.quality_vs_large),
             f"{p.energy_j_per_request:,.1f}", pct(p.energy_vs_large)] for p in base]
    def seg_q(p, seg: str) -> float:  # noqa: ANN001
        v = p.by_segment[seg]
        return v["accuracy"] / v["large_accuracy"]

    segs = list(res.router.by_segment)
    sweep_rows = [[f"{p.target:.3f}", pct(p.accuracy), pct(p.quality_vs_large),
                   *[pct(seg_q(p, s)) for s in segs], f"{p.energy_j_per_request:,.1f}",
                   pct(p.energy_vs_large), pct(p.share_requests.get("gpt-4-1106-preview", 0.0))]
                  for p in res.sweep]
    seg_rows = [[s, f"{int(v['requests']):,}", pct(v["accuracy"]), pct(v["large_accuracy"]),
                 f"{v['energy_j_per_request']:,.2f}", f"{v['large_energy_j_per_request']:,.2f}"]
                for s, v in res.router.by_segment.items()]
    ok95 = [p for p in res.sweep if p.quality_vs_large >= 0.95]
    best = min(ok95, key=lambda p: p.energy_vs_large) if ok95 else None
    verdict = (
        f"cheapest sweep point with ≥ 95 % of always-large quality: target {best.target:.3f}, "
        f"{pct(best.quality_vs_large)} quality at {pct(best.energy_vs_large)} of always-large energy — target "
        f"(≤ 30 % energy) **{'met' if best.energy_vs_large <= 0.30 else 'missed'}**"
        if best else "no sweep point reaches 95 % of always-large quality — target **missed**"
    )
    strict = [p for p in res.sweep if all(seg_q(p, x) >= 0.95 for x in segs)]
    sbest = min(strict, key=lambda p: p.energy_vs_large) if strict else None
    verdict += (
        f". Stricter, ≥ 95 % of always-large quality in *every* segment (so sentiment gains cannot hide MMLU "
        f"losses): target {sbest.target:.3f}, {pct(sbest.quality_vs_large)} quality at "
        f"{pct(sbest.energy_vs_large)} energy — **{'met' if sbest.energy_vs_large <= 0.30 else 'missed'}**"
        if sbest else ". Stricter, ≥ 95 % in every segment: no sweep point — **missed**"
    )
    print(verdict.replace("**", ""))
    for r in rows:
        print("  " + " | ".join(r))
    rm = res.routing_metrics
    body = f"""### Mixed workload: proportional routing vs always-large

`python benchmarks/bench_mixed.py` — {len(keep):,} RouteLLM MMLU requests from the {len(test_subjects)} subjects held
out of classifier training (P(correct) heads refitted by the shipped recipe on the other subjects) +
{len(sent)} sentiment requests + {len(chat)} chat requests whose outcomes and joules the project measured locally
(`data/outcomes/sentiment_local.jsonl`, `data/outcomes/chat_local.jsonl`). Chat here means short requests with a
checkable answer (`data/chat_checked`: facts, capitals, one-word translations; lenient reference match);
open-ended chat is not scored (it needs a judge). Always-large = per request the largest measured model
(GPT-4 for MMLU, gemma3-270m for sentiment and chat). Joules: measured (CPU-time model) for sentiment and
chat; model-card estimates for Mixtral / GPT-4.
Policy `{res.policy}`; the sweep overrides its accuracy target (absolute) through the policy engine.

{verdict}.

![quality vs energy](img/quality_vs_energy.png)

{md_table(["router", "accuracy", "quality vs always-large", "J / request", "energy vs always-large"], rows)}

By segment (policy `{res.policy}`):

{md_table(["segment", "requests", "accuracy", "always-large accuracy", "J / request", "always-large J / request"],
          seg_rows)}

Accuracy-target sweep (what routing saves at each quality level):

{md_table(["target", "accuracy", "quality vs always-large", *[f"{x} quality vs its large" for x in segs],
           "J / request", "energy vs always-large", "GPT-4 share"], sweep_rows)}
"""
    if rm is None:
        body += ("\nAPGR / CPT: not defined for this mixed (more than two models) workload; the subject-held-out "
                 "MMLU APGR / CPT are in the Classifier section.\n")
    if not args.no_readme:
        write_section("mixed", body)
        print("wrote the mixed-workload tables into benchmarks/README.md and", png)


if __name__ == "__main__":
    main()
