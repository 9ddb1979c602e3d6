"""`tagtune train --lora 16` (with and without --checkpointing) against full fine-tuning of the same
model on the same data, in one run.

    .venv/bin/python bench/lora_bench.py            # WNUT-2016, MiniLM, 3 epochs, seeds 42,43,44
    .venv/bin/python bench/lora_bench.py --smoke    # a few sentences, 1 epoch: seconds, for CI

The data and split are train_bench's (WNUT-2016 shuffled with a fixed seed, 400 test tweets, 10%
of the rest as dev, the rest for training), the model the packaged all-MiniLM-L6-v2, the batches
tagtune's default token budget. Each run is a whole ``tagtune train`` process; the bench reports
its test entity F1, training tokens/s (from metrics.jsonl), peak RSS, and the bytes in the folder
it writes (LoRA: the PEFT adapter folder; full: the whole tagger), then the ratios LoRA / full
beside the targets. LoRA trains at its own learning rate (--lora-lr, default 5e-4: a rank-16
adapter starts at zero and moves little at full fine-tuning's 5e-5 in 3 epochs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from flops import machine, machine_line  # noqa: E402
from tagtune.apps.examples import minilm_dir  # noqa: E402
from train_bench import (epoch_entries, precision_of, run, scores, spans_to_word_tags, split_tweets,  # noqa: E402
                         word_ranges, write_split)

TARGETS = {"peak_rss_mb": ("<=", 0.6), "train_tokens_per_second": (">=", 1.3)}
"""LoRA / full ratios aimed at: (comparison, ratio)."""
KEYS = ["wall_seconds", "peak_rss_mb", "train_seconds", "train_tokens_per_second", "folder_bytes",
        "f1_seqeval_words", "f1_char_spans"]


def folder_bytes(folder: Path) -> int:
    """Bytes of the files in ``folder`` and below."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def train_and_test(work: Path, name: str, model: str, options: list[str], test, env) -> dict:
    """One ``tagtune train`` process into ``work/name`` with ``options``, then ``tagtune predict``
    on the test tweets: its usage, training tokens/s, folder size, test F1 and precision."""
    out, log = work / name, work / f"{name}.log"
    cmd = [sys.executable, "-m", "tagtune", "train", "--model", model, "--train", str(work / "train.conll"),
           "--dev", str(work / "dev.conll"), "--out", str(out), "--patience", "1000", *options]
    usage = run(cmd, env, log=log)
    epochs = epoch_entries(out)
    tokens, seconds = sum(e["train_tokens"] for e in epochs), sum(e["train_seconds"] for e in epochs)
    size = folder_bytes(out)  # before predict, which writes nothing there
    predictions_file = work / f"{name}-test.jsonl"
    run([sys.executable, "-m", "tagtune", "predict", str(out), str(work / "test.txt"), "-o", str(predictions_file),
         "--quiet"], env)
    predictions = [json.loads(line) for line in predictions_file.read_text().splitlines()]
    tags = [spans_to_word_tags(p["spans"], word_ranges(tokens)) for p, (tokens, _) in zip(predictions, test)]
    return {**usage, "train_seconds": seconds, "train_tokens_per_second": tokens / seconds, "folder_bytes": size,
            **scores(test, tags), "precision": precision_of(log)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch: checks the bench runs")
    parser.add_argument("--model", default=str(minilm_dir()))
    parser.add_argument("--rank", type=int, default=16, help="--lora R")
    parser.add_argument("--lr", type=float, default=5e-5, help="full fine-tuning's learning rate")
    parser.add_argument("--lora-lr", type=float, default=5e-4, help="LoRA's learning rate")
    parser.add_argument("--bf16", choices=["auto", "off"], default="auto", help="tagtune's --bf16, both runs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32, help="tagtune's --batch-size (a token budget)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds; each run trains once per seed")
    parser.add_argument("--test-size", type=int, default=400)
    parser.add_argument("--kinds", default="full,lora,lora-checkpointing",
                        help="the runs beside full fine-tuning: lora, lora-checkpointing (--lora with --checkpointing)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    train, dev, test = split_tweets(args.test_size, args.smoke)
    if args.smoke:
        args.epochs = 1
    work = Path(tempfile.mkdtemp(prefix="tagtune-lora-bench-"))
    write_split(work, train, dev, test)
    print(f"bench: {len(train)} train / {len(dev)} dev / {len(test)} test tweets, {args.epochs} epochs, "
          f"full lr {args.lr}, LoRA r={args.rank} lr {args.lora_lr}, --batch-size {args.batch_size}, "
          f"--bf16 {args.bf16}; work folder {work}", flush=True)
    common = ["--epochs", str(args.epochs), "--max-length", str(args.max_length), "--warmup", "0.1",
              "--weight-decay", "0.01", "--batch-size", str(args.batch_size), "--bf16", args.bf16]
    lora = ["--lr", str(args.lora_lr), "--lora", str(args.rank)]
    kinds = {"full": ["--lr", str(args.lr)], "lora": lora, "lora-checkpointing": [*lora, "--checkpointing"]}
    kinds = {kind: kinds[kind] for kind in ["full", *[k for k in args.kinds.split(",") if k != "full"]]}
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    seeds = [int(x) for x in args.seeds.split(",")][: 1 if args.smoke else None]
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for seed in seeds:
        for kind, options in kinds.items():
            print(f"bench: {kind}, seed {seed} ...", flush=True)
            r = train_and_test(work, f"{kind}-{seed}", args.model, [*options, "--seed", str(seed), *common], test, env)
            runs[kind].append(r)
            if args.json:  # after each run, so that a run cut short keeps what it measured
                Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, **machine()}, indent=2))
            print(f"  {kind} seed {seed}: test F1 {r['f1_seqeval_words']:.4f} (words), {r['f1_char_spans']:.4f} "
                  f"(char spans); {r['train_tokens_per_second']:.0f} tokens/s; peak RSS {r['peak_rss_mb']:.0f} MB; "
                  f"{r['precision']}; load average {r['load_before']:.2f} before, {r['load_after']:.2f} after",
                  flush=True)
    medians = {kind: {key: statistics.median(r[key] for r in rs) for key in KEYS} for kind, rs in runs.items()}
    print(f"\nmedians over seeds {seeds}:")
    others = [kind for kind in kinds if kind != "full"]
    print(f"{'':26}{'full':>14}" + "".join(f"{kind:>20}{'/full':>8}" for kind in others) + "   target")
    for key in KEYS:
        full = medians["full"][key]
        line, verdicts = f"{key:26}{full:>14.4g}", []
        for kind in others:
            value = medians[kind][key]
            ratio = value / full if full else float("nan")
            line += f"{value:>20.4g}{ratio:>8.3f}"
            if key in TARGETS:
                op, bound = TARGETS[key]
                met = ratio <= bound if op == "<=" else ratio >= bound
                verdicts.append(f"{kind} {'met' if met else 'missed'}")
        target = f"{TARGETS[key][0]} {TARGETS[key][1]}x: {', '.join(verdicts)}" if key in TARGETS else ""
        print(f"{line}   {target}")
    here = machine()
    print(machine_line(here))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "medians": medians, "runs": runs, **here},
                                              indent=2))


if __name__ == "__main__":
    main()
