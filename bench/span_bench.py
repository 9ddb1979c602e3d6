"""The span head against the token head on the same flat data, model and settings, in one run.

    .venv/bin/python bench/span_bench.py                 # WNUT-2016, MiniLM, 3 epochs, 3 seeds (minutes on 2 cores)
    .venv/bin/python bench/span_bench.py --bf16 off      # both heads in fp32 whatever the CPU
    .venv/bin/python bench/span_bench.py --smoke         # a few tweets, 1 epoch, 1 seed: seconds, for CI

WNUT-2016 is split as bench/train_bench.py splits it (400 test tweets, 10% of the rest dev, the
rest training data) and trained with its settings (3 epochs, lr 1e-4, token budget of 32 mean
windows with length buckets, warm-up 0.1, weight decay 0.01, best dev epoch kept). For each seed
``tagtune train`` runs twice, one process after the other: with the default token head and with
``--head span`` (candidates of up to ``--max-span-words`` words). WNUT's spans are flat, so the
span tagger predicts with ``--overlap flat`` and its default least score, 0.5.

Reported per head, medians over the seeds: test entity F1 over exact character spans and over
word tags (seqeval, as the Trainer bench), whole-process wall time, peak RSS, training tokens/s
(real tokens, as metrics.jsonl counts them), prediction tokens/s of the test tweets (both
taggers loaded in this process, timed in turns), and what the scores of the predicted spans say:
expected calibration error and average precision of "the span is right", as
bench/calibration_bench.py computes them. Then span/token ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from calibration_bench import figures, split  # noqa: E402
from flops import machine, machine_line  # noqa: E402
from train_bench import epoch_entries, run, scores, spans_to_word_tags, word_ranges  # noqa: E402

from tagtune.apps.examples import minilm_dir, write_conll  # noqa: E402
from tagtune.data.metrics import scored_spans  # noqa: E402

HEADS = ("token", "span")
KEYS = ["f1_char_spans", "f1_seqeval_words", "wall_seconds", "peak_rss_mb", "train_tokens_per_second",
        "predict_tokens_per_second", "ece", "average_precision", "spans"]


def train(work: Path, head: str, seed: int, args, budget: int, env) -> tuple[Path, dict]:
    """One ``tagtune train`` process: its folder, and its wall time, peak RSS and training tokens/s."""
    out = work / f"{head}-{seed}"
    cmd = [sys.executable, "-m", "tagtune", "train", "--model", args.model, "--train", str(work / "train.conll"),
           "--dev", str(work / "dev.conll"), "--out", str(out), "--patience", "1000", "--quiet",
           "--seed", str(seed), "--bf16", args.bf16, "--max-tokens", str(budget), "--bucket",
           "--epochs", str(args.epochs), "--lr", str(args.lr), "--max-length", str(args.max_length),
           "--warmup", "0.1", "--weight-decay", "0.01", "--head", head,
           *(["--max-span-words", str(args.max_span_words)] if head == "span" else []),
           *(["--save", "last"] if args.smoke else [])]
    usage = run(cmd, env, quiet=True)
    epochs = epoch_entries(out)
    tokens, seconds = sum(e["train_tokens"] for e in epochs), sum(e["train_seconds"] for e in epochs)
    return out, {**usage, "train_tokens_per_second": tokens / seconds}


def predict_in_turns(taggers: dict, texts: list[str], repeat: int) -> tuple[dict, dict]:
    """Each tagger's spans of ``texts`` and its prediction tokens/s: the texts tagged ``repeat``
    times by each in turn (token, span, token, ...), the median time of each."""
    tokens = sum(len(enc) for enc in next(iter(taggers.values()))[0].tokenizer.encode_batch(texts))
    spans, times = {}, {head: [] for head in taggers}
    for _ in range(repeat):
        for head, (tagger, kwargs) in taggers.items():
            start = time.perf_counter()
            spans[head] = tagger.predict(texts, **kwargs)
            times[head].append(time.perf_counter() - start)
    return spans, {head: tokens / statistics.median(t) for head, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch, 1 seed: checks the bench runs")
    parser.add_argument("--model", default=str(minilm_dir()))
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="as tagtune train's --bf16")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32, help="the token budget is this many mean windows")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-span-words", type=int, default=8)
    parser.add_argument("--seeds", default="42,43,44")
    parser.add_argument("--test-size", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3, help="prediction passes over the test tweets per head")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.repeat = 1, 1
        warnings.simplefilter("ignore", UserWarning)  # a dev set of a few tweets is too small: known

    from tagtune.data.formats import read_examples
    from tagtune.inference.tagger import Tagger
    from tagtune.text.tokenizer import load_tokenizer

    train_part, dev, test = split(args.test_size, args.smoke)
    work = Path(tempfile.mkdtemp(prefix="tagtune-span-bench-"))
    for name, part in (("train", train_part), ("dev", dev), ("test", test)):
        write_conll(work / f"{name}.conll", part)
    gold = read_examples(str(work / "test.conll"))
    texts, truth = [ex.text for ex in gold], [ex.spans for ex in gold]
    lengths = [min(len(e) + 2, args.max_length)
               for e in load_tokenizer(args.model).encode_batch([" ".join(t) for t, _ in train_part])]
    budget = round(args.batch_size * sum(lengths) / len(lengths))
    seeds = [int(x) for x in args.seeds.split(",")][: 1 if args.smoke else None]
    print(f"bench: {len(train_part)} train / {len(dev)} dev / {len(test)} test tweets, {args.epochs} epochs, "
          f"lr {args.lr}, batches of up to {budget} real tokens, --bf16 {args.bf16}, seeds {seeds}; "
          f"work folder {work}", flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    runs: dict[str, list[dict]] = {head: [] for head in HEADS}
    for seed in seeds:
        folders = {}
        for head in HEADS:
            print(f"bench: {head} head, seed {seed} ...", flush=True)
            folders[head], usage = train(work, head, seed, args, budget, env)
            runs[head].append(usage)
        taggers = {"token": (Tagger.load(folders["token"], bf16=args.bf16), {}),
                   "span": (Tagger.load(folders["span"], bf16=args.bf16), {"overlap": "flat"})}
        predicted, speed = predict_in_turns(taggers, texts, args.repeat)
        for head in HEADS:
            tags = [spans_to_word_tags([{"start": s.start, "end": s.end, "label": s.label} for s in row],
                                       word_ranges(tokens)) for row, (tokens, _) in zip(predicted[head], test)]
            pairs = scored_spans(truth, predicted[head])
            found = figures(pairs)
            runs[head][-1].update(scores(test, tags), predict_tokens_per_second=speed[head], ece=found["ece"],
                                  average_precision=found["average_precision"], spans=len(pairs),
                                  bins=found["bins"])
    medians = {head: {key: statistics.median(r[key] for r in rs) for key in KEYS} for head, rs in runs.items()}
    for head, rs in runs.items():
        for seed, r in zip(seeds, rs):
            print(f"  {head:5} seed {seed}: test F1 {r['f1_char_spans']:.4f} (char spans), "
                  f"{r['f1_seqeval_words']:.4f} (words); train {r['train_tokens_per_second']:.0f} tokens/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB, wall {r['wall_seconds']:.1f}s")
    print(f"\nmedians over seeds {seeds}:")
    print(f"{'':28}{'token':>12}{'span':>12}{'span/token':>12}")
    for key in KEYS:
        token, span = medians["token"][key], medians["span"][key]
        print(f"{key:28}{token:>12.4g}{span:>12.4g}" + (f"{span / token:>12.3f}" if token else ""))
    print(f"span - token F1 (char spans), median: {medians['span']['f1_char_spans'] - medians['token']['f1_char_spans']:+.4f}")
    here = machine()
    print(f"{machine_line(here)}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "medians": medians, "runs": runs, **here},
                                              indent=2))


if __name__ == "__main__":
    main()
