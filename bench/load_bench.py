"""Load on `tagtune serve`: a bounded burst of concurrent requests of real tweets.

    .venv/bin/python bench/load_bench.py [--model TAGGER_DIR] [--requests 2000] [--clients 32]
    .venv/bin/python bench/load_bench.py --smoke

Starts `tagtune serve` on the tagger folder (default: runs/wnut-minilm from ``make demo``; without
it, MiniLM is fine-tuned for one epoch on 600 WNUT tweets first) on a free local port, sends
``--requests`` requests from ``--clients`` concurrent clients (asyncio + httpx), each with 1 to 4
WNUT-2016 tweets, and prints throughput (requests/s, texts/s), latency percentiles, errors (any
answer other than 200 with one result per text and offsets that match the text) and the sizes of
the micro-batches the server formed (from its /health counters). Clients and server share the
machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

from tagtune.examples import minilm_dir, wnut_sentences, write_conll  # noqa: E402


def quick_tagger(folder: Path, tweets) -> Path:
    import tagtune

    train = folder / "train.conll"
    write_conll(train, tweets[:600])
    out = folder / "tagger"
    print(f"training a quick tagger in {out} (no --model and no runs/wnut-minilm)", file=sys.stderr)
    tagtune.train(model=str(minilm_dir()), train=str(train), out=str(out), epochs=1, lr=2e-4, seed=0,
                  progress=False)
    return out


def start_server(model: Path, log_path: Path, options: list[str]) -> tuple[subprocess.Popen, str]:
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "tagtune", "serve", str(model), "--port", "0", *options],
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 300
    while True:
        found = re.search(r"on (http://\S+)", log_path.read_text())
        if found:
            return process, found.group(1)
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            sys.exit(f"load_bench: the server did not start:\n{log_path.read_text()}")
        time.sleep(0.1)


def valid(response: httpx.Response, texts: list[str]) -> bool:
    if response.status_code != 200:
        return False
    results = response.json()["results"]
    return len(results) == len(texts) and all(
        text[s["start"]:s["end"]] == s["text"] for text, r in zip(texts, results) for s in r["spans"])


async def burst(url: str, texts: list[str], requests: int, clients: int, seed: int) -> dict:
    rng = random.Random(seed)
    jobs = [rng.sample(texts, rng.randint(1, 4)) for _ in range(requests)]
    latencies: list[float] = []
    failures: list[str] = []
    next_job = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_job
        while next_job < len(jobs):
            job = jobs[next_job]
            next_job += 1
            start = time.perf_counter()
            try:
                response = await http.post("/v1/extract", json={"texts": job})
                ok = valid(response, job)
                if not ok:
                    failures.append(f"{response.status_code}: {response.text[:200]}")
            except httpx.HTTPError as e:
                failures.append(f"{type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as http:
        await http.post("/v1/extract", json={"texts": texts[:4]})  # warm-up
        before = (await http.get("/health")).json()["batching"]
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        seconds = time.perf_counter() - start
        after = (await http.get("/health")).json()

    def delta(key):
        out = {k: n - before[key].get(k, 0) for k, n in after["batching"][key].items()}
        return {k: n for k, n in sorted(out.items(), key=lambda kv: int(kv[0])) if n > 0}

    latencies.sort()

    def pct(p):
        return 1000 * latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    n_texts = sum(map(len, jobs))
    return {
        "model": after["model"], "device": after["device"], "requests": requests, "clients": clients,
        "texts": n_texts, "seconds": round(seconds, 3),
        "requests_per_second": round(requests / seconds, 1), "texts_per_second": round(n_texts / seconds, 1),
        "p50_ms": round(pct(50), 1), "p90_ms": round(pct(90), 1), "p99_ms": round(pct(99), 1),
        "max_ms": round(1000 * latencies[-1], 1), "errors": len(failures), "first_errors": failures[:3],
        "batches": after["batching"]["batches"] - before["batches"],
        "requests_per_batch": delta("requests_per_batch"), "texts_per_batch": delta("texts_per_batch"),
    }


def histogram_line(counts: dict) -> str:
    return " ".join(f"{k}:{n}" for k, n in counts.items())


def show(r: dict) -> None:
    batches = max(r["batches"], 1)
    mean_requests = r["requests"] / batches
    mean_texts = sum(int(k) * n for k, n in r["texts_per_batch"].items()) / batches
    rows = [
        ("model", f"{r['model']} on {r['device']}"),
        ("requests / clients", f"{r['requests']} / {r['clients']} ({r['texts']} texts)"),
        ("wall time", f"{r['seconds']:.2f} s"),
        ("throughput", f"{r['requests_per_second']:.1f} requests/s, {r['texts_per_second']:.1f} texts/s"),
        ("latency", f"p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                    f"max {r['max_ms']:.1f} ms"),
        ("errors", str(r["errors"])),
        ("micro-batches", f"{r['batches']}: {mean_requests:.1f} requests, {mean_texts:.1f} texts each on average"),
        ("requests per batch", histogram_line(r["requests_per_batch"])),
        ("texts per batch (max)", str(max(map(int, r["texts_per_batch"]), default=0))),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for failure in r["first_errors"]:
        print(f"  error: {failure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="trained tagger folder (default: runs/wnut-minilm, else a quick one)")
    parser.add_argument("--requests", type=int, default=2000, help="requests to send (default 2000)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tweet choice (default 0)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: 64 requests from 8 clients")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--server-option", action="append", default=[],
                        help="extra `tagtune serve` option, e.g. --server-option=--batch-wait-ms=2 (repeatable)")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.clients = 64, 8

    tweets = wnut_sentences()
    texts = [" ".join(tokens) for tokens, _ in tweets]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model:
            model = Path(args.model)
        elif (ROOT / "runs" / "wnut-minilm").is_dir():
            model = ROOT / "runs" / "wnut-minilm"
        else:
            model = quick_tagger(tmp, tweets)
        process, url = start_server(model, tmp / "server.log", args.server_option)
        try:
            result = asyncio.run(burst(url, texts, args.requests, args.clients, args.seed))
        finally:
            process.terminate()
            process.wait(timeout=60)
    show(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
