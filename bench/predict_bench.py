"""Prediction: `tagtune predict` against transformers' token-classification pipeline, in one run,
with tagtune's precisions and backends side by side.

    .venv/bin/python bench/predict_bench.py [--model TAGGER_DIR] [--repeat 2] [--sides pipeline,tagtune,...]
    .venv/bin/python bench/predict_bench.py --smoke
    .venv/bin/python bench/predict_bench.py --breakdown [--texts 4000] [--rounds 3] [--against OLD/src]

All sides tag the same texts (the WNUT-2016 tweets, repeated ``--repeat`` times) with the same
trained tagger folder (default: runs/wnut-minilm from ``make demo``; without it, MiniLM with a
random head is saved and used, which is as good for timing). The sides:

- pipeline: ``pipeline("token-classification", model=DIR, aggregation_strategy="simple")``, as
  the HF docs show it;
- tagtune: ``Tagger.load(DIR)`` with its default ``bf16="auto"`` (fp32 on CPUs where bf16 does
  not pay);
- tagtune-fp32 / tagtune-bf16: the same with ``bf16="off"`` / ``"on"``;
- onnx-fp32 / onnx-int8: the folders ``tagtune export --onnx`` writes (int8: ``--int8``,
  dynamic quantisation with per-channel weight scales), through ONNX Runtime.

Each side runs as its own process; reported: whole-process wall time, peak RSS (the process's
own high-water mark, VmHWM), tagging time
(model loading and file writing excluded) and real tokens per second (tokens of the texts, no
padding or special tokens counted), then each side's entity F1 on the tweets that ``make demo``
held out as its dev set (exact character spans), and on how many texts each tagtune side's spans
equal the first tagtune side's.
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

from flops import (KERNELS_HELP, gemm_flops_per_second, machine, machine_line, model_shape,  # noqa: E402
                   use_kernels, useful_flops)
from train_bench import run  # noqa: E402

PEER = """
import json, sys, time
from transformers import pipeline
texts = [line.rstrip("\\n") for line in open(sys.argv[2], encoding="utf-8")]
tagger = pipeline("token-classification", model=sys.argv[1], aggregation_strategy="simple", device="cpu")
start = time.perf_counter()
results = tagger(texts)
seconds = time.perf_counter() - start
with open(sys.argv[3], "w", encoding="utf-8") as f:
    for text, spans in zip(texts, results):
        f.write(json.dumps({"text": text, "spans": [{"start": int(s["start"]), "end": int(s["end"]),
                 "label": s["entity_group"]} for s in spans]}) + "\\n")
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
json.dump({"seconds": seconds, "peak_rss_mb": peak}, open(sys.argv[4], "w"))
"""

OURS = """
import json, sys, time
from tagtune.inference.tagger import Tagger
texts = [line.rstrip("\\n") for line in open(sys.argv[2], encoding="utf-8")]
tagger = Tagger.load(sys.argv[1], device="cpu", bf16=sys.argv[5])
start = time.perf_counter()
results = []
for lo in range(0, len(texts), 512):  # as `tagtune predict` does: 512 texts read and tagged at a time
    results += tagger.predict(texts[lo:lo + 512])
seconds = time.perf_counter() - start
with open(sys.argv[3], "w", encoding="utf-8") as f:
    for text, spans in zip(texts, results):
        f.write(json.dumps({"text": text, "spans": [s.to_dict(text) for s in spans]}) + "\\n")
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
json.dump({"seconds": seconds, "precision": tagger.precision, "peak_rss_mb": peak}, open(sys.argv[4], "w"))
"""


BREAKDOWN = """
import json, sys, time
start = time.perf_counter()
from tagtune.apps import predict as predict_app  # what `tagtune predict` imports
import tagtune.__main__ as entry
import torch
from tagtune.models import checkpoint
from tagtune.inference import tagger as tagger_module
imported = time.perf_counter() - start
model_dir, texts_file, out_file, stats_file, exit_mode = sys.argv[1:6]
timers = {"build": 0.0, "read weights": 0.0}

def timed(name, f):
    def run(*args, **kwargs):
        t = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            timers[name] += time.perf_counter() - t
    return run

build = "_unfilled_model" if hasattr(checkpoint, "_unfilled_model") else "TokenClassifier"
setattr(checkpoint, build, timed("build", getattr(checkpoint, build)))
checkpoint.read_weights = timed("read weights", checkpoint.read_weights)
t = time.perf_counter()
tagger = tagger_module.Tagger.load(model_dir, constrained=True)
load = time.perf_counter() - t
texts = [line.rstrip("\\n") for line in open(texts_file, encoding="utf-8")]
chunks = [texts[lo:lo + 512] for lo in range(0, len(texts), 512)]  # as `tagtune predict` reads them

cut = forward = merge = decode = write = 0.0
results = []
for chunk in chunks:
    t0 = time.perf_counter(); windows = tagger._cut(chunk)
    t1 = time.perf_counter(); outputs = tagger._logits(windows.sequences)
    t2 = time.perf_counter(); logits = tagger._merge(windows, outputs)
    t3 = time.perf_counter(); results += tagger.spans(logits, windows.units)
    t4 = time.perf_counter()
    cut += t1 - t0; forward += t2 - t1; merge += t3 - t2; decode += t4 - t3
t = time.perf_counter()
with open(out_file, "w", encoding="utf-8") as f:
    for text, spans in zip(texts, results):
        f.write(json.dumps({"text": text, "spans": [s.to_dict(text) for s in spans]}, ensure_ascii=False) + "\\n")
write = time.perf_counter() - t

# the forward passes again, each linear layer and each attention call timed as it returns (the
# CPU runs them synchronously; a timer costs well under a microsecond, where torch.profiler's
# bookkeeping of every small op inflates attention's many small ones)
import tagtune.models.packed as packed
spent = {"linear": 0.0, "attention": 0.0}
shapes = {}
def clocked(name, f):
    def run(*args, **kwargs):
        t = time.perf_counter()
        out = f(*args, **kwargs)
        spent[name] += time.perf_counter() - t
        return out
    return run
def linear_forward(f):
    def run(self, x):
        t = time.perf_counter()
        out = f(self, x)
        seconds = time.perf_counter() - t
        spent["linear"] += seconds
        key = str(list(self.weight.shape))
        shapes[key] = shapes.get(key, 0.0) + seconds
        return out
    return run
original = packed.packed_attention
for name, module in list(sys.modules.items()):  # the families' calls, not packed's own call of itself
    if (name.startswith("tagtune.models.") and name != "tagtune.models.packed"
            and getattr(module, "packed_attention", None) is original):
        module.packed_attention = clocked("attention", original)
torch.nn.Linear.forward = linear_forward(torch.nn.Linear.forward)
packed.Linear.forward = linear_forward(packed.Linear.forward)
sequences = [s for chunk in chunks[:int(sys.argv[6])] for s in tagger._cut(chunk).sequences]
t = time.perf_counter(); tagger._logits(sequences); profiled = time.perf_counter() - t
linear, attention = spent["linear"], spent["attention"]
stats = {"import": imported, "load": load, "build": timers["build"], "read_weights": timers["read weights"],
         "tokenise_window": cut, "forward": forward, "merge": merge, "decode": decode, "write": write,
         "profiled_forward": profiled, "profiled_linear": linear, "profiled_attention": attention,
         "linear_by_weight_shape": shapes, "precision": tagger.precision, "texts": len(texts),
         "threads": torch.get_num_threads()}
json.dump(stats, open(stats_file, "w"))
sys.stdout.flush()
open(stats_file + ".end", "w").write(repr(time.time()))
if exit_mode == "quick" and hasattr(entry, "quick_exit"):
    entry.quick_exit()
"""


def random_head_tagger(folder: Path) -> Path:
    import torch

    from tagtune.models.checkpoint import load_model, save_model
    from tagtune.apps.examples import minilm_dir, wnut_sentences
    from tagtune.data.schemes import tag_names
    from tagtune.text.tokenizer import load_tokenizer

    torch.manual_seed(0)
    labels = tag_names(sorted({t[2:] for _, tags in wnut_sentences() for t in tags if t != "O"}), "BIO")
    model, _ = load_model(minilm_dir(), labels=labels)
    return save_model(model, load_tokenizer(minilm_dir()), folder, overwrite=True)


SIDES = ("pipeline", "tagtune", "tagtune-fp32", "tagtune-bf16", "onnx-fp32", "onnx-int8")
SMOKE_SIDES = ("pipeline", "tagtune", "tagtune-bf16")
ROWS = ("wall_seconds", "peak_rss_mb", "tag_seconds", "tokens_per_second", "useful_gflops_per_second",
        "efficiency_vs_fp32_gemm", "dev_f1")


def side_command(side: str, model: Path, onnx: dict[str, Path], texts: Path, out: Path, stats: Path) -> list[str]:
    """The child process of one side: the pipeline's script, or tagtune's with the folder and
    bf16 choice the side names."""
    if side == "pipeline":
        return [sys.executable, "-c", PEER, str(model), str(texts), str(out), str(stats)]
    folder = onnx[side] if side.startswith("onnx-") else model
    bf16 = {"tagtune-fp32": "off", "tagtune-bf16": "on"}.get(side, "auto")
    return [sys.executable, "-c", OURS, str(folder), str(texts), str(out), str(stats), bf16]


def export_sides(model: Path, sides: list[str], work: Path) -> dict[str, Path]:
    """ONNX folders for the onnx sides, as ``tagtune export --onnx DIR [--int8]`` writes them."""
    from tagtune.inference.export import export_onnx

    folders = {}
    for side in sides:
        if side.startswith("onnx-"):
            print(f"bench: exporting {side} ...", flush=True)
            folders[side] = work / side
            export_onnx(model, folders[side], int8=side == "onnx-int8", progress=False)
    return folders


def dev_examples(texts: list[str]) -> tuple[list[int], list]:
    """Indices of the tweets ``make demo`` held out as dev data (those among ``texts``), and the
    WNUT examples they index."""
    from tagtune.data.formats import read_examples, split_dev
    from tagtune.apps.examples import wnut_path
    from tagtune import TrainConfig

    examples = read_examples(str(wnut_path()))
    config = TrainConfig(model="", train="", out="")  # the demo's seed is TrainConfig's default
    _, dev = split_dev(examples, 0.1, config.seed)
    chosen = {id(e) for e in dev}
    return [i for i, e in enumerate(examples) if id(e) in chosen and i < len(texts) and texts[i] == e.text], examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/wnut-minilm", help="trained tagger folder")
    parser.add_argument("--repeat", type=int, default=2, help="how many times the 2,394 tweets are tagged")
    parser.add_argument("--sides", help=f"comma-separated, of {', '.join(SIDES)} (default: all; with --smoke "
                        "pipeline,tagtune,tagtune-bf16); the ratio column is the second over the first")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every side this many times, the order reversed each round, and report "
                             "each side's medians (the machine's speed drifts over minutes)")
    parser.add_argument("--smoke", action="store_true", help="100 tweets, to check the bench runs")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--kernels", choices=["native", "avx2"], default="native", help=KERNELS_HELP)
    parser.add_argument("--breakdown", action="store_true",
                        help="where a whole `python -m tagtune predict` process spends its time, on --texts texts")
    parser.add_argument("--texts", type=int, default=4000, help="--breakdown: texts (the 400 WNUT test tweets repeated)")
    parser.add_argument("--profiled-chunks", type=int, default=2,
                        help="--breakdown: chunks of 512 texts run again with their linear layers and attention timed")
    parser.add_argument("--against", metavar="SRC", help="--breakdown: also time the whole process with this "
                        "tagtune source folder first on the path (e.g. an older commit's src), in turns")
    args = parser.parse_args()
    use_kernels(args.kernels)
    if args.breakdown:
        breakdown(args)
        return
    sides = (args.sides or (",".join(SMOKE_SIDES) if args.smoke else ",".join(SIDES))).split(",")
    unknown = [side for side in sides if side not in SIDES]
    if unknown or len(sides) < 2:
        parser.error(f"--sides: at least two of {', '.join(SIDES)}; unknown: {', '.join(unknown) or '-'}")

    from tagtune.apps.examples import wnut_sentences
    from tagtune.data.metrics import span_scores
    from tagtune.inference.tagger import Tagger

    work = Path(tempfile.mkdtemp(prefix="tagtune-predict-bench-"))
    model = Path(args.model)
    if not (model / "config.json").is_file():
        print(f"bench: {model} not found; using MiniLM with a random head", flush=True)
        model = random_head_tagger(work / "tagger")
    texts = [" ".join(tokens) for tokens, _ in wnut_sentences()]
    texts = texts[:100] if args.smoke else texts * args.repeat
    (work / "texts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    tagger = Tagger.load(model, device="cpu", bf16="off")
    counts = [len(e) for e in tagger.tokenizer.encode_batch(texts)]
    tokens = sum(counts)
    shape = model_shape(model)
    flops = useful_flops(shape, [n + 2 for n in counts], training=False)
    print(f"bench: {len(texts)} texts, {tokens} tokens, tagger {model}", flush=True)
    onnx = export_sides(model, sides, work)
    dev, examples = dev_examples(texts)

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    rounds: dict[str, list[dict]] = {side: [] for side in sides}
    spans = {}
    for n in range(max(1, args.rounds)):
        for side in sides if n % 2 == 0 else sides[::-1]:
            print(f"bench: {side}" + (f" (round {n + 1})" if args.rounds > 1 else "") + " ...", flush=True)
            out, stats = work / f"{side}.jsonl", work / f"{side}.json"
            usage = run(side_command(side, model, onnx, work / "texts.txt", out, stats), env)
            measured = json.loads(stats.read_text())
            spans[side] = [[(s["start"], s["end"], s["label"]) for s in json.loads(line)["spans"]]
                           for line in out.read_text().splitlines()]
            # the child's own high-water mark: a forked child's ru_maxrss starts at this process's size
            usage["peak_rss_mb"] = measured["peak_rss_mb"]
            rounds[side].append({**usage, "tag_seconds": measured["seconds"],
                                 "tokens_per_second": tokens / measured["seconds"],
                                 "useful_gflops_per_second": flops / measured["seconds"] / 1e9})
    results = {}
    for side in sides:
        f1 = span_scores([examples[i].spans for i in dev], [spans[side][i] for i in dev])["f1"] if dev else None
        results[side] = {**{k: statistics.median(r[k] for r in rounds[side]) for k in rounds[side][0]}, "dev_f1": f1,
                         "precision": json.loads((work / f"{side}.json").read_text()).get("precision", "fp32"),
                         "rounds_tokens_per_second": [r["tokens_per_second"] for r in rounds[side]]}
    gemm = gemm_flops_per_second(shape, seconds=0.2 if args.smoke else 3.0)
    for r in results.values():
        r["efficiency_vs_fp32_gemm"] = r["useful_gflops_per_second"] * 1e9 / gemm

    # tagtune's spans against its own padded path (forward_padded over right-padded batches)
    ours = next((side for side in sides if side.startswith("tagtune")), None)
    padded = padded_path_spans(tagger, texts[: min(len(texts), 2394)])
    same = sum(1 for a, b in zip(spans[ours], padded) if a == [(s["start"], s["end"], s["label"]) for s in b]) \
        if ours else None

    first, second = sides[:2]
    print(f"\n{'':26}" + "".join(f"{side:>14}" for side in sides) + f"   {second}/{first}")
    for k in ROWS:
        row = [results[side][k] for side in sides]
        ratio = f"{row[1] / row[0]:>18.3f}" if None not in row[:2] and row[0] else ""
        print(f"{k:26}" + "".join(f"{'-' if x is None else format(x, '.4g'):>14}" for x in row) + ratio)
    print(f"{'precision':26}" + "".join(f"{results[side]['precision']:>14}" for side in sides))
    if ours:
        for side in sides:
            if side != ours and side != "pipeline":
                agree = sum(a == b for a, b in zip(spans[side], spans[ours]))
                results[side]["texts_equal_to_" + ours] = agree
                print(f"texts where {side}'s spans equal {ours}'s: {agree}/{len(texts)}")
        print(f"texts whose spans equal tagtune's padded path: {same}/{len(padded)}")
    if "pipeline" in sides and ours:
        agree = sum(a == b for a, b in zip(spans["pipeline"], spans[ours]))
        print(f"texts where the pipeline's spans equal {ours}'s: {agree}/{len(texts)} "
              "(the pipeline tags every subword and merges them its own way)")
    if args.rounds > 1:
        print(f"medians of {args.rounds} rounds; tokens/s by round: " + "; ".join(
            f"{side} " + ", ".join(f"{x:.0f}" for x in results[side]["rounds_tokens_per_second"]) for side in sides))
    print(f"dev_f1: entity F1 (exact character spans) on the {len(dev)} tweets make demo held out as dev")
    print(f"fp32 GEMM at the model's shapes, measured here: {gemm / 1e9:.0f} GFLOP/s")
    here = machine()
    print(machine_line(here))
    if args.kernels != "native" and any(side.startswith("onnx-") for side in sides):
        print("onnx sides: ONNX Runtime chooses its kernels from the CPU's flags; --kernels does not limit them")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "gemm_gflops_per_second": gemm / 1e9,
                                               "padded_path_agreement": [same, len(padded)], "dev_tweets": len(dev),
                                               **here}, indent=2))


def breakdown_texts(count: int) -> list[str]:
    """The WNUT-2016 test tweets of train_bench's split (400), repeated up to ``count`` texts."""
    from train_bench import split_tweets

    _, _, test = split_tweets(400)
    texts = [" ".join(tokens) for tokens, _ in test]
    return (texts * -(-count // len(texts)))[:count]


def whole_process(model: Path, texts: Path, out: Path, src: str | None) -> dict:
    """``python -m tagtune predict MODEL TEXTS -o OUT --quiet`` (with ``src`` first on the path)."""
    env = dict(os.environ, **({"PYTHONPATH": src} if src else {}))
    return run([sys.executable, "-m", "tagtune", "predict", str(model), str(texts), "-o", str(out), "--quiet",
                "--overwrite"], env)


def in_process(model: Path, texts: Path, work: Path, profiled_chunks: int) -> dict:
    """The BREAKDOWN child's stages, and its exit: from its last line to the end of the process."""
    import subprocess
    import time

    stats = work / "breakdown.json"
    subprocess.run([sys.executable, "-c", BREAKDOWN, str(model), str(texts), str(work / "breakdown.jsonl"),
                    str(stats), "quick", str(profiled_chunks)], check=True)
    ended = time.time()
    measured = json.loads(stats.read_text())
    measured["exit"] = ended - float(Path(str(stats) + ".end").read_text())
    return measured


def breakdown(args) -> None:
    """``--breakdown``: where the time of a whole `tagtune predict` process goes."""
    import time

    work = Path(tempfile.mkdtemp(prefix="tagtune-predict-breakdown-"))
    model = Path(args.model)
    if not (model / "config.json").is_file():
        print(f"bench: {model} not found; using MiniLM with a random head", flush=True)
        model = random_head_tagger(work / "tagger")
    texts = breakdown_texts(args.texts)
    (work / "texts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    print(f"bench: {len(texts)} texts, tagger {model}; load average {os.getloadavg()[0]:.2f}", flush=True)
    sides = {"this tree": None, **({"against": args.against} if args.against else {})}
    whole: dict[str, list[float]] = {side: [] for side in sides}
    for n in range(max(1, args.rounds)):  # the sides in turns, the order reversed each round
        for side in list(sides) if n % 2 == 0 else list(sides)[::-1]:
            result = whole_process(model, work / "texts.txt", work / f"out-{side[:4]}-{len(whole[side])}.jsonl", sides[side])
            whole[side].append(result["wall_seconds"])
            print(f"bench: {side}: whole process {result['wall_seconds']:.2f} s, load average "
                  f"{result['load_before']:.2f} -> {result['load_after']:.2f}", flush=True)
    outputs = {(work / f"out-this-{k}.jsonl").read_bytes() for k in range(len(whole["this tree"]))}
    interpreter = run([sys.executable, "-c", "pass"])["wall_seconds"]
    imports = run([sys.executable, "-c", "import tagtune.apps.predict, tagtune.__main__, torch"])["wall_seconds"]
    t = time.perf_counter()
    stages = in_process(model, work / "texts.txt", work, args.profiled_chunks)
    in_process_seconds = time.perf_counter() - t
    total = statistics.median(whole["this tree"])
    share = stages["forward"] / stages["profiled_forward"]
    linear = stages["profiled_linear"] * share
    attention = stages["profiled_attention"] * share
    rows = [
        ("interpreter start-up", interpreter),
        ("imports (torch, tagtune)", imports - interpreter),
        ("model build", stages["build"]),
        ("read weights", stages["read_weights"]),
        ("rest of loading (tokenizer, bf16 copies)", stages["load"] - stages["build"] - stages["read_weights"]),
        ("tokenising and windowing", stages["tokenise_window"]),
        ("forward: linear layers' matmuls", linear),
        ("forward: attention", attention),
        ("forward: other ops", stages["forward"] - linear - attention),
        ("merging windows", stages["merge"]),
        ("decoding", stages["decode"]),
        ("writing", stages["write"]),
        ("exit", stages["exit"]),
    ]
    accounted = sum(seconds for _, seconds in rows)
    rows.append(("overlapped (-) or unaccounted (+)", total - accounted))
    print(f"\n{'whole tagtune predict process':44}{total:>9.2f} s  100.0%   (median of {len(whole['this tree'])}; "
          f"in-process breakdown run {in_process_seconds:.1f} s)")
    for name, seconds in rows:
        print(f"{name:44}{seconds:>9.2f} s  {100 * seconds / total:5.1f}%")
    other = (total - linear) / total
    print(f"\nnot a linear layer's matmul: {100 * other:.1f}% of the whole process (target 15%: "
          f"{'met' if other <= 0.15 else 'not met'})")
    print(f"precision {stages['precision']}, {stages['threads']} torch threads; the forward split by the shares "
          f"the first {args.profiled_chunks} chunks of 512 texts gave, run again with each linear layer and "
          f"each packed_attention call timed")
    print("the stages are timed one after the other; `tagtune predict` overlaps tokenising and decoding with "
          "the forward passes, hence the overlapped line")
    if len(outputs) != 1:
        print("bench: the whole-process runs' outputs differ!")
    for side, times in whole.items():
        print(f"{side}: whole process " + ", ".join(f"{x:.2f}" for x in times) + f" s (median {statistics.median(times):.2f})")
    if args.against:
        print(f"this tree / against: {total / statistics.median(whole['against']):.3f}")
    print(machine_line(machine()) + f"; load average now {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "whole_seconds": whole, "stages": stages,
                                               "rows": dict(rows), "not_linear_share": other,
                                               "interpreter": interpreter, "imports": imports, **machine()},
                                              indent=2))


def padded_path_spans(tagger, texts: list[str]) -> list[list[dict]]:
    """Spans from tagtune's padded entry point: the same windows, run as right-padded batches."""
    import torch

    from tagtune.data.align import units_of, with_specials

    out = []
    with torch.inference_mode():
        for lo in range(0, len(texts), 64):
            chunk = texts[lo:lo + 64]
            encodings = tagger.tokenizer.encode_batch(chunk)
            units = [units_of(e) for e in encodings]
            rows = [with_specials(e.ids, tagger.tokenizer.cls_id, tagger.tokenizer.sep_id) for e in encodings]
            assert all(len(r) <= tagger.settings.max_length for r in rows), "texts longer than one window"
            width = max(len(r) for r in rows)
            ids = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
                mask[i, :len(r)] = 1
            logits = tagger.model.forward_padded(ids, mask).float()
            unit_logits = [logits[i, 1:len(r) - 1][u.first] for i, (r, u) in enumerate(zip(rows, units))]
            for text, spans in zip(chunk, tagger.spans(unit_logits, units)):
                out.append([s.to_dict(text) for s in spans])
    return out


if __name__ == "__main__":
    main()
