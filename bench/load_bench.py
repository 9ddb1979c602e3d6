"""Load on `tagtune serve`: a bounded burst of concurrent requests of real tweets.

    .venv/bin/python bench/load_bench.py [--model TAGGER_DIR] [--requests 2000] [--clients 32]
    .venv/bin/python bench/load_bench.py --requests 3000 --clients 1000
    .venv/bin/python bench/load_bench.py --smoke

Starts `tagtune serve` on the tagger folder (default: runs/wnut-minilm from ``make demo``; without
it, MiniLM is fine-tuned for one epoch on 600 WNUT tweets first) on a free local port, opens one
keep-alive connection per client (``--clients``; the open-files limit is raised to fit), then sends
``--requests`` requests, each with 1 to 4 WNUT-2016 tweets, each client sending its next request
when its answer arrives. A client answered 503 (queue full or timeout) waits its Retry-After before
its next request; the request is not retried. Prints throughput, latency percentiles of the 200
answers and of the 503s, errors (anything else: other statuses, an answer without one result per
text or with offsets that do not match the text, a broken connection) and the sizes of the
micro-batches the server formed (from its /health counters). The clients speak HTTP/1.1 over
asyncio streams, which costs little CPU next to the server's; clients and server share the
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

from tagtune.apps.examples import minilm_dir, wnut_sentences, write_conll  # noqa: E402


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


def raise_open_files_limit(needed: int) -> None:
    """Raise this process's soft limit of open files (the server inherits it) to ``needed`` if it is lower."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(f"load_bench: the open-files limit is {target}, under the {needed} this run needs",
                  file=sys.stderr)


class Connection:
    """One client's keep-alive HTTP/1.1 connection: requests with a JSON body, answers with Content-Length."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, dict, bytes]:
        """Status, headers (lower-case names) and body; reconnects once if a kept-alive connection was closed."""
        fresh = self.writer is None
        if fresh:
            await self.open()
        try:
            return await self._exchange(path, body)
        except (ConnectionError, asyncio.IncompleteReadError) as e:
            self.close()
            if fresh or not getattr(e, "before_answer", False):
                raise
            await self.open()
            return await self._exchange(path, body)

    async def _exchange(self, path: str, body: bytes) -> tuple[int, dict, bytes]:
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(), self.port,
                                                            len(body), body))
        try:
            await self.writer.drain()
            status_line = await self.reader.readline()
        except ConnectionError as e:
            e.before_answer = True
            raise
        if not status_line:
            error = ConnectionResetError("the server closed the connection")
            error.before_answer = True
            raise error
        status = int(status_line.split()[1])
        headers = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers:
            raise ConnectionError(f"answer {status} without Content-Length")
        content = await self.reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, content


def check_answer(status: int, content: bytes, texts: list[str]) -> str | None:
    """None for a valid 200 answer, else what is wrong with it."""
    if status != 200:
        return f"{status}: {content[:200].decode(errors='replace')}"
    results = json.loads(content)["results"]
    if len(results) != len(texts) or not all(
            text[s["start"]:s["end"]] == s["text"] for text, r in zip(texts, results) for s in r["spans"]):
        return f"200 with wrong results: {content[:200].decode(errors='replace')}"
    return None


async def burst(url: str, texts: list[str], requests: int, clients: int, seed: int) -> dict:
    rng = random.Random(seed)
    jobs = [rng.sample(texts, rng.randint(1, 4)) for _ in range(requests)]
    bodies = [json.dumps({"texts": job}).encode() for job in jobs]
    latencies: list[float] = []  # of valid 200 answers
    busy_latencies: list[float] = []  # of 503 answers
    busy = {"queue full": 0, "timeout": 0, "other": 0}
    failures: list[str] = []
    next_job = 0
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connections = [Connection(host, int(port)) for _ in range(clients)]

    async def client(connection: Connection) -> None:
        nonlocal next_job
        while next_job < len(jobs):
            i = next_job
            next_job += 1
            start = time.perf_counter()
            try:
                status, headers, content = await connection.post("/v1/extract", bodies[i])
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                failures.append(f"{type(e).__name__}: {e}")
                connection.close()
                continue
            elapsed = time.perf_counter() - start
            if status == 503:
                busy_latencies.append(elapsed)
                message = json.loads(content).get("error", "")
                busy["queue full" if "queue is full" in message else "timeout" if "timeout" in message
                     else "other"] += 1
                await asyncio.sleep(float(headers.get("retry-after", 1)))
                continue
            problem = check_answer(status, content, jobs[i])
            if problem:
                failures.append(problem)
            else:
                latencies.append(elapsed)

    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        await http.post("/v1/extract", json={"texts": texts[:4]})  # warm-up
        before = (await http.get("/health")).json()
        await asyncio.gather(*(c.open() for c in connections))
        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in connections))
        seconds = time.perf_counter() - start
        for c in connections:
            c.close()
        after = (await http.get("/health")).json()

    def delta(key):
        out = {k: n - before["batching"][key].get(k, 0) for k, n in after["batching"][key].items()}
        return {k: n for k, n in sorted(out.items(), key=lambda kv: int(kv[0])) if n > 0}

    def pct(values, p):
        values = sorted(values)
        return round(1000 * values[min(len(values) - 1, int(p / 100 * len(values)))], 1) if values else None

    n_texts = sum(map(len, jobs))
    answered = len(latencies)
    answered_texts = sum(delta("texts_per_batch").get(k, 0) * int(k) for k in delta("texts_per_batch"))
    queue = {k: after["queue"][k] - before["queue"][k] for k in
             ("rejected", "timed_out", "disconnected", "dropped_requests", "dropped_texts")} if "queue" in after else {}
    return {
        "model": after["model"], "device": after["device"], "requests": requests, "clients": clients,
        "texts": n_texts, "seconds": round(seconds, 3),
        "answered": answered, "requests_per_second": round(answered / seconds, 1),
        "texts_per_second": round(answered_texts / seconds, 1),
        "p50_ms": pct(latencies, 50), "p90_ms": pct(latencies, 90), "p99_ms": pct(latencies, 99),
        "max_ms": pct(latencies, 100),
        "busy_503": sum(busy.values()), "busy_503_queue_full": busy["queue full"], "busy_503_timeout": busy["timeout"],
        "busy_p50_ms": pct(busy_latencies, 50), "busy_p99_ms": pct(busy_latencies, 99),
        "errors": len(failures), "first_errors": failures[:3],
        "server_queue": queue,
        "batches": after["batching"]["batches"] - before["batching"]["batches"],
        "requests_per_batch": delta("requests_per_batch"), "texts_per_batch": delta("texts_per_batch"),
    }


def histogram_line(counts: dict) -> str:
    return " ".join(f"{k}:{n}" for k, n in counts.items())


def show(r: dict) -> None:
    batches = max(r["batches"], 1)
    mean_requests = sum(int(k) * n for k, n in r["requests_per_batch"].items()) / batches
    mean_texts = sum(int(k) * n for k, n in r["texts_per_batch"].items()) / batches

    def ms(value):
        return "-" if value is None else f"{value:.1f} ms"

    rows = [
        ("model", f"{r['model']} on {r['device']}"),
        ("requests / clients", f"{r['requests']} / {r['clients']} ({r['texts']} texts)"),
        ("wall time", f"{r['seconds']:.2f} s"),
        ("answered (200)", f"{r['answered']}: {r['requests_per_second']:.1f} requests/s, "
                           f"{r['texts_per_second']:.1f} texts/s tagged"),
        ("latency of 200s", f"p50 {ms(r['p50_ms'])}, p90 {ms(r['p90_ms'])}, p99 {ms(r['p99_ms'])}, "
                            f"max {ms(r['max_ms'])}"),
        ("503 busy", f"{r['busy_503']} ({r['busy_503_queue_full']} queue full, {r['busy_503_timeout']} timeout); "
                     f"p50 {ms(r['busy_p50_ms'])}, p99 {ms(r['busy_p99_ms'])}"),
        ("errors", str(r["errors"])),
        ("micro-batches", f"{r['batches']}: {mean_requests:.1f} requests, {mean_texts:.1f} texts each on average"),
        ("requests per batch", histogram_line(r["requests_per_batch"])),
        ("texts per batch (max)", str(max(map(int, r["texts_per_batch"]), default=0))),
    ]
    if r["server_queue"]:
        rows.append(("server queue", " ".join(f"{k}:{n}" for k, n in r["server_queue"].items())))
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
    parser.add_argument("--clients", type=int, default=32,
                        help="concurrent clients, one connection each (default 32)")
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
        raise_open_files_limit(2 * args.clients + 256)  # the bench's sockets and the server's
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
