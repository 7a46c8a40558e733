"""What the proxy costs: the same requests sent directly to an instant OpenAI-compatible backend and through
``router serve`` routing to it via the HTTP backend (SQLite ledger on), at concurrency 1, 16 and 64; plus the
specialist path (sentiment requests answered in-process by the ONNX specialist, no upstream).

Every request's prompt differs (the 20 prompts of data/energy_prompts.jsonl, or a review sentence from
data/sentiment_polarity, each with its request number), the same sequence for both targets, so nothing can be
answered from a cache. Everything runs on 127.0.0.1: the test upstream (tests/servers/instant_upstream.py,
FastAPI on uvicorn with uvloop/httptools), one ``router serve`` worker, and this load generator, a minimal
keep-alive HTTP/1.1 client on asyncio streams (so the client's own cost stays small and is the same for both
targets). Besides latency and throughput it reports the CPU time the proxy and the upstream processes used per
request (Linux ``/proc``), the figure that decides throughput on a machine with few cores, and checks in
``/metrics`` that every request was answered by the model its path names.

    python benchmarks/bench_proxy.py [--requests 2000] [--rounds 3] [--floor] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers.procs import free_port, wait_ready  # noqa: E402  (the tests' process helpers, one copy)

QUESTION = "What is the capital of France?"
REVIEW = "Is this review positive or negative? 'a gorgeous, witty film with a heart of gold'"


# Left out of the HTTP rows: the one sentiment request of data/energy_prompts.jsonl (the specialist rows cover
# that path), and a yes/no question that an earlier request classifier sent to the sentiment specialist once
# anything was appended to it (the retrained one sends it to chat); kept out so the rows stay comparable.
_NOT_HTTP = ("Is this review positive or negative?", "Is water wet?")


def questions(n: int) -> list[str]:
    """``n`` distinct general requests: the prompts of data/energy_prompts.jsonl in turn (less ``_NOT_HTTP``),
    each with its request number."""
    prompts = [json.loads(line)["prompt"] for line in (ROOT / "data" / "energy_prompts.jsonl").open()]
    prompts = [p for p in prompts if not p.startswith(_NOT_HTTP)]
    return [f"{prompts[i % len(prompts)]} (request {i})" for i in range(n)]


def reviews(n: int) -> list[str]:
    """``n`` distinct sentiment requests: review sentences of data/sentiment_polarity, positive and negative."""
    folder = ROOT / "data" / "sentiment_polarity"
    pos = (folder / "rt-polarity.pos").read_text(encoding="latin-1").splitlines()
    neg = (folder / "rt-polarity.neg").read_text(encoding="latin-1").splitlines()
    lines = [s.strip() for pair in zip(pos, neg, strict=False) for s in pair if s.strip()]
    return [f"Is this review positive or negative? '{lines[i % len(lines)]}'" for i in range(n)]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux), or None where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def answered_by(port: int) -> dict[str, float]:
    """Requests answered so far per model, from the proxy's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("router_requests_total{") and 'outcome="ok"' in line:
            model = line.split('model="', 1)[1].split('"', 1)[0]
            out[model] = out.get(model, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def write_config(tmp: Path, upstream_port: int, tree: Path = ROOT) -> Path:
    """A config over ``tree``'s shipped classifier, specialist and policies (an earlier commit's own, in an A/B)
    and one remote card on the instant upstream."""
    models = tmp / "models"
    models.mkdir()
    # the shipped request classifier and sentiment specialist, so routing decisions are the real ones
    for name in ("classifier", "sentiment"):
        (models / name).symlink_to(tree / "models" / name)
    shutil.copy(tree / "models" / "sentiment-onnx.yaml", models / "sentiment-onnx.yaml")
    (models / "remote-echo.yaml").write_text(f"""name: remote-echo
tier: small
backend:
  type: openai
  base_url: http://127.0.0.1:{upstream_port}/v1
  model: echo
  timeout_s: 30
  max_retries: 1
context_length: 8192
energy: {{per_call_j: 1.0, per_input_token_j: 0.01, per_output_token_j: 0.1, source: estimate,
          citation: benchmark card}}
""")
    config = tmp / "config.yaml"  # the shipped policies: the default `balanced` decides
    config.write_text(f"models_dir: {models}\npolicies_dir: {tree / 'policies'}\n"
                      f"ledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\n")
    return config


class Conn:
    """One keep-alive HTTP/1.1 connection; reads responses with Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def raw_request(port: int, body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


async def load(port: int, bodies: list[dict[str, object]], concurrency: int, total: int,
               cpu_pids: dict[str, int] | None = None) -> dict[str, float]:
    """Send ``total`` requests (``bodies`` in turn) over ``concurrency`` keep-alive connections; latency
    percentiles, req/s and, for each process in ``cpu_pids``, its CPU milliseconds per request."""
    warm = min(concurrency, 8)
    raws = [raw_request(port, body) for body in bodies[: total + warm]]
    latencies: list[float] = []
    bad = 0
    sent = 0

    async def worker() -> None:
        nonlocal sent, bad
        conn = Conn(port)
        try:
            while sent < total:
                raw = raws[warm + sent % (len(raws) - warm)]
                sent += 1
                t0 = time.perf_counter()
                status = await conn.request(raw)
                latencies.append(time.perf_counter() - t0)
                bad += status != 200
        finally:
            conn.close()

    # warm up: connections, upstream connection pool, first-call imports
    await asyncio.gather(*(Conn(port).request(raws[i]) for i in range(warm)))
    cpu0 = {name: cpu_seconds(pid) for name, pid in (cpu_pids or {}).items()}
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    latencies.sort()
    if bad:
        raise RuntimeError(f"{bad} of {total} requests did not answer 200")
    result = {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "rps": len(latencies) / wall,
        "n": float(len(latencies)),
    }
    for name, pid in (cpu_pids or {}).items():
        before, after = cpu0[name], cpu_seconds(pid)
        if before is not None and after is not None:
            result[f"cpu_ms_{name}"] = (after - before) * 1000 / len(latencies)
    return result


def start_upstream(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The instant TEST UPSTREAM on uvicorn (uvloop, httptools), ready to answer."""
    up = subprocess.Popen(
        [sys.executable, "-c", "import uvicorn, sys; sys.path.insert(0, 'tests');"
         "from servers.instant_upstream import app;"
         f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning', access_log=False,"
         " loop='uvloop', http='httptools')"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_ready(f"http://127.0.0.1:{port}/v1/models", up)
    return up


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per run at c=16 and c=64 (c=1: half)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="direct/proxy rounds per concurrency, alternating; the tables show the median of each figure")
    ap.add_argument("--json", action="store_true", help="also print the figures as JSON")
    ap.add_argument("--floor", action="store_true",
                    help="also run the proxy's server stack with no routing (benchmarks/_passthrough.py) in every "
                         "round: the difference to the proxy's row is what routing costs")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_proxy_"))
    up_port, proxy_port = free_port(), free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        up = start_upstream(up_port, env)
        procs.append(up)
        config = write_config(tmp, up_port)
        router_bin = shutil.which("router") or str(Path(sys.executable).parent / "router")
        proxy = subprocess.Popen(
            [router_bin, "serve", "--port", str(proxy_port), "--config", str(config)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(proxy)
        wait_ready(f"http://127.0.0.1:{proxy_port}/health", proxy)
        floor_port = free_port()
        if args.floor:
            floor = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "_passthrough.py"), str(floor_port),
                                      str(up_port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
            procs.append(floor)
            wait_ready(f"http://127.0.0.1:{floor_port}/health", floor)

        n_max = args.requests + 8
        direct_bodies = [{"model": "echo", "messages": [{"role": "user", "content": q}], "max_tokens": 16}
                         for q in questions(n_max)]
        proxy_bodies = [{**b, "model": "router"} for b in direct_bodies]  # the same prompts, routed
        spec_bodies = [{"model": "router", "messages": [{"role": "user", "content": r}]} for r in reviews(n_max)]
        check = httpx.post(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", json=proxy_bodies[0], timeout=10)
        assert check.headers["x-router-model"] == "remote-echo", check.text
        check = httpx.post(f"http://127.0.0.1:{proxy_port}/v1/chat/completions", json=spec_bodies[0], timeout=10)
        assert check.headers["x-router-model"] == "sentiment-onnx", check.text

        load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        pids = {"proxy": proxy.pid, "upstream": up.pid}
        results: dict[str, dict[int, dict[str, float]]] = {"direct": {}, "proxy": {}, "specialist": {}}
        if args.floor:
            results["floor"] = {}
        rounds: dict[int, list[tuple[float, float]]] = {}  # c -> (direct req/s, proxy req/s) per round
        routed: dict[str, dict[str, float]] = {"proxy": {}, "specialist": {}}

        def run(key: str, port: int, bodies: list[dict[str, object]], c: int, n: int, cpu: dict[str, int]) -> \
                dict[str, float]:
            before = answered_by(proxy_port) if key in routed else {}
            result = asyncio.run(load(port, bodies, c, n, cpu))
            if key in routed:
                for model, count in answered_by(proxy_port).items():
                    routed[key][model] = routed[key].get(model, 0.0) + count - before.get(model, 0.0)
            return result

        for c in (1, 16, 64):
            n = args.requests // 2 if c == 1 else args.requests
            # direct and proxy alternate, round after round: on shared cores the speed of the machine drifts
            # by tens of percent within minutes, and a ratio of two runs taken minutes apart measures the drift
            per_round: dict[str, list[dict[str, float]]] = {"direct": [], "proxy": []}
            if args.floor:
                per_round["floor"] = []
            for _ in range(args.rounds):
                per_round["direct"].append(run("direct", up_port, direct_bodies, c, n, {"upstream": up.pid}))
                per_round["proxy"].append(run("proxy", proxy_port, proxy_bodies, c, n, pids))
                if args.floor:
                    per_round["floor"].append(run("floor", floor_port, proxy_bodies, c, n,
                                                  {"proxy": floor.pid, "upstream": up.pid}))
            rounds[c] = [(d["rps"], p["rps"]) for d, p in zip(per_round["direct"], per_round["proxy"], strict=True)]
            for key, runs in per_round.items():
                shared = [k for k in runs[0] if all(k in r for r in runs)]
                results[key][c] = {k: statistics.median(r[k] for r in runs) for k in shared}
            results["specialist"][c] = run("specialist", proxy_port, spec_bodies, c, min(n, 2000), pids)  # ~150 req/s

        print(f"bench_proxy: {os.cpu_count()} CPUs, load average {load_avg:.2f} at the start; requests per run: "
              f"c=1 {args.requests // 2}, c=16/64 {args.requests} (specialist: at most 2,000), every prompt different; "
              f"direct and proxy runs alternate for {args.rounds} rounds (medians shown; the specialist: one run); "
              "one `router serve` worker, SQLite ledger on\n")
        print("| path | concurrency | p50 ms | p99 ms | req/s | proxy CPU ms/req | upstream CPU ms/req |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        names = {"direct": "direct to backend", "proxy": "through router serve (HTTP backend)",
                 "specialist": "router serve, specialist in-process"}
        if args.floor:
            names["floor"] = "server stack alone, no routing (--floor)"
        for key, name in names.items():
            for c, r in results[key].items():
                proxy_cpu = f"{r['cpu_ms_proxy']:.3f}" if "cpu_ms_proxy" in r else "-"
                up_cpu = f"{r['cpu_ms_upstream']:.3f}" if "cpu_ms_upstream" in r and key != "specialist" else "-"
                print(f"| {name} | {c} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:.0f} | {proxy_cpu} "
                      f"| {up_cpu} |")
        d1, p1 = results["direct"][1], results["proxy"][1]
        d64, p64 = results["direct"][64], results["proxy"][64]
        print()
        print(f"overhead at c=1: p50 {p1['p50_ms'] - d1['p50_ms']:+.2f} ms (target <= 2), "
              f"p99 {p1['p99_ms'] - d1['p99_ms']:+.2f} ms (target <= 5)")
        print(f"throughput at c=64: {p64['rps']:.0f} vs {d64['rps']:.0f} req/s direct = "
              f"{p64['rps'] / d64['rps']:.1%} (target >= 50%); round by round: "
              + ", ".join(f"{p / d:.0%}" for d, p in rounds[64]))
        if args.floor:
            f1, f64 = results["floor"][1], results["floor"][64]
            routing_ms = p64["cpu_ms_proxy"] - f64["cpu_ms_proxy"]
            print(f"server stack alone (no routing) at c=64: {f64['rps']:.0f} req/s = {f64['rps'] / d64['rps']:.1%} "
                  f"of direct; proxy CPU per request {f64['cpu_ms_proxy']:.3f} ms without routing, "
                  f"{p64['cpu_ms_proxy']:.3f} ms with it (routing {routing_ms:.3f} ms); "
                  f"at c=1 {f1['cpu_ms_proxy']:.3f} vs {p1['cpu_ms_proxy']:.3f} ms")
        for key, counts in routed.items():
            print(f"answered by (from /metrics), {names[key]}: "
                  + ", ".join(f"{m} {v:.0f}" for m, v in sorted(counts.items()) if v))
        if args.json:
            print(json.dumps({"load_average": load_avg, "results": results, "rounds_rps": rounds,
                              "answered_by": routed}, indent=1))
    finally:
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
