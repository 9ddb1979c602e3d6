"""``tagtune label``'s throughput against a teacher model, and the student its labels teach, in one run.

    .venv/bin/python bench/label_bench.py                  # throughput, then students (3 seeds; minutes on 2 cores)
    .venv/bin/python bench/label_bench.py --gold-student   # also students trained on gold, for reference (2x time)
    .venv/bin/python bench/label_bench.py --smoke          # a few tweets, 1 epoch, 1 seed: seconds, for CI

The teacher is tests/llm_server.py, the stand-in chat-completions server, run as its own process
and replaying WNUT-2016 gold: each reply waits ``--latency`` seconds (at most ``--slots``
replies at once where given), then names the gold entities of the text, a share
``--error-rate`` of them wrong (half of those left out, half given another WNUT label, drawn
per text with a fixed seed). ``tagtune label`` runs as a whole process on a file of tweets.

1. Throughput: ``--texts`` distinct tweets labelled at each ``--concurrency`` (1, 4, 16) against
   a stand-in with enough slots and one with ``--limited-slots`` (4): texts/s, the speed-up
   over concurrency 1 and the share of the ideal min(concurrency, slots) / latency. Process
   start-up (``label`` on one text at latency 0, median of 3) is reported apart and taken off
   every wall time. What tagtune adds per text is measured at latency 0 on ``--overhead-texts``
   tweets, beside the round trip of the same request sent bare (httpx, one connection) and the
   time of a line appended and fsynced in the work folder (``label`` fsyncs two per reply: the
   cache's and OUT's).
2. A student from a teacher: WNUT-2016 split as bench/train_bench.py splits it (400 test tweets,
   10% of the rest dev, the rest training data); the stand-in replays the train and dev gold;
   ``label`` labels the train and dev tweets at the fastest concurrency of part 1; ``tagtune
   score`` scores the teacher's train labels against gold; ``tagtune train`` (MiniLM, the
   bench's settings: 3 epochs, lr 1e-4, a token budget of 32 mean windows with length buckets)
   trains a student on them per seed; the student predicts the test tweets and ``score`` scores
   it. ``--gold-student`` also trains one on the gold train and dev files. Last, the student's
   texts/s (loaded in this process, median of ``--repeat`` passes over the test tweets) against
   the teacher's while labelling the training tweets.

``--json`` writes every figure; the tables printed at the end are Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from calibration_bench import split  # noqa: E402
from flops import machine, machine_line  # noqa: E402
from train_bench import epoch_entries, run  # noqa: E402

from tagtune.apps.examples import minilm_dir, write_conll  # noqa: E402

STANDIN = HERE.parent / "tests" / "llm_server.py"


@contextlib.contextmanager
def standin(gold: list[Path], env: dict, latency: float, error_rate: float, slots: int | None = None):
    """The stand-in teacher as its own process, replaying ``gold``; yields its base URL."""
    cmd = [sys.executable, str(STANDIN), "--gold", *map(str, gold), "--error-rate", str(error_rate),
           "--latency", str(latency), *(["--slots", str(slots)] if slots else [])]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            raise SystemExit(f"bench: the stand-in server did not start (exit code {proc.wait()})")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def label(texts: Path, out: Path, url: str, labels: list[str], concurrency: int, env: dict) -> dict:
    """One ``tagtune label`` process on ``texts``: its wall time and the requests it sent (the
    replies in its cache, every reply of the stand-in being readable)."""
    usage = run([sys.executable, "-m", "tagtune", "label", str(texts), "-o", str(out), "--labels", ",".join(labels),
                 "--llm", url, "--llm-model", "teacher", "--concurrency", str(concurrency), "--quiet"], env)
    cache = out.with_name(out.name + ".llm-cache")
    return {"wall_seconds": usage["wall_seconds"], "requests": len(cache.read_text().splitlines())}


def tagtune_json(env: dict, *args: str) -> dict:
    """The JSON a tagtune command prints (score)."""
    result = subprocess.run([sys.executable, "-m", "tagtune", *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"bench: tagtune {' '.join(args)} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def bare_round_trip(texts: Path, url: str, labels: list[str], env: dict, n: int) -> float:
    """Seconds per request of ``label``'s first request (from ``--dry-run``) sent ``n`` times,
    one after the other on one connection with httpx, as bare as a client gets."""
    import httpx

    body = json.loads(subprocess.run(
        [sys.executable, "-m", "tagtune", "label", str(texts), "-o", os.devnull, "--labels", ",".join(labels),
         "--llm-model", "teacher", "--dry-run"], env=env, capture_output=True, text=True, check=True).stdout)
    with httpx.Client(base_url=url) as client:
        client.post("/chat/completions", json=body).raise_for_status()
        start = time.perf_counter()
        for _ in range(n):
            client.post("/chat/completions", json=body).raise_for_status()
        return (time.perf_counter() - start) / n


def fsync_seconds(folder: Path, n: int) -> float:
    """Median seconds of a 200-byte line appended to a file in ``folder`` and fsynced, as
    ``label``'s journals write each reply."""
    path, times = folder / "fsync.test", []
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        for _ in range(n):
            start = time.perf_counter()
            os.write(fd, b"x" * 199 + b"\n")
            os.fsync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


def throughput(work: Path, gold: list[Path], texts: list[str], labels: list[str], args, env: dict) -> dict:
    """Part 1 (see the module doc)."""
    files = {}
    for name, part in (("texts", texts[:args.texts]), ("overhead", texts[:args.overhead_texts]), ("one", texts[:1])):
        files[name] = work / f"{name}.txt"
        files[name].write_text("".join(t + "\n" for t in part), encoding="utf-8")
    runs = itertools.count()

    def timed(name: str, url: str, concurrency: int) -> dict:
        return label(files[name], work / f"throughput-{next(runs)}.jsonl", url, labels, concurrency, env)

    with standin(gold, env, 0.0, args.error_rate) as url:
        startup = statistics.median(timed("one", url, 1)["wall_seconds"] for _ in range(3))
        bare = bare_round_trip(files["one"], url, labels, env, 200 if not args.smoke else 20)
        fsync = fsync_seconds(work, 200 if not args.smoke else 20)
        overhead = {}
        for c in (1, max(args.concurrency)):
            r = timed("overhead", url, c)
            overhead[str(c)] = {**r, "seconds_per_text": (r["wall_seconds"] - startup) / r["requests"]}
    print(f"bench: start-up of tagtune label {startup:.2f} s; at latency 0, "
          + ", ".join(f"concurrency {c}: {r['seconds_per_text'] * 1000:.2f} ms/text" for c, r in overhead.items())
          + f"; the bare request {bare * 1000:.2f} ms, an fsynced line {fsync * 1000:.2f} ms", flush=True)
    settings = {}
    for slots in (None, args.limited_slots):
        rows = {}
        with standin(gold, env, args.latency, args.error_rate, slots) as url:
            for c in args.concurrency:
                r = timed("texts", url, c)
                net = r["wall_seconds"] - startup
                ideal = min(c, slots or c) / args.latency
                rows[str(c)] = {**r, "net_seconds": net, "texts_per_second": r["requests"] / net,
                                "ideal_texts_per_second": ideal,
                                "overhead_ms_per_text": (net - r["requests"] / ideal) / r["requests"] * 1000}
                print(f"bench: {slots or 'enough'} slots, concurrency {c}: {rows[str(c)]['texts_per_second']:.2f} "
                      f"texts/s (ideal {ideal:.2f})", flush=True)
        first = rows[str(args.concurrency[0])]["texts_per_second"]
        for row in rows.values():
            row["speedup"] = row["texts_per_second"] / first
            row["share_of_ideal"] = row["texts_per_second"] / row["ideal_texts_per_second"]
        settings[str(slots or "enough")] = rows
    return {"startup_seconds": startup, "bare_request_seconds": bare, "fsync_seconds": fsync, "latency_0": overhead,
            "settings": settings}


def student(work: Path, name: str, train: Path, dev: Path, seed: int, budget: int, args,
            env: dict) -> tuple[Path, dict]:
    """A student trained on ``train`` (dev ``dev``), its test tweets predicted and scored."""
    out = work / f"{name}-{seed}"
    usage = run([sys.executable, "-m", "tagtune", "train", "--model", args.model, "--train", str(train),
                 "--dev", str(dev), "--out", str(out), "--patience", "1000", "--quiet", "--seed", str(seed),
                 "--max-tokens", str(budget), "--bucket", "--epochs", str(args.epochs), "--lr", str(args.lr),
                 "--max-length", "128", "--warmup", "0.1", "--weight-decay", "0.01",
                 *(["--save", "last"] if args.smoke else [])], env, quiet=True)
    epochs = epoch_entries(out)
    tokens, seconds = sum(e["train_tokens"] for e in epochs), sum(e["train_seconds"] for e in epochs)
    predicted = work / f"{name}-{seed}-test.jsonl"
    run([sys.executable, "-m", "tagtune", "predict", str(out), str(work / "test.txt"), "-o", str(predicted),
         "--quiet"], env)
    scores = tagtune_json(env, "score", str(work / "test.conll"), str(predicted))
    return out, {"f1": scores["f1"], "precision": scores["precision"], "recall": scores["recall"],
                 "train_wall_seconds": usage["wall_seconds"],
                 "train_tokens_per_second": tokens / seconds}


def student_speed(folder: Path, texts: list[str], repeat: int) -> float:
    """Texts/s of the tagger in ``folder`` loaded here: the median of ``repeat`` passes over ``texts``."""
    from tagtune.inference.tagger import Tagger

    tagger = Tagger.load(folder)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        tagger.predict(texts)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times)


def teach(work: Path, parts: dict, labels: list[str], concurrency: int, startup: float, args, env: dict) -> dict:
    """Part 2 (see the module doc)."""
    from tagtune.text.tokenizer import load_tokenizer

    gold = {name: work / f"{name}.conll" for name in ("train", "dev")}
    teacher = {name: work / f"teacher-{name}.jsonl" for name in ("train", "dev")}
    with standin(list(gold.values()), env, args.latency, args.error_rate) as url:
        labelled = {name: label(gold[name], teacher[name], url, labels, concurrency, env) for name in gold}
    speed = labelled["train"]["requests"] / (labelled["train"]["wall_seconds"] - startup)
    scored = tagtune_json(env, "score", str(gold["train"]), str(teacher["train"]))
    e = args.error_rate
    print(f"bench: teacher on the training tweets: F1 {scored['f1']:.4f} (P {scored['precision']:.4f}, R "
          f"{scored['recall']:.4f}; the error rate alone gives P {(1 - e) / (1 - e / 2):.4f}, R {1 - e:.4f}); "
          f"{speed:.2f} texts/s at concurrency {concurrency}", flush=True)
    lengths = [min(len(enc) + 2, 128) for enc in
               load_tokenizer(args.model).encode_batch([" ".join(t) for t, _ in parts["train"]])]
    budget = round(32 * sum(lengths) / len(lengths))
    seeds = [int(x) for x in args.seeds.split(",")][: 1 if args.smoke else None]
    sources = {"teacher": teacher, **({"gold": gold} if args.gold_student else {})}
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    folders: dict[str, list[Path]] = {name: [] for name in sources}
    for seed in seeds:
        for name, files in sources.items():
            print(f"bench: student on {name} labels, seed {seed} ...", flush=True)
            folder, result = student(work, name, files["train"], files["dev"], seed, budget, args, env)
            folders[name].append(folder)
            runs[name].append(result)
    texts = [" ".join(tokens) for tokens, _ in parts["test"]]
    student_tps = student_speed(folders["teacher"][0], texts, args.repeat)
    medians = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
    return {"teacher": {"train_scores": {k: scored[k] for k in ("f1", "precision", "recall", "support")},
                        "labelled": labelled, "concurrency": concurrency, "texts_per_second": speed},
            "seeds": seeds, "token_budget": budget, "runs": runs, "medians": medians,
            "student_texts_per_second": student_tps, "student_over_teacher": student_tps / speed}


def tables(results: dict, args) -> str:
    """The Markdown tables of the results."""
    t, lines = results["throughput"], []
    lines += [f"Throughput: {args.texts} tweets, stand-in at {args.latency * 1000:.0f} ms a reply; start-up "
              f"{t['startup_seconds']:.2f} s taken off each wall time.", "",
              "| server slots | concurrency | wall (s) | texts/s | speed-up | ideal texts/s | of ideal | "
              "added ms/text |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for slots, rows in t["settings"].items():
        for c, r in rows.items():
            lines.append(f"| {slots} | {c} | {r['wall_seconds']:.1f} | {r['texts_per_second']:.2f} | "
                         f"{r['speedup']:.2f}x | {r['ideal_texts_per_second']:.2f} | {r['share_of_ideal']:.0%} | "
                         f"{r['overhead_ms_per_text']:.1f} |")
    lines += ["", f"At latency 0, {args.overhead_texts} tweets: " + "; ".join(
        f"concurrency {c}: {r['seconds_per_text'] * 1000:.2f} ms a text" for c, r in t["latency_0"].items())
        + f"; the same request sent bare: {t['bare_request_seconds'] * 1000:.2f} ms; a line appended and fsynced "
        f"(two per reply): {t['fsync_seconds'] * 1000:.2f} ms.", ""]
    s = results["student"]
    teacher = s["teacher"]["train_scores"]
    lines += [f"Students (medians over seeds {', '.join(map(str, s['seeds']))}; teacher error rate "
              f"{args.error_rate:g}):", "", "| | F1 | precision | recall |", "|---|---:|---:|---:|",
              f"| teacher's labels of the training tweets vs gold | {teacher['f1']:.4f} | {teacher['precision']:.4f} | "
              f"{teacher['recall']:.4f} |"]
    for name, m in s["medians"].items():
        lines.append(f"| student trained on {name} labels, test tweets | {m['f1']:.4f} | {m['precision']:.4f} | "
                     f"{m['recall']:.4f} |")
    lines += ["", f"Speed: teacher {s['teacher']['texts_per_second']:.1f} texts/s (stand-in at "
              f"{args.latency * 1000:.0f} ms a reply, concurrency {s['teacher']['concurrency']}); student "
              f"{s['student_texts_per_second']:.1f} texts/s on the CPU; student/teacher "
              f"{s['student_over_teacher']:.1f}x."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few tweets, 1 epoch, 1 seed: checks the bench runs")
    parser.add_argument("--model", default=str(minilm_dir()), help="the students' encoder")
    parser.add_argument("--texts", type=int, default=400, help="tweets labelled per throughput run")
    parser.add_argument("--overhead-texts", type=int, default=1000, help="tweets labelled per run at latency 0")
    parser.add_argument("--latency", type=float, default=0.3, help="seconds the stand-in takes per reply")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated --concurrency values")
    parser.add_argument("--limited-slots", type=int, default=4, help="the slots of the limited server")
    parser.add_argument("--error-rate", type=float, default=0.2, help="share of gold entities the teacher gets wrong")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds; a student is trained per seed")
    parser.add_argument("--gold-student", action="store_true", help="also train students on the gold labels")
    parser.add_argument("--test-size", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the test tweets timing the student")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    if args.smoke:
        args.texts, args.overhead_texts, args.latency, args.concurrency = 12, 20, 0.05, [1, 4]
        args.limited_slots, args.epochs, args.repeat = 2, 1, 1

    train, dev, test = split(args.test_size, args.smoke)
    parts = {"train": train, "dev": dev, "test": test}
    labels = sorted({tag[2:] for _, tags in train + dev + test for tag in tags if tag != "O"})
    work = Path(tempfile.mkdtemp(prefix="tagtune-label-bench-"))
    for name, part in parts.items():
        write_conll(work / f"{name}.conll", part)
    (work / "test.txt").write_text("".join(" ".join(tokens) + "\n" for tokens, _ in test), encoding="utf-8")
    texts = list(dict.fromkeys(" ".join(tokens) for tokens, _ in train))
    print(f"bench: {len(train)} train / {len(dev)} dev / {len(test)} test tweets; {len(labels)} labels; "
          f"work folder {work}", flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               PYTHONPATH=os.pathsep.join(filter(None, [str(HERE.parent / "src"), os.environ.get("PYTHONPATH")])))
    gold = [work / "train.conll", work / "dev.conll"]
    results = {"throughput": throughput(work, gold, texts, labels, args, env)}
    best = max(results["throughput"]["settings"]["enough"].items(), key=lambda kv: kv[1]["texts_per_second"])[0]
    results["student"] = teach(work, parts, labels, int(best), results["throughput"]["startup_seconds"], args, env)
    print()
    print(tables(results, args))
    here = machine()
    print(f"{machine_line(here)}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **results, **here}, indent=2))


if __name__ == "__main__":
    main()
