"""tagtune train eager against tagtune train --compile, on the same data, model and settings.

    .venv/bin/python bench/compile_bench.py                      # MiniLM and a random ModernBERT, 10,000 texts, 3 epochs
    .venv/bin/python bench/compile_bench.py --texts 2000 --families pretrained
    .venv/bin/python bench/compile_bench.py --smoke              # a tiny random BERT, 200 texts, 2 epochs (Inductor's
                                                                 # own cache: under a minute once it is warm)

WNUT-2016 is split as bench/train_bench.py splits it (the test tweets left out); its training
tweets are repeated up to ``--texts`` texts ("one epoch of a 10k-text set"), its dev tweets are the
dev set. Each side runs ``tagtune train`` as its own process (Inductor's cache in a fresh folder, so
the compile time is a first run's). From each run's metrics.jsonl: the compile seconds (the epoch
entries' ``compile_seconds``), the steady tokens/s (epochs after the first, with their compile
seconds taken out), and the break-even point: the epochs after which the compiled run's faster
steps have paid its compiling back (compile seconds / seconds saved per epoch), or never.
Figures from a loaded machine are noise: the load average is recorded before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from flops import machine, machine_line  # noqa: E402
from tagtune.apps.examples import minilm_dir, write_conll  # noqa: E402
from train_bench import epoch_entries, random_model, run, split_tweets  # noqa: E402

FAMILIES = ("pretrained", "modernbert")
"""pretrained: the packaged all-MiniLM-L6-v2; modernbert: a random ModernBERT of MiniLM's width,
depth, heads and tokenizer (train_bench.random_model)."""


def side(data: Path, work: Path, model: Path, compiled: bool, epochs: int, bf16: str, cold: bool = True) -> dict:
    """One ``tagtune train`` run on ``data``/{train,dev}.conll, into ``work``; its process figures and
    epoch entries. ``cold``: Inductor's cache in a new folder (else the user's, warm after a first run)."""
    out = work / ("compiled" if compiled else "eager")
    cmd = [sys.executable, "-m", "tagtune", "train", "--model", str(model), "--train", str(data / "train.conll"),
           "--dev", str(data / "dev.conll"), "--out", str(out), "--epochs", str(epochs), "--patience", "1000",
           "--lr", "5e-5", "--seed", "42", "--bf16", bf16, "--save", "last"] + (["--compile"] if compiled else [])
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    if cold:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(work / f"inductor-{out.name}")
    figures = run(cmd, env=env, log=work / f"{out.name}.log")
    entries = epoch_entries(out)
    compile_seconds = sum(e.get("compile_seconds", 0.0) for e in entries)
    later = entries[1:] or entries
    tokens = sum(e["train_tokens"] for e in later)
    seconds = sum(e["train_seconds"] - e.get("compile_seconds", 0.0) for e in later)
    return {**figures, "epochs": [{k: e.get(k) for k in ("epoch", "train_loss", "train_tokens", "train_seconds",
                                                          "tokens_per_second", "compile_seconds")} for e in entries],
            "compile_seconds": round(compile_seconds, 1), "steady_tokens_per_second": round(tokens / seconds, 1),
            "steady_epoch_seconds": round(seconds / len(later), 2)}


def compare(eager: dict, compiled: dict) -> dict:
    """The ratio of the steady speeds and the break-even point in epochs."""
    saved = eager["steady_epoch_seconds"] - compiled["steady_epoch_seconds"]
    return {"speedup": round(compiled["steady_tokens_per_second"] / eager["steady_tokens_per_second"], 3),
            "seconds_saved_per_epoch": round(saved, 2),
            "break_even_epochs": round(compiled["compile_seconds"] / saved, 2) if saved > 0 else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny random BERT, 200 texts, 2 epochs")
    parser.add_argument("--texts", type=int, default=10_000, help="training texts: the tweets repeated up to N")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    parser.add_argument("--bf16", choices=["auto", "off"], default="auto")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    texts, epochs = (200, 2) if args.smoke else (args.texts, args.epochs)
    train, dev, _ = split_tweets(400)
    train = (train * (texts // len(train) + 1))[:texts]
    results = {"machine": machine_line(machine()), "date": time.strftime("%Y-%m-%d", time.gmtime()), "texts": texts,
               "epochs": epochs, "bf16": args.bf16, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="tagtune-compile-bench-") as tmp:
        work = Path(tmp)
        write_conll(work / "train.conll", train)
        write_conll(work / "dev.conll", dev[:100] if args.smoke else dev)
        for family in ["smoke"] if args.smoke else families:
            folder = work / family
            folder.mkdir()
            if family == "smoke":
                model = tiny_bert(folder)
            elif family == "pretrained":
                model = minilm_dir()
            else:
                model = random_model(family, folder / "model", minilm_dir())
            eager = side(work, folder, model, False, epochs, args.bf16, not args.smoke)
            compiled = side(work, folder, model, True, epochs, args.bf16, not args.smoke)
            results["runs"][family] = {"eager": eager, "compiled": compiled, **compare(eager, compiled)}
            r = results["runs"][family]
            print(f"{family}: eager {eager['steady_tokens_per_second']:,.0f} tok/s; compiled "
                  f"{compiled['steady_tokens_per_second']:,.0f} tok/s after {compiled['compile_seconds']:.1f} s of "
                  f"compiling; speedup {r['speedup']:.3f}; break-even "
                  + (f"after {r['break_even_epochs']:.2f} epochs" if r["break_even_epochs"] is not None else "never")
                  + f" (load {eager['load_before']:.1f} -> {compiled['load_after']:.1f})")
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def tiny_bert(folder: Path) -> Path:
    """A random BERT of width 64, two layers, with MiniLM's tokenizer (seed 0): the smoke's model."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=512)
    transformers.BertModel(config).save_pretrained(folder / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, folder / "model" / name)
    return folder / "model"


if __name__ == "__main__":
    main()
