"""Prediction: `tagtune predict` against transformers' token-classification pipeline, in one run.

    .venv/bin/python bench/predict_bench.py [--model TAGGER_DIR] [--repeat 2]
    .venv/bin/python bench/predict_bench.py --smoke

Both sides tag the same texts (the WNUT-2016 tweets, repeated ``--repeat`` times) with the same
trained tagger folder (default: runs/wnut-minilm from ``make demo``; without it, MiniLM with a
random head is saved and used, which is as good for timing). Each side runs as its own process;
reported: whole-process wall time, peak RSS, tagging time (model loading and file writing
excluded on both sides) and real tokens per second (tokens of the texts, no padding or special
tokens counted). The pipeline is used as the HF docs show it:
``pipeline("token-classification", model=DIR, aggregation_strategy="simple")``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from flops import gemm_flops_per_second, model_shape, useful_flops  # noqa: E402
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
json.dump({"seconds": seconds}, open(sys.argv[4], "w"))
"""

OURS = """
import json, sys, time
from tagtune.tagger import Tagger
texts = [line.rstrip("\\n") for line in open(sys.argv[2], encoding="utf-8")]
tagger = Tagger.load(sys.argv[1], device="cpu")
start = time.perf_counter()
results = []
for lo in range(0, len(texts), 512):  # as `tagtune predict` does: 512 texts read and tagged at a time
    results += tagger.predict(texts[lo:lo + 512])
seconds = time.perf_counter() - start
with open(sys.argv[3], "w", encoding="utf-8") as f:
    for text, spans in zip(texts, results):
        f.write(json.dumps({"text": text, "spans": [s.to_dict(text) for s in spans]}) + "\\n")
json.dump({"seconds": seconds}, open(sys.argv[4], "w"))
"""


def random_head_tagger(folder: Path) -> Path:
    import torch

    from tagtune.checkpoint import load_model, save_model
    from tagtune.examples import minilm_dir, wnut_sentences
    from tagtune.schemes import tag_names
    from tagtune.tokenizer import load_tokenizer

    torch.manual_seed(0)
    labels = tag_names(sorted({t[2:] for _, tags in wnut_sentences() for t in tags if t != "O"}), "BIO")
    model, _ = load_model(minilm_dir(), labels=labels)
    return save_model(model, load_tokenizer(minilm_dir()), folder, overwrite=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/wnut-minilm", help="trained tagger folder")
    parser.add_argument("--repeat", type=int, default=2, help="how many times the 2,394 tweets are tagged")
    parser.add_argument("--smoke", action="store_true", help="100 tweets, to check the bench runs")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from tagtune.examples import wnut_sentences
    from tagtune.tagger import Tagger

    work = Path(tempfile.mkdtemp(prefix="tagtune-predict-bench-"))
    model = Path(args.model)
    if not (model / "config.json").is_file():
        print(f"bench: {model} not found; using MiniLM with a random head", flush=True)
        model = random_head_tagger(work / "tagger")
    texts = [" ".join(tokens) for tokens, _ in wnut_sentences()]
    texts = texts[:100] if args.smoke else texts * args.repeat
    (work / "texts.txt").write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    tagger = Tagger.load(model, device="cpu")
    counts = [len(e) for e in tagger.tokenizer.encode_batch(texts)]
    tokens = sum(counts)
    shape = model_shape(model)
    flops = useful_flops(shape, [n + 2 for n in counts], training=False)
    print(f"bench: {len(texts)} texts, {tokens} tokens, tagger {model}", flush=True)

    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    results = {}
    for side, script in (("pipeline", PEER), ("tagtune", OURS)):
        print(f"bench: {side} ...", flush=True)
        out, stats = work / f"{side}.jsonl", work / f"{side}.json"
        usage = run([sys.executable, "-c", script, str(model), str(work / "texts.txt"), str(out), str(stats)], env)
        seconds = json.loads(stats.read_text())["seconds"]
        results[side] = {**usage, "tag_seconds": seconds, "tokens_per_second": tokens / seconds,
                         "useful_gflops_per_second": flops / seconds / 1e9}
    gemm = gemm_flops_per_second(shape, seconds=0.2 if args.smoke else 3.0)
    for r in results.values():
        r["efficiency_vs_fp32_gemm"] = r["useful_gflops_per_second"] * 1e9 / gemm

    # tagtune's spans against its own padded path (forward_padded over right-padded batches)
    predicted = [json.loads(line)["spans"] for line in (work / "tagtune.jsonl").read_text().splitlines()]
    padded = padded_path_spans(tagger, texts[: min(len(texts), 2394)])
    same = sum(1 for a, b in zip(predicted, padded) if a == b)
    pipe = [json.loads(line)["spans"] for line in (work / "pipeline.jsonl").read_text().splitlines()]
    key = [[(s["start"], s["end"], s["label"]) for s in spans] for spans in predicted]
    pipe_key = [[(s["start"], s["end"], s["label"]) for s in spans] for spans in pipe]
    agree = sum(1 for a, b in zip(key, pipe_key) if a == b)

    print(f"\n{'':26}{'pipeline':>14}{'tagtune':>14}   tagtune/pipeline")
    for k in ("wall_seconds", "peak_rss_mb", "tag_seconds", "tokens_per_second", "useful_gflops_per_second",
              "efficiency_vs_fp32_gemm"):
        a, b = results["pipeline"][k], results["tagtune"][k]
        print(f"{k:26}{a:>14.4g}{b:>14.4g}{b / a:>18.3f}")
    print(f"texts whose spans equal tagtune's padded path: {same}/{len(padded)}")
    print(f"texts where the pipeline's spans equal tagtune's: {agree}/{len(texts)} "
          "(the pipeline tags every subword and merges them its own way)")
    print(f"fp32 GEMM at the model's shapes, measured here: {gemm / 1e9:.0f} GFLOP/s")
    print(f"machine: {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "gemm_gflops_per_second": gemm / 1e9,
                                               "padded_path_agreement": [same, len(padded)]}, indent=2))


def padded_path_spans(tagger, texts: list[str]) -> list[list[dict]]:
    """Spans from tagtune's padded entry point: the same windows, run as right-padded batches."""
    import torch

    from tagtune.align import units_of, with_specials

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
