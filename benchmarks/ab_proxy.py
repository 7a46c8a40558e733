"""A/B of the proxy's cost: this working tree against an earlier commit, alternating, on one instant upstream.

On a shared machine whose speed drifts by tens of percent within seconds, two benchmark runs taken minutes apart
cannot tell a 10 % change from the drift. This starts the instant upstream once and two `router serve`
processes, the base commit's (checked out in a temporary `git worktree`) and this tree's, with the same config,
models and prompts, and alternates concurrency-64 runs between them (A B, B A, A B ...). It prints each round's
proxy CPU per request and requests per second, their medians, and the median of the per-round ratios B/A.

    python benchmarks/ab_proxy.py --base 683d36a --rounds 8
    python benchmarks/ab_proxy.py --base 683d36a --budget        # both with a budget on the answering model
    python benchmarks/ab_proxy.py --budget-cost                  # what a budget costs: this tree without / with
    python benchmarks/ab_proxy.py --same --a-config "journal: {enabled: false}"   # what the journal costs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_proxy import ROOT, free_port, load, questions, start_upstream, stop, wait_ready, write_config  # noqa: E402


def with_budget(config: Path, folder: Path, tree: Path = ROOT) -> None:
    """``tree``'s shipped policies, with ``balanced`` also budgeting the small tier (the bench's upstream model)."""
    policies = folder / "policies"
    shutil.copytree(tree / "policies", policies)
    balanced = policies / "balanced.yaml"
    text = balanced.read_text()
    if "\nbudgets:\n" not in text:
        raise SystemExit("policies/balanced.yaml has no `budgets:` list to add to")
    small = "  - model: tier:small\n    joules: 1.0e12\n    per: hour\n"
    balanced.write_text(text.replace("\nbudgets:\n", "\nbudgets:\n" + small, 1))
    config.write_text(config.read_text().replace(f"policies_dir: {tree / 'policies'}", f"policies_dir: {policies}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--base", help="the commit to compare against (A); B is the working tree")
    what.add_argument("--budget-cost", action="store_true",
                      help="the working tree against itself: A without, B with a budget on the answering model")
    what.add_argument("--same", action="store_true",
                      help="the working tree against itself, told apart by --a-config / --b-config")
    ap.add_argument("--a-config", default="", help="YAML lines added to A's config (e.g. 'journal: {enabled: false}')")
    ap.add_argument("--b-config", default="", help="YAML lines added to B's config")
    ap.add_argument("--rounds", type=int, default=8, help="runs of each, alternating (default 8)")
    ap.add_argument("--requests", type=int, default=3000, help="requests per run (default 3000)")
    ap.add_argument("--concurrency", type=int, default=64, help="connections (default 64)")
    ap.add_argument("--budget", action="store_true",
                    help="give the answering model an energy budget (large enough never to refuse), so every request "
                         "reads, reserves and settles it")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ab_proxy_"))
    base_tree = tmp / "base" if args.base else ROOT
    if args.base:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base_tree), args.base],
                       check=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up_port = free_port()
        procs.append(start_upstream(up_port, env))
        servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        for name, tree in (("A", base_tree), ("B", ROOT)):
            folder = tmp / name
            folder.mkdir()
            config, port = write_config(folder, up_port, tree), free_port()
            if args.budget or (args.budget_cost and name == "B"):
                with_budget(config, folder, tree)
            extra = args.a_config if name == "A" else args.b_config
            if extra:
                config.write_text(config.read_text() + extra.rstrip("\n") + "\n")
            # the tree's own package first on the path (the installed one is this working tree, editable)
            proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--port", str(port), "--config",
                                     str(config)], cwd=tree, env={**env, "PYTHONPATH": str(tree)},
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            procs.append(proc)
            wait_ready(f"http://127.0.0.1:{port}/health", proc)
            servers[name] = (proc, port)
        bodies = [{"model": "router", "messages": [{"role": "user", "content": q}], "max_tokens": 16}
                  for q in questions(args.requests + 8)]
        for _, port in servers.values():  # warm both
            asyncio.run(load(port, bodies, args.concurrency, min(1000, args.requests)))
        runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
        if args.base:
            print(f"A = {args.base} ({base_tree}), B = working tree ({ROOT}); ", end="")
        elif args.same:
            a_cfg, b_cfg = args.a_config or "its config", args.b_config or "its config"
            print(f"A = working tree with {a_cfg!r}, B = with {b_cfg!r}; ", end="")
        else:
            print(f"A = working tree ({ROOT}) without a budget, B = the same with a budget on the answering model; ",
                  end="")
        print(f"c={args.concurrency}, {args.requests} requests per run, {args.rounds} rounds alternating"
              + ("; the answering model has an energy budget" if args.budget else "") + "\n")
        print("| round | A proxy CPU ms/req | B proxy CPU ms/req | A req/s | B req/s |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                proc, port = servers[name]
                runs[name].append(asyncio.run(load(port, bodies, args.concurrency, args.requests,
                                                   {"proxy": proc.pid})))
            a, b = runs["A"][-1], runs["B"][-1]
            print(f"| {r + 1} | {a['cpu_ms_proxy']:.3f} | {b['cpu_ms_proxy']:.3f} | {a['rps']:.0f} | {b['rps']:.0f} |")
        cpu = {k: [x["cpu_ms_proxy"] for x in v] for k, v in runs.items()}
        rps = {k: [x["rps"] for x in v] for k, v in runs.items()}
        lower = sum(b < a for a, b in zip(cpu["A"], cpu["B"], strict=True))
        print(f"\nmedian proxy CPU per request: A {statistics.median(cpu['A']):.3f} ms, "
              f"B {statistics.median(cpu['B']):.3f} ms; per-round ratio B/A median "
              f"{statistics.median(b / a for a, b in zip(cpu['A'], cpu['B'], strict=True)):.3f}; "
              f"B lower in {lower} of {args.rounds} rounds")
        print(f"median req/s: A {statistics.median(rps['A']):.0f}, B {statistics.median(rps['B']):.0f}; per-round "
              f"ratio B/A median {statistics.median(b / a for a, b in zip(rps['A'], rps['B'], strict=True)):.3f}")
    finally:
        stop(procs)
        if args.base:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
