"""The README's dashboard screenshot (docs/img/dashboard.png), from real traffic on the shipped models.

Starts ``router serve`` on the embedded default (shipped cards and policies) with a fresh ledger, simulates the
shipped outcome files with ``router simulate`` for the frontier panel, sends the shipped sentiment, chat and math
prompts one at a time (``--minutes`` long, so the chart has several 5-minute steps), then opens the dashboard in
headless Chromium (Debian's, through chromium-driver) and saves a full-page screenshot.

    python scripts/dashboard_screenshot.py [--minutes 30] [--out docs/img/dashboard.png] [--port 8790]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("sentiment_local.jsonl", "chat_local.jsonl", "math_local.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to send requests for")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="router-dashboard-"))
    prompts = [json.loads(line)["prompt"] for f in OUTCOMES
               for line in (ROOT / "data" / "outcomes" / f).read_text().splitlines() if line.strip()]
    random.Random(7).shuffle(prompts)
    mixed = tmp / "mixed.jsonl"
    mixed.write_text("".join((ROOT / "data" / "outcomes" / f).read_text() for f in OUTCOMES))
    (tmp / "simulations").mkdir()
    sim = subprocess.run([sys.executable, "-m", "router", "simulate", "--outcomes", str(mixed), "--sweep", "--json",
                          "--no-progress"], capture_output=True, text=True, check=True)
    (tmp / "simulations" / "shipped-outcomes.json").write_text(sim.stdout)
    config = tmp / "config.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp / 'ledger.sqlite3'}\n"
                      f"dashboard: {{refresh_s: 2, recent: 12, simulation: {tmp / 'simulations'}}}\n")
    port = args.port or _free_port()
    log = (tmp / "serve.log").open("wb")
    router_bin = shutil.which("router") or str(Path(sys.executable).parent / "router")
    proc = subprocess.Popen([router_bin, "serve", "--port", str(port), "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/health")
        end = time.time() + 60 * args.minutes
        sent = 0
        gap = 60 * args.minutes / len(prompts)
        while time.time() < end:
            r = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
                "model": "router", "messages": [{"role": "user", "content": prompts[sent % len(prompts)]}]})
            sent += 1
            print(f"{sent:4d} {r.status_code} {r.headers.get('x-router-model')}", flush=True)
            time.sleep(max(0.0, gap - r.elapsed.total_seconds()))
        _screenshot(f"{url}/dashboard#window=1h&by=model", args.out)
        print(f"{sent} requests; screenshot: {args.out}")
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer within {timeout:g} s")


def _screenshot(url: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp(prefix="router-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000",
                "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        driver.get(url)
        deadline = time.time() + 30
        while not driver.execute_script("return document.body.dataset.updated") and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(1)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height + 20)
        time.sleep(1)
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
