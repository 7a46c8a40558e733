"""Scale benchmark: simulate 1,000,000 requests and print the seconds and the peak memory.

1. Builds a 1M-line outcomes file by resampling real rows (seeded): the RouteLLM MMLU outcomes (imported with
   `router data import-routellm`) and the locally measured sentiment outcomes. Ids get a ``~k`` suffix.
2. Runs ``router simulate --json`` on it in a fresh process (the whole CLI: imports, card and classifier
   loading, reading, classification, decisions, baselines, routing metrics) and reads that process's wall
   time and peak RSS (``ru_maxrss`` of the child).

What makes it fit: the reader streams lines into float columns (no per-line objects kept); each distinct
prompt is classified once (the resampled file has ~10k distinct prompts among 1M lines) and decided once with
``decide_pure``; the per-request work is numpy gathers. Target: <= 60 s and <= 2 GB on the 2-core machine.

    python benchmarks/bench_simulate.py [--rows 1000000] [--policy balanced] [--keep FILE] [--no-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _simulate_common import ROOT, SENTIMENT, import_mmlu, md_table, write_section  # noqa: E402
from tqdm import tqdm  # noqa: E402

from router.cards import load_catalogue  # noqa: E402


def build(path: Path, rows: int, seed: int = 0) -> dict[str, int]:
    cards = load_catalogue(ROOT / "models")
    with tempfile.TemporaryDirectory() as tmp:
        mmlu = import_mmlu(Path(tmp) / "mmlu.jsonl", cards)
        source = mmlu.read_text(encoding="utf-8").split("\n")
    source += SENTIMENT.read_text(encoding="utf-8").split("\n")
    records = [json.loads(x) for x in source if x.strip()]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as out:
        for k in tqdm(range(rows), desc="write outcomes", unit="line", unit_scale=True, mininterval=1):
            rec = records[rng.randrange(len(records))]
            out.write(json.dumps({**rec, "id": f"{rec['id']}~{k}"}, ensure_ascii=False) + "\n")
    return {"source_rows": len(records), "bytes": path.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--policy", default="balanced")
    ap.add_argument("--keep", type=Path, help="write the generated outcomes file here (default: a temp file)")
    ap.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "outcomes_1m.jsonl"
        t0 = time.perf_counter()
        info = build(path, args.rows)
        gen_s = time.perf_counter() - t0
        print(f"generated {args.rows:,} lines ({info['bytes'] / 1e6:,.0f} MB, resampled from "
              f"{info['source_rows']:,} real rows) in {gen_s:.1f} s")
        exe = str(Path(sys.executable).parent / "router")
        cmd = [exe, "simulate", "--outcomes", str(path), "--policy", args.policy, "--json", "--no-progress"]
        load = os.getloadavg()[0]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        wall = time.perf_counter() - t0
        rss_mb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    if proc.returncode != 0:
        sys.exit(f"router simulate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout)
    t = res["timings_s"]
    print(f"router simulate on {res['requests']:,} requests ({res['distinct_prompts']:,} distinct prompts): "
          f"{wall:.1f} s wall, peak RSS {rss_mb:,.0f} MB (machine load average at start {load:.1f})")
    print("stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()) +
          f"; reading + start-up {wall - t['total']:.1f}")
    ok = wall <= 60 and rss_mb <= 2048
    print(f"target <= 60 s and <= 2 GB: {'met' if ok else 'MISSED'}")
    if args.no_readme:
        return
    rows = [[f"{res['requests']:,}", f"{res['distinct_prompts']:,}", f"{wall:.1f}", f"{wall - t['total']:.1f}",
             f"{t['classify']:.1f}", f"{t['decide']:.2f}", f"{t['sweep']:.2f}", f"{rss_mb:,.0f}"]]
    body = f"""### Scale: 1,000,000 requests

`python benchmarks/bench_simulate.py` — {args.rows:,} outcome lines resampled (seed 0) from {info['source_rows']:,}
real rows (RouteLLM MMLU + locally measured sentiment), then `router simulate --policy {args.policy} --json` in a
fresh process on this 2-core machine (shared: 1-minute load average {load:.1f} at start); wall time and peak RSS
of that process. Each distinct prompt is classified
once (ONNX classifier) and decided once with `decide_pure`; per-request work is numpy gathers.

{md_table(["requests", "distinct prompts", "wall s", "read + start-up s", "classify s", "decide s",
           "APGR sweep s", "peak RSS MB"], rows)}

Target ≤ 60 s and ≤ 2 GB: **{'met' if ok else 'missed'}**.
"""
    write_section("scale", body)
    print("wrote the scale table into benchmarks/README.md")


if __name__ == "__main__":
    main()
