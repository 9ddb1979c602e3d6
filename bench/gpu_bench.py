"""tagtune against the transformers Trainer on one CUDA GPU: a bert-base-sized encoder trained
in bf16 on WNUT-2016 tweets; real tokens/s, MFU and peak GPU memory of each side.

    bash bench/gpu_bench.sh                                  # default sizes: 4-6 minutes on an H100 (estimated)
    bash bench/gpu_bench.sh --json bench/results-gpu.json    # also write the results
    bash bench/gpu_bench.sh --only tagtune                   # one side only
    bash bench/gpu_bench.sh --dry-run                        # no GPU: everything but the CUDA kernels, on the CPU
    bash bench/gpu_bench.sh --limit 60 --repeat 1 --epochs 2 \
        --hidden 64 --layers 2 --heads 2 --intermediate 128  # a tiny model on 60 tweets: checks it runs

Without a CUDA device it says so in one line (why: a CPU build of torch, or no GPU seen) and
exits 1. bench/gpu_bench.sh sets up a fresh GPU machine first and passes --quick.

The model: bert-base's shape (hidden 768, 12 layers, 12 heads, intermediate 3072), randomly
initialised (seed 0) as a BertForMaskedLM checkpoint with MiniLM's WordPiece vocabulary and
tokenizer, saved once; both sides start from it and draw their own classifier. Attention dropout
is 0 (--attention-dropout): FlashAttention's variable-length kernel, which tagtune's packed
attention takes on CUDA in bf16, has no dropout, and with it tagtune falls back to padded SDPA.

The data: WNUT-2016 shuffled with seed 0; 200 tweets dev, 200 test, the rest (1,994) written
--repeat times into the training file, so an epoch is --repeat passes over the tweets.

tagtune: the run of ``tagtune train --device cuda --bf16 auto --max-tokens B --bucket`` (B: the
token budget of --batch-size mean-length tweets, as in bench/train_bench.py), made through the
Python API the command calls (TrainConfig, train) in a child process of its own, which then
reads the peak GPU memory and counts the training attention calls that took the varlen kernel.
The Trainer: bench/peer_trainer.py --bf16 --attn sdpa --batch-size 32 (dynamic padding), in a
child process of its own. Same epochs, learning rate, warm-up, weight decay and window length;
both evaluate on the dev tweets after each epoch and keep their best epoch, as in train_bench.

Measured: the first epoch is a warm-up (CUDA context, cuBLAS and kernel selection, the caching
allocator growing) and is left out; real tokens/s = the real (non-padding) tokens of the other
epochs over their seconds (tagtune's metrics.jsonl; the Trainer's per-epoch callback), which
leave out loading, evaluation and checkpoints. MFU = useful FLOPs per second (bench/flops.py's
training count: 6 x matmul parameters x real tokens + attention over each tweet's real tokens)
over the card's dense bf16 peak. Peak GPU memory = torch.cuda.max_memory_allocated at the end of
each side's training, in its own process.

Sizes: a pass over the 1,994 training tweets is 61,705 real tokens, about 500 batches an epoch
on either side with the defaults (--repeat 8, --epochs 7: 56 passes a side, 48 of them
measured). On an H100 a bert-base step on some 1,000 real tokens is bound by kernel launches and
host work rather than by the tensor cores (estimated 10-30 ms), so each side should train for
about 40-100 s, plus some 30-40 s for startup, evaluation and checkpoints: the whole script in
4-6 minutes, under 8 with room. These are estimates until the script has run on such a card.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

NO_CUDA = "gpu_bench: error: no CUDA device here, nothing measured"

DENSE_BF16_TFLOPS = (
    (("H200",), 989.0),  # also GH200
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM, named "NVIDIA H100 80GB HBM3"
    (("A100",), 312.0),  # SXM and PCIe alike
)
"""Dense (no sparsity) bf16 tensor-core TFLOP/s by the parts of the device name, first match first."""

SIDES = {"tagtune": "tagtune", "trainer": "Trainer"}
QUIET = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def dense_bf16_peak(name: str) -> float | None:
    """The card's dense bf16 FLOP/s from ``torch.cuda.get_device_name()``; None when unknown."""
    upper = name.upper()
    for parts, tflops in DENSE_BF16_TFLOPS:
        if all(part in upper for part in parts):
            return tflops * 1e12
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOP utilisation: ``flops`` done in ``seconds`` over the ``peak`` FLOP/s; None without a peak."""
    return None if peak is None else flops / seconds / peak


def split_tweets(sentences: list, limit: int | None = None) -> tuple[list, list, list]:
    """(train, dev, test): the first ``limit`` sentences (all when None), a tenth of them (at
    most 200, at least 1) test, as many dev, the rest train."""
    sentences = sentences[:limit]
    held = min(200, max(1, len(sentences) // 10))
    return sentences[2 * held:], sentences[held:2 * held], sentences[:held]


def measured_epochs(tokens: list[int], seconds: list[float]) -> tuple[int, float, int]:
    """(tokens, seconds, epochs) of the epochs after the first, the warm-up; of the only one
    when there is one."""
    if len(tokens) != len(seconds) or not tokens:
        raise ValueError(f"{len(tokens)} epoch token counts for {len(seconds)} epoch times")
    start = 1 if len(tokens) > 1 else 0
    return sum(tokens[start:]), sum(seconds[start:]), len(tokens) - start


def side_result(epoch_tokens: list[int], epoch_seconds: list[float], flops_per_epoch: float,
                peak: float | None, peak_allocated: int, peak_reserved: int, process_seconds: float) -> dict:
    """One side's figures from its per-epoch real tokens and seconds and its peak GPU memory (bytes)."""
    tokens, seconds, epochs = measured_epochs(epoch_tokens, epoch_seconds)
    flops = flops_per_epoch * epochs
    return {"epochs_measured": epochs, "real_tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds, "useful_tflops_per_second": flops / seconds / 1e12,
            "mfu": mfu(flops, seconds, peak), "peak_memory_mib": peak_allocated / 2**20,
            "peak_reserved_mib": peak_reserved / 2**20, "process_seconds": process_seconds}


def report_lines(results: dict[str, dict], device: str, peak: float | None) -> list[str]:
    """The results table: a column per side, and tagtune/Trainer when both ran."""
    sides = list(results)
    both = len(sides) == 2
    rows = [("real tokens/s", "tokens_per_second", "{:,.0f}"),
            ("useful TFLOP/s", "useful_tflops_per_second", "{:.1f}"),
            ("MFU (real tokens, dense bf16)", "mfu", "{:.1%}"),
            ("peak GPU memory (MiB)", "peak_memory_mib", "{:,.0f}"),
            ("measured training (s)", "seconds", "{:.1f}"),
            ("whole process (s)", "process_seconds", "{:.1f}")]
    lines = [f"{'':32}" + "".join(f"{SIDES[s]:>14}" for s in sides) + ("   tagtune/Trainer" if both else "")]
    for label, key, form in rows:
        values = [results[s][key] for s in sides]
        line = f"{label:32}" + "".join(f"{'n/a' if v is None else form.format(v):>14}" for v in values)
        if both and None not in values and values[1]:
            line += f"{values[0] / values[1]:>18.3f}"
        lines.append(line)
    if peak is None:
        lines.append(f"MFU n/a: no dense bf16 peak known for {device!r}")
    else:
        lines.append(f"MFU against {device}'s dense bf16 peak of {peak / 1e12:.0f} TFLOP/s")
    return lines


def bert_checkpoint(folder: Path, like: Path, args) -> Path:
    """A randomly initialised (seed 0) BertForMaskedLM of the asked shape with the vocabulary and
    tokenizer files of the model in ``like``."""
    import torch
    import transformers

    vocab = json.loads((like / "config.json").read_text())["vocab_size"]
    config = transformers.BertConfig(
        vocab_size=vocab, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate, max_position_embeddings=512, pad_token_id=0,
        attention_probs_dropout_prob=args.attention_dropout)
    torch.manual_seed(0)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (like / name).is_file():
            shutil.copy(like / name, folder / name)
    return folder


def run(cmd: list[str]) -> float:
    """Run a child process (its stdout dropped, its stderr shown; bench/train_bench.py's run);
    its wall time."""
    from train_bench import run as run_child

    return run_child(cmd, {**os.environ, **QUIET}, quiet=True)["wall_seconds"]


def tagtune_child(spec_file: str) -> None:
    """In the child process: train with tagtune's TrainConfig, then write the peak GPU memory and
    what the training attention calls were (train_counted)."""
    spec = json.loads(Path(spec_file).read_text())
    Path(spec["result"]).write_text(json.dumps(train_counted(spec["config"])))


def train_counted(config: dict) -> dict:
    """Train with tagtune's TrainConfig(**config); the peak GPU memory (0 without CUDA) and what
    the training attention calls were: how many, how many took the varlen kernel, in which dtypes."""
    import torch

    import tagtune.models.packed as packed
    from tagtune import TrainConfig, train

    varlen, calls, dtypes = packed._varlen, {"all": 0, "varlen": 0}, set()

    def counted(q, *args, **kwargs):  # _varlen's arguments, whatever they are
        out = varlen(q, *args, **kwargs)
        if torch.is_grad_enabled():
            calls["all"] += 1
            calls["varlen"] += out is not None
            dtypes.add(str(q.dtype).removeprefix("torch."))
        return out

    packed._varlen = counted  # packed_attention looks it up at each call
    try:
        train(TrainConfig(**config))
    finally:
        packed._varlen = varlen
    cuda = torch.cuda.is_available()
    return {"peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else 0,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else 0,
            "attention_calls": calls["all"], "varlen_calls": calls["varlen"], "attention_dtypes": sorted(dtypes)}


def run_tagtune(args, work: Path, model: Path, budget: int, flops_per_epoch: float, peak) -> dict:
    out = work / "tagtune"
    config = dict(model=str(model), train=str(work / "train.conll"), dev=str(work / "dev.conll"), out=str(out),
                  epochs=args.epochs, lr=args.lr, batch_size=None, max_tokens=budget, bucket=True,
                  max_length=args.max_length, warmup=0.1, weight_decay=0.01, seed=args.seed, patience=None,
                  bf16="auto", device="cuda", progress=False)
    if args.dry_run:  # in this process, under the CUDA rules (dry_run), on the CPU
        start = time.perf_counter()
        child = train_counted({**config, "bf16": "on", "device": "cpu"})
        wall = time.perf_counter() - start
    else:
        spec = work / "tagtune-spec.json"
        spec.write_text(json.dumps({"config": config, "result": str(work / "tagtune-gpu.json")}))
        wall = run([sys.executable, str(HERE / "gpu_bench.py"), "--child", str(spec)])
        child = json.loads((work / "tagtune-gpu.json").read_text())
    from train_bench import epoch_entries

    epochs = epoch_entries(out)
    result = side_result([e["train_tokens"] for e in epochs], [e["train_seconds"] for e in epochs],
                         flops_per_epoch, peak, child["peak_allocated_bytes"], child["peak_reserved_bytes"], wall)
    varlen, calls = child["varlen_calls"], child["attention_calls"]
    return {**result, "precision": f"--bf16 auto: training attention in {', '.join(child['attention_dtypes'])}",
            "attention": f"varlen_attn in {varlen} of {calls} training attention calls",
            "varlen_calls": varlen, "attention_calls": calls}


def run_trainer(args, work: Path, model: Path, labels: list[str], flops_per_epoch: float, peak) -> dict:
    out = work / "trainer"
    wall = run([sys.executable, str(HERE / "peer_trainer.py"), str(work), str(out), "--model", str(model),
                "--labels", ",".join(labels), "--seed", str(args.seed), "--batch-size", str(args.batch_size),
                "--epochs", str(args.epochs), "--lr", str(args.lr), "--max-length", str(args.max_length),
                "--warmup", "0.1", "--weight-decay", "0.01", "--attn", "sdpa", *([] if args.dry_run else ["--bf16"])])
    stats = json.loads((out / "stats.json").read_text())
    seconds = stats["epoch_seconds"]
    tokens = [round(stats["real_train_tokens"] / args.epochs)] * len(seconds)
    result = side_result(tokens, seconds, flops_per_epoch, peak, stats.get("cuda_peak_allocated_bytes", 0),
                         stats.get("cuda_peak_reserved_bytes", 0), wall)
    return {**result, "precision": "fp32 on the CPU (TrainingArguments bf16=True needs a GPU)" if args.dry_run else
            "bf16 autocast (TrainingArguments bf16=True)",
            "attention": f"attn_implementation={stats['attn_implementation']}, padded batches"}


def no_cuda(torch) -> str:
    """The line saying why ``torch`` has no CUDA device here."""
    why = ("is a CPU build" if torch.version.cuda is None else
           f"is built for CUDA {torch.version.cuda} but sees no GPU (driver, CUDA_VISIBLE_DEVICES?)")
    return f"{NO_CUDA}: torch {torch.__version__} at {sys.executable} {why}"


QUICK = {"repeat": 1, "epochs": 2}
"""--quick's first measurement: one pass over the tweets an epoch, the second epoch measured
(about a minute a side on an H100, estimated), so that a short window yields a figure."""


DRY_RUN = {"limit": 40, "repeat": 1, "epochs": 2, "batch_size": 8, "hidden": 64, "layers": 2, "heads": 2,
           "intermediate": 128}
"""--dry-run's sizes: 32 training tweets in batches of 8, two epochs of a 2-layer BERT with 32-wide heads
(FlashAttention takes multiples of 8)."""
DRY_RUN_CARD = "NVIDIA H100 80GB HBM3"
DRY_RUN_LINE = "dry run: no figure is a GPU measurement"


def would_measure(peak: float | None) -> list[str]:
    """What a run on a GPU measures, side by side, and where its MFU's peak comes from."""
    lines = ["what the run on a GPU measures, for each side (tagtune, Trainer):",
             "  real tokens/s (tokens/s): the real (non-padding) tokens of the epochs after the first over their "
             "training seconds (tagtune: metrics.jsonl train_tokens, train_seconds; Trainer: its epoch callback)",
             "  useful TFLOP/s: (6 x matmul parameters x real tokens + 3 x layers x 4 x hidden x sum of squared "
             "lengths) x measured epochs / seconds / 1e12 (bench/flops.py)",
             "  MFU (%): useful FLOP/s / the card's dense bf16 peak (DENSE_BF16_TFLOPS by device name)"]
    lines += [f"    {card}: {dense_bf16_peak(card) / 1e12:.0f} TFLOP/s" for card in ("NVIDIA H100 80GB HBM3",
                                                                                  "NVIDIA H100 PCIe", "NVIDIA H200")]
    lines += ["  peak GPU memory (MiB): torch.cuda.max_memory_allocated() at the end of each side's training, "
              "in its own process",
              "  tagtune only: training attention calls that took FlashAttention's varlen kernel, and their dtype"]
    return lines


def dry_run(args) -> dict:
    """Everything but the CUDA kernels, on the CPU with the tiny sizes of DRY_RUN: the data split,
    both sides' training, the FLOP and MFU arithmetic against an H100's peak. tagtune trains in
    this process under the CUDA rules of tests/cuda_rules.py (CPU tensors answer as an H100's:
    bf16 autocast with CUDA's lists, FlashAttention's varlen op by a reference), as its loop
    runs on CUDA ("autocast"); the Trainer, which those rules do not reach, in fp32 on the CPU. The
    dev evaluation, which runs in fp32 on the CPU, and the few dev tweets are not warned about."""
    import warnings
    from unittest import mock

    warnings.filterwarnings("ignore", message="attention runs on scaled_dot_product_attention")
    warnings.filterwarnings("ignore", message=".*fewer than 20")

    sys.path.insert(0, str(HERE.parent / "tests"))  # the test suite's CUDA rules (torch and tagtune only)
    from cuda_rules import cuda_rules

    import tagtune.training.loop as loop

    dry = argparse.Namespace(**{**vars(args), **DRY_RUN})
    peak = dense_bf16_peak(DRY_RUN_CARD)
    print(f"gpu_bench: dry run on the CPU, the CUDA kernels stood in for (tests/cuda_rules.py); MFU against "
          f"{DRY_RUN_CARD}'s dense bf16 peak, {peak / 1e12:.0f} TFLOP/s", flush=True)
    with cuda_rules((9, 0)), mock.patch.object(loop, "precision", lambda config, device: "autocast"):
        measured = measure(dry, f"{DRY_RUN_CARD} (dry run)", peak)
    print("\n".join(would_measure(peak)))
    print(DRY_RUN_LINE, flush=True)
    return measured


def measure(args, device: str, peak) -> dict:
    """Each side's results for ``args``: the data and model made in a work folder, both sides
    trained there, the table printed."""
    from flops import model_shape, useful_flops
    from tagtune.apps.examples import minilm_dir, wnut_sentences, write_conll
    from tagtune.data.schemes import tag_names
    from tagtune.text.tokenizer import load_tokenizer

    sentences = wnut_sentences()
    random.Random(0).shuffle(sentences)
    train, dev, test = split_tweets(sentences, args.limit)
    labels = tag_names(sorted({t[2:] for _, tags in sentences for t in tags if t != "O"}), "BIO")
    work = Path(tempfile.mkdtemp(prefix="tagtune-gpu-bench-"))
    try:
        write_conll(work / "train.conll", train * args.repeat)
        write_conll(work / "dev.conll", dev)
        write_conll(work / "test.conll", test)
        model = bert_checkpoint(work / "model", minilm_dir(), args)
        encodings = load_tokenizer(str(model)).encode_batch([" ".join(tokens) for tokens, _ in train])
        lengths = [min(len(e) + 2, args.max_length) for e in encodings]
        budget = round(args.batch_size * sum(lengths) / len(lengths))
        shape = {**model_shape(model), "labels": len(labels)}
        flops_per_epoch = useful_flops(shape, lengths * args.repeat, training=True)
        print(f"gpu_bench: random BERT, hidden {args.hidden}, {args.layers} layers, {args.heads} heads, intermediate "
              f"{args.intermediate}, attention dropout {args.attention_dropout:g}, MiniLM's WordPiece vocabulary",
              flush=True)
        print(f"gpu_bench: {len(train)} train tweets ({sum(lengths):,} real tokens) x {args.repeat} per epoch, "
              f"{len(dev)} dev, {len(test)} test; {args.epochs} epochs, lr {args.lr:g}, bf16; Trainer batches of "
              f"{args.batch_size} tweets, tagtune batches of up to {budget} real tokens (length-bucketed)", flush=True)
        print("gpu_bench: the first epoch of each side is a warm-up (CUDA context, kernel selection, allocator) "
              "and is not counted" if args.epochs > 1 else
              "gpu_bench: one epoch only: it is counted, warm-up included", flush=True)

        results = {}
        if args.only in (None, "tagtune"):
            print("gpu_bench: tagtune ...", flush=True)
            results["tagtune"] = run_tagtune(args, work, model, budget, flops_per_epoch, peak)
        if args.only in (None, "trainer"):
            print("gpu_bench: transformers Trainer ...", flush=True)
            results["trainer"] = run_trainer(args, work, model, labels, flops_per_epoch, peak)
    finally:
        if args.keep:
            print(f"gpu_bench: work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print()
    for result in results.values() if args.dry_run else ():
        result["peak_memory_mib"] = result["peak_reserved_mib"] = None  # no GPU memory to read
    for side, result in results.items():
        print(f"{SIDES[side]}: {result['precision']}; {result['attention']}; "
              f"{result['epochs_measured']} epoch{'s' * (result['epochs_measured'] > 1)} measured")
    print("\n".join(report_lines(results, device, peak)), flush=True)
    return {"args": vars(args), "train_tweets": len(train), "real_tokens_per_pass": sum(lengths),
            "tagtune_max_tokens": budget, "dry_run": bool(args.dry_run), "useful_flops_per_epoch": flops_per_epoch,
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=7, help="epochs on each side; the first is a warm-up")
    parser.add_argument("--repeat", type=int, default=8, help="passes over the training tweets in an epoch")
    parser.add_argument("--limit", type=int, help="use only this many tweets (dev and test included)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="the Trainer's sequences per batch; tagtune's token budget is as many mean-length tweets")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--attention-dropout", type=float, default=0.0,
                        help="above 0, tagtune's training attention cannot use the varlen kernel")
    parser.add_argument("--only", choices=["tagtune", "trainer"], help="run one side only")
    parser.add_argument("--quick", action="store_true",
                        help="first measure with --repeat 1 --epochs 2 (printed; written as 'quick'), then as asked")
    parser.add_argument("--check", action="store_true", help="only say which GPU and torch are here (exit 1: none)")
    parser.add_argument("--dry-run", action="store_true",
                        help="everything but the CUDA kernels, on the CPU with a tiny model (under a minute)")
    parser.add_argument("--json", help="also write the results here (after each measurement)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (model, data, runs)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        raise SystemExit(f"gpu_bench: error: torch is not installed for {sys.executable}") from None
    if args.child:
        tagtune_child(args.child)
        return
    if args.dry_run:
        os.environ.update(QUIET)
        record = {"dry_run": DRY_RUN_LINE, **dry_run(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=2))
        return
    if not torch.cuda.is_available():
        raise SystemExit(no_cuda(torch))

    os.environ.update(QUIET)  # before transformers is imported
    device = torch.cuda.get_device_name(0)
    peak = dense_bf16_peak(device)
    print(f"gpu_bench: {device} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}), "
          f"dense bf16 peak " + (f"{peak / 1e12:.0f} TFLOP/s" if peak else "unknown")
          + f"; torch {torch.__version__}, CUDA {torch.version.cuda}", flush=True)
    if args.check:
        return
    record = {"device": device, "dense_bf16_peak_tflops": peak and peak / 1e12, "torch": torch.__version__,
              "cuda": torch.version.cuda}
    runs = [("quick", argparse.Namespace(**{**vars(args), **QUICK})), ("asked", args)] if args.quick else [
        ("asked", args)]
    for name, run_args in runs:
        if args.quick:
            print(f"\ngpu_bench: {'quick measurement (--repeat 1 --epochs 2)' if name == 'quick' else 'as asked'}",
                  flush=True)
        measured = measure(run_args, device, peak)
        record.update({"quick": measured} if name == "quick" else measured)
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=2))
            print(f"gpu_bench: results written to {args.json}", flush=True)


if __name__ == "__main__":
    main()
