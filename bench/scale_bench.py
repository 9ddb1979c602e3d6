"""Cost as the work grows: `tagtune predict` over 10x more text, and training with 512-token windows against 128.

    .venv/bin/python bench/scale_bench.py [--model TAGGER_DIR] [--texts 4788]   # about 6 minutes on 2 cores
    .venv/bin/python bench/scale_bench.py --smoke    # 20 and 200 texts, 2 documents, windows 64 and 128: under a minute

Prediction: whole `tagtune predict DIR texts.txt -o out.jsonl --quiet` processes on N texts and on
10N texts (the WNUT-2016 tweets, tokens joined by spaces, repeated to reach the count; default N is
the 2,394 tweets twice), with the tagger folder ``--model`` (default runs/wnut-minilm from ``make
demo``; without it, MiniLM with a random head, as good for timing). Reported for each: texts, real
tokens (the tagger's tokenizer, no special tokens), wall time, real tokens per second of wall time
and peak RSS; then time 10N / time N (linear is 10) and peak RSS 10N / N (flat is 1). A run on one
text measures the fixed start-up cost (imports, loading the tagger), and the time ratio is also
given net of it (not with --smoke, whose runs are mostly start-up).

Training: long documents made of consecutive WNUT tweets (their tokens and tags; a document takes
tweets until it has at least ``--doc-words`` words) are written as one CoNLL file, and MiniLM is
fine-tuned on it twice, with windows of 128 and of 512 tokens (``--max-length`` counts the start
and end tokens, so 512 is 510 tokens of text, all of MiniLM's 512 positions), the same token budget
per batch, epochs, learning rate, seed and ``--bf16``. Reported for each: windows, training tokens
(real window tokens, special tokens and the tokens shared by overlapping windows included, as
tagtune counts them in metrics.jsonl), training seconds and tokens per second, text tokens per
training second (the document tokens, each counted once), whole-process wall time and peak RSS;
then the ratios 512 / 128.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from flops import cpu_description  # noqa: E402
from predict_bench import random_head_tagger  # noqa: E402
from train_bench import epoch_entries, run  # noqa: E402
from tagtune.data.align import windows_of  # noqa: E402
from tagtune.apps.examples import minilm_dir, wnut_sentences, write_conll  # noqa: E402
from tagtune.text.tokenizer import load_tokenizer  # noqa: E402

STRIDE = 32  # tagtune train's default overlap between windows, used by both runs


def repeated_texts(tweets, count: int) -> list[str]:
    """``count`` text lines: the tweets' tokens joined by spaces, from the first tweet again after the last."""
    return [" ".join(tweets[i % len(tweets)][0]) for i in range(count)]


def documents(tweets, words: int, limit: int | None) -> list[tuple[list[str], list[str]]]:
    """Consecutive tweets joined into documents (tokens and tags) of at least ``words`` words each;
    the tweets left over at the end, too few for a document, are dropped. At most ``limit``."""
    docs, tokens, tags = [], [], []
    for tweet_tokens, tweet_tags in tweets:
        tokens += tweet_tokens
        tags += tweet_tags
        if len(tokens) >= words:
            docs.append((tokens, tags))
            tokens, tags = [], []
            if limit is not None and len(docs) == limit:
                break
    return docs


def predict_runs(args, work: Path, env: dict) -> dict:
    model = Path(args.model)
    if not (model / "config.json").is_file():
        print(f"bench: {model} not found; using MiniLM with a random head", flush=True)
        model = random_head_tagger(work / "tagger")
    tokenizer = load_tokenizer(model)
    tweets = wnut_sentences()
    results = {"startup": None}
    sizes = [("N", args.texts), ("10N", 10 * args.texts)]
    for name, count in ([] if args.smoke else [("startup", 1)]) + sizes:
        texts = repeated_texts(tweets, count)
        source, out = work / f"texts-{name}.txt", work / f"out-{name}.jsonl"
        source.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        tokens = sum(len(e) for e in tokenizer.encode_batch(texts))
        print(f"bench: tagtune predict, {count:,} text{'s' * (count > 1)} ({tokens:,} tokens) ...", flush=True)
        usage = run([sys.executable, "-m", "tagtune", "predict", str(model), str(source), "-o", str(out),
                     "--quiet"], env)
        with open(out, encoding="utf-8") as f:
            written = sum(1 for _ in f)
        if written != count:
            raise SystemExit(f"bench: {out} has {written} lines for {count} texts")
        results[name] = {"texts": count, "tokens": tokens, **usage,
                         "tokens_per_second": tokens / usage["wall_seconds"]}
        source.unlink()
        out.unlink()
    n, ten = results["N"], results["10N"]
    net = None
    if results["startup"] is not None:
        start = results["startup"]["wall_seconds"]
        if n["wall_seconds"] > start:
            net = (ten["wall_seconds"] - start) / (n["wall_seconds"] - start)
    results["ratios"] = {"wall_seconds": ten["wall_seconds"] / n["wall_seconds"], "wall_seconds_net_of_startup": net,
                         "peak_rss_mb": ten["peak_rss_mb"] / n["peak_rss_mb"]}
    results["model"] = str(model)
    return results


def train_runs(args, work: Path, env: dict) -> dict:
    base = minilm_dir()
    docs = documents(wnut_sentences(), args.doc_words, args.documents)
    if not docs:
        raise SystemExit(f"bench: the tweets make no document of {args.doc_words} words")
    train = work / "documents.conll"
    write_conll(train, docs)
    lengths = [len(e) for e in load_tokenizer(base).encode_batch([" ".join(tokens) for tokens, _ in docs])]
    print(f"bench: {len(docs)} documents of {min(len(t) for t, _ in docs)} to {max(len(t) for t, _ in docs)} "
          f"words, {sum(lengths):,} tokens; budget {args.max_tokens} tokens a batch, {args.epochs} epoch(s), "
          f"lr {args.lr}, seed {args.seed}, --bf16 {args.bf16}", flush=True)
    results = {"documents": len(docs), "text_tokens": sum(lengths)}
    for length in args.lengths:
        print(f"bench: tagtune train, windows of {length} tokens ...", flush=True)
        out = work / f"run-{length}"
        usage = run([sys.executable, "-m", "tagtune", "train", "--model", str(base), "--train", str(train),
                     "--out", str(out), "--max-length", str(length), "--stride", str(STRIDE),
                     "--max-tokens", str(args.max_tokens), "--epochs", str(args.epochs), "--lr", str(args.lr),
                     "--seed", str(args.seed), "--bf16", args.bf16, "--quiet"], env, quiet=True)
        epochs = epoch_entries(out)
        tokens, seconds = sum(e["train_tokens"] for e in epochs), sum(e["train_seconds"] for e in epochs)
        shutil.rmtree(out)
        results[str(length)] = {
            "max_length": length, "windows": sum(len(windows_of(n, length, STRIDE)) for n in lengths),
            "train_tokens": tokens, "train_seconds": seconds, "tokens_per_second": tokens / seconds,
            "text_tokens_per_second": args.epochs * sum(lengths) / seconds, **usage}
    short, long = (results[str(n)] for n in args.lengths)
    results["ratios"] = {k: long[k] / short[k] for k in
                         ("tokens_per_second", "text_tokens_per_second", "wall_seconds", "peak_rss_mb")}
    return results


def print_table(title: str, columns: list[str], ratio: str, rows: list[tuple[str, str, list, float | None]]) -> None:
    """Rows of (label, format, values, ratio or None)."""
    print(f"\n| {title:32} |" + "".join(f" {c:>12} |" for c in columns) + f" {ratio:>12} |")
    print(f"|{'-' * 34}|" + f"{'-' * 13}:|" * (len(columns) + 1))
    for label, fmt, values, r in rows:
        print(f"| {label:32} |" + "".join(f" {format(v, fmt):>12} |" for v in values)
              + f" {'n/a' if r is None else format(r, '.3f'):>12} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="20 and 200 texts; 2 documents of 150 words, windows 64 and 128: checks the bench runs")
    parser.add_argument("--model", default="runs/wnut-minilm", help="trained tagger folder for prediction")
    parser.add_argument("--texts", type=int, default=4788, help="N, the texts of the smaller prediction run")
    parser.add_argument("--documents", type=int, help="training documents (default: all the tweets make)")
    parser.add_argument("--doc-words", type=int, default=600, help="least words of a training document")
    parser.add_argument("--lengths", default="128,512", help="the two window lengths (--max-length), shorter first")
    parser.add_argument("--max-tokens", type=int, default=4096, help="real tokens per training batch, both runs")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="as tagtune train's --bf16")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.texts, args.documents, args.doc_words, args.lengths, args.max_tokens = 20, 2, 150, "64,128", 1024
    args.lengths = [int(x) for x in args.lengths.split(",")]
    if len(args.lengths) != 2 or args.lengths[0] >= args.lengths[1]:
        parser.error("--lengths takes two window lengths, the shorter first, e.g. 128,512")

    model_name, flags = cpu_description()
    print(f"bench: {model_name}; {os.cpu_count()} CPUs; "
          f"flags: {' '.join(flags) or 'none of avx2, avx512_bf16, amx_bf16'}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tagtune-scale-bench-"))
    print(f"bench: work folder {work}", flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    prediction = predict_runs(args, work, env)
    training = train_runs(args, work, env)

    n, ten, startup = prediction["N"], prediction["10N"], prediction["startup"]
    ratios = prediction["ratios"]
    print(f"\nprediction with {prediction['model']}; start-up (1 text): " +
          (f"{startup['wall_seconds']:.1f} s, {startup['peak_rss_mb']:.0f} MB" if startup else "not measured"))
    rows = [("texts", ",d", [n["texts"], ten["texts"]], ten["texts"] / n["texts"]),
            ("real tokens", ",d", [n["tokens"], ten["tokens"]], ten["tokens"] / n["tokens"]),
            ("wall seconds", ".1f", [n["wall_seconds"], ten["wall_seconds"]], ratios["wall_seconds"])]
    if startup:
        rows.append(("  net of start-up", ".1f", [n["wall_seconds"] - startup["wall_seconds"],
                                                  ten["wall_seconds"] - startup["wall_seconds"]],
                     ratios["wall_seconds_net_of_startup"]))
    rows += [("tokens/s (wall)", ",.0f", [n["tokens_per_second"], ten["tokens_per_second"]],
              ten["tokens_per_second"] / n["tokens_per_second"]),
             ("peak RSS MB", ".0f", [n["peak_rss_mb"], ten["peak_rss_mb"]], ratios["peak_rss_mb"])]
    print_table("tagtune predict", ["N", "10N"], "10N/N", rows)
    print("time: linear is 10; peak RSS: flat is 1")

    short, long = (training[str(length)] for length in args.lengths)
    print(f"\ntraining MiniLM on {training['documents']} documents ({training['text_tokens']:,} text tokens), "
          f"{args.epochs} epoch(s), up to {args.max_tokens} tokens a batch")
    a, b = args.lengths
    print_table("tagtune train, --max-length", [str(a), str(b)], f"{b}/{a}", [
        ("windows", ",d", [short["windows"], long["windows"]], long["windows"] / short["windows"]),
        ("training tokens", ",d", [short["train_tokens"], long["train_tokens"]],
         long["train_tokens"] / short["train_tokens"]),
        ("training seconds", ".1f", [short["train_seconds"], long["train_seconds"]],
         long["train_seconds"] / short["train_seconds"]),
        ("training tokens/s", ",.0f", [short["tokens_per_second"], long["tokens_per_second"]],
         training["ratios"]["tokens_per_second"]),
        ("text tokens/s", ",.0f", [short["text_tokens_per_second"], long["text_tokens_per_second"]],
         training["ratios"]["text_tokens_per_second"]),
        ("wall seconds", ".1f", [short["wall_seconds"], long["wall_seconds"]], training["ratios"]["wall_seconds"]),
        ("peak RSS MB", ".0f", [short["peak_rss_mb"], long["peak_rss_mb"]], training["ratios"]["peak_rss_mb"]),
    ])
    print("training tokens count special tokens and the tokens overlapping windows share; text tokens count "
          "each document token once")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu": {"model_name": model_name, "flags": flags,
                                                                           "cpus": os.cpu_count()},
                                               "prediction": prediction, "training": training}, indent=2))
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
