"""Plots of the bench results, for the benchmarks page of the docs.

    .venv/bin/python bench/plots.py OUTDIR                 # reads bench/results-*.json
    .venv/bin/python bench/plots.py OUTDIR --results DIR   # reads DIR/results-*.json

Reads the results files the bench scripts write with ``--json`` and writes PNGs into OUTDIR:

- train-speed.png: real training tokens/s, tagtune against the transformers Trainer, the medians
  of each results-train-*.json that ran both sides, the ratio written on tagtune's bar;
- train-wall.png: whole-process wall time, the same pairs;
- f1-seeds.png: test entity F1 of every seed's run, tagtune against the Trainer;
- predict-speed.png: prediction tokens/s of transformers' pipeline, tagtune in fp32 and bf16 and
  the ONNX exports in fp32 and int8 (results-predict-*.json);
- calibration.png: the reliability diagram of the span scores (results-calibration-*.json).

Each group of bars is labelled with its results file, the model and the machine as the file
records it. A file without a field a plot needs is left out of that plot with a warning on
stderr. The docs build calls :func:`write_plots`; matplotlib is imported only there (Agg, no
display), and the figures have a fixed size and resolution and no software version in their
metadata, so the same results give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SIZE = (10, 7)  # inches; at 100 dpi, 1000 x 700 pixels
TAGTUNE, PEER = "#3f51b5", "#9e9e9e"
PREDICT_SIDES = {"pipeline": "pipeline", "tagtune-fp32": "tagtune fp32", "tagtune-bf16": "tagtune bf16",
                 "onnx-fp32": "ONNX fp32", "onnx-int8": "ONNX int8"}


class Missing(Exception):
    """A results file lacks a field a plot needs (the message names it)."""


def warn(name: str, problem: str, plot: str) -> None:
    print(f"warning: {name}: {problem}: left out of {plot}", file=sys.stderr)


def field(record: dict, path: str):
    """``record``'s value at the dotted ``path`` ("medians.tagtune.wall_seconds")."""
    value = record
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise Missing(f"no {path}")
        value = value[key]
    return value


def number(record: dict, path: str, positive: bool = False) -> float:
    """The number at ``path`` (one a ratio divides by: ``positive``)."""
    value = field(record, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (positive and not value > 0):
        raise Missing(f"{path} is {value!r}, not a{' positive' if positive else ''} number")
    return float(value)


def arguments(record: dict) -> dict:
    """The command-line arguments the bench recorded, ``{}`` where there are none."""
    return record["args"] if isinstance(record.get("args"), dict) else {}


def machine(record: dict) -> str:
    """The machine as the results file records it (older files record none)."""
    if not record.get("cpu"):
        return "machine not recorded"
    kernels = str(record.get("kernels") or "").split(" (")[0]
    return record["cpu"] + (f", {kernels} kernels" if kernels else "")


def model(record: dict) -> str:
    """The model a training bench ran: its family where it was a random checkpoint of one, else
    the name of its folder."""
    args = arguments(record)
    if args.get("family") not in (None, "pretrained"):
        return f"{args['family']} (random weights)"
    path = Path(str(args.get("model") or "model not recorded"))
    return path.parent.name if path.name == "model" else path.name


def label(name: str, *lines: str) -> str:
    """A group's label: the results file's name without ``results-`` and ``.json``, then ``lines``."""
    return "\n".join([name.removeprefix("results-").removesuffix(".json"), *lines])


def read_results(results_dir: Path) -> dict[str, dict]:
    """The results files in ``results_dir`` by name, in name order; unreadable ones left out."""
    results = {}
    for path in sorted(results_dir.glob("results-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            warn(path.name, f"cannot be read ({e})", "every plot")
            continue
        if not isinstance(record, dict):
            warn(path.name, "holds no JSON object", "every plot")
            continue
        results[path.name] = record
    return results


def training_pairs(results: dict[str, dict]) -> dict[str, dict]:
    """The training results that ran both sides (``--only tagtune`` runs compare tagtune with itself)."""
    return {name: record for name, record in results.items()
            if name.startswith("results-train-") and not arguments(record).get("only")}


def figure():
    from matplotlib.figure import Figure

    return Figure(figsize=SIZE, dpi=100, layout="constrained")


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, format="png", metadata={"Software": None})
    return path


def plot_pairs(pairs: dict[str, dict], metric: str, path: Path, title: str, axis: str) -> Path | None:
    """Horizontal bars of ``medians.{side}.{metric}`` for tagtune and the Trainer, one group per
    results file, tagtune / Trainer written on tagtune's bar."""
    rows = []
    for name, record in pairs.items():
        try:
            ours = number(record, f"medians.tagtune.{metric}")
            theirs = number(record, f"medians.trainer.{metric}", positive=True)
        except Missing as e:
            warn(name, str(e), path.name)
            continue
        runs = (record.get("runs") or {}).get("tagtune") if isinstance(record.get("runs"), dict) else None
        seeds = len(runs) if isinstance(runs, list) else 0
        over = f"median of {seeds} seeds" if seeds > 1 else "one seed" if seeds else "seeds not recorded"
        rows.append((label(name, f"{model(record)}, {over}", machine(record)), ours, theirs))
    if not rows:
        return None
    fig = figure()
    ax = fig.add_subplot()
    at = range(len(rows))
    ax.barh([i - 0.2 for i in at], [r[2] for r in rows], height=0.4, color=PEER, label="transformers Trainer")
    bars = ax.barh([i + 0.2 for i in at], [r[1] for r in rows], height=0.4, color=TAGTUNE, label="tagtune")
    ax.bar_label(bars, [f" {ours / theirs:.2f}x" for _, ours, theirs in rows], fontsize=9)
    ax.set_yticks(list(at), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.set_xlabel(axis)
    ax.set_title(title + "\nside by side in one run per results file; the ratio is tagtune / Trainer", fontsize=11)
    fig.legend(loc="outside lower center", ncols=len(ax.get_legend_handles_labels()[0]))
    return save(fig, path)


def plot_f1_seeds(pairs: dict[str, dict], path: Path) -> Path | None:
    """A dot per seed's test F1 for each side, one row per results file."""
    rows = []
    for name, record in pairs.items():
        try:
            sides = [[number(run, "f1_seqeval_words") for run in field(record, f"runs.{side}")]
                     for side in ("tagtune", "trainer")]
            if not all(sides):
                raise Missing("no run in runs.tagtune or runs.trainer")
        except (Missing, TypeError) as e:
            warn(name, str(e) if isinstance(e, Missing) else "runs.tagtune or runs.trainer is not a list of runs",
                 path.name)
            continue
        rows.append((label(name, model(record), machine(record)), *sides))
    if not rows:
        return None
    fig = figure()
    ax = fig.add_subplot()
    for side, offset, colour, marker, name in ((2, -0.15, PEER, "s", "transformers Trainer"),
                                               (1, 0.15, TAGTUNE, "o", "tagtune")):
        for i, row in enumerate(rows):
            ax.scatter(row[side], [i + offset] * len(row[side]), color=colour, marker=marker, s=36,
                       label=name if i == 0 else None, zorder=3)
            ax.plot([statistics.median(row[side])] * 2, [i + offset - 0.12, i + offset + 0.12], color=colour)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("test entity F1 (seqeval over words)")
    ax.set_title("Test F1 by seed: tagtune vs the transformers Trainer\none dot per seed, a bar at the median",
                 fontsize=11)
    fig.legend(loc="outside lower center", ncols=len(ax.get_legend_handles_labels()[0]))
    return save(fig, path)


def plot_predict(results: dict[str, dict], path: Path) -> Path | None:
    """Prediction tokens/s of each side, one group per results-predict-*.json, the speed over the
    pipeline's written on each bar."""
    groups = []
    for name, record in results.items():
        if not name.startswith("results-predict-"):
            continue
        try:
            base = number(record, "results.pipeline.tokens_per_second", positive=True)
            speeds = {side: number(record, f"results.{side}.tokens_per_second")
                      for side in PREDICT_SIDES if side in (record.get("results") or {})}
        except Missing as e:
            warn(name, str(e), path.name)
            continue
        groups.append((label(name, machine(record)), base, speeds, record.get("kernels", "")))
    if not groups:
        return None
    fig = figure()
    ax = fig.add_subplot()
    width = 0.8 / len(PREDICT_SIDES)
    colours = [PEER, TAGTUNE, "#7986cb", "#ef6c00", "#ffb74d"]
    for k, (side, name) in enumerate(PREDICT_SIDES.items()):
        at = [i for i, group in enumerate(groups) if side in group[2]]
        speeds = [groups[i][2][side] for i in at]
        bars = ax.barh([i - 0.4 + width * (k + 0.5) for i in at], speeds, height=width, color=colours[k], label=name)
        ax.bar_label(bars, [f" {speed / groups[i][1]:.2f}x" for i, speed in zip(at, speeds)], fontsize=8)
    ax.set_yticks(range(len(groups)), [g[0] for g in groups], fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.set_xlabel("real tokens/s while tagging (model loading and writing left out)")
    title = "Prediction speed: transformers' pipeline, tagtune and its ONNX exports\nx the pipeline's tokens/s"
    if any(str(g[3]).startswith("AVX2") for g in groups):
        title += "; with AVX2 kernels ONNX Runtime still picks its own from the CPU's flags"
    ax.set_title(title, fontsize=11)
    fig.legend(loc="outside lower center", ncols=len(ax.get_legend_handles_labels()[0]))
    return save(fig, path)


def plot_calibration(results: dict[str, dict], path: Path) -> Path | None:
    """The reliability diagram of the first results-calibration-*.json that has one: per bin of
    score, the fraction of spans that were right against their mean score, dot size by spans;
    from a file without bins, its expected calibration errors."""
    for name, record in results.items():
        if not name.startswith("results-calibration-"):
            continue
        try:
            scores = field(record, "results")
            if not isinstance(scores, dict) or not scores:
                raise Missing("no scores under results")
            ece = {score: number(record, f"results.{score}.ece") for score in scores}
        except Missing as e:
            warn(name, str(e), path.name)
            continue
        bins = {score: [b for b in values.get("bins") or [] if isinstance(b, dict) and b.get("count")
                        and all(isinstance(b.get(k), (int, float)) for k in ("mean_score", "correct"))]
                for score, values in scores.items()}
        fig = figure()
        ax = fig.add_subplot()
        where = f"{name}, {machine(record)}"
        if all(bins.values()):
            ax.plot([0, 1], [0, 1], color=PEER, linestyle="--", label="calibrated")
            for (score, rows), colour in zip(bins.items(), (PEER, TAGTUNE, "#ef6c00")):
                xs, ys = [b["mean_score"] for b in rows], [b["correct"] for b in rows]
                ax.plot(xs, ys, color=colour, alpha=0.6)
                ax.scatter(xs, ys, s=[12 + 4 * b["count"] for b in rows], color=colour, zorder=3,
                           label=f"{score} (ECE {ece[score]:.3f})")
            ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="mean score of the spans in the bin",
                   ylabel="fraction of those spans exactly right")
            spans = record.get("spans")
            title = "Reliability of span scores, 10 bins" + (f", {spans} predicted spans" if spans else "")
            where += "; dot size: spans in the bin"
            for handle in ax.legend(loc="upper left").legend_handles[1:]:
                handle.set_sizes([48])  # the dots' sizes are the bins', not the scores'

        else:
            bars = ax.bar(list(ece), list(ece.values()), color=[PEER, TAGTUNE, "#ef6c00"][:len(ece)])
            ax.bar_label(bars, [f"{v:.3f}" for v in ece.values()])
            ax.set_ylabel("expected calibration error")
            title = "Expected calibration error of span scores (the file holds no reliability bins)"
        ax.set_title(f"{title}\n{where}", fontsize=11)
        return save(fig, path)
    return None


def write_plots(results_dir: Path, out_dir: Path) -> list[Path]:
    """Write the PNGs for the results files in ``results_dir`` into ``out_dir`` (made if need be);
    the paths written, a plot with no results to show left out."""
    import matplotlib.style

    results = read_results(Path(results_dir))
    pairs = training_pairs(results)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with matplotlib.style.context("default"):  # not the user's matplotlibrc: the same bytes anywhere
        written = [
            plot_pairs(pairs, "train_tokens_per_second", out_dir / "train-speed.png",
                       "Training speed: tagtune vs the transformers Trainer", "real training tokens/s (median)"),
            plot_pairs(pairs, "wall_seconds", out_dir / "train-wall.png",
                       "Whole-process wall time of training: tagtune vs the transformers Trainer",
                       "seconds (median; lower is better)"),
            plot_f1_seeds(pairs, out_dir / "f1-seeds.png"),
            plot_predict(results, out_dir / "predict-speed.png"),
            plot_calibration(results, out_dir / "calibration.png"),
        ]
    return [path for path in written if path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the PNGs (made if need be)")
    parser.add_argument("--results", type=Path, default=BENCH,
                        help="folder of the results-*.json files (default: bench/)")
    args = parser.parse_args()
    if not args.results.is_dir():
        sys.exit(f"error: {args.results} is not a folder; pass --results the folder of the results-*.json files")
    try:
        written = write_plots(args.results, args.out)
    except OSError as e:
        sys.exit(f"error: cannot write the plots into {args.out}: {e.strerror or e}; pass a folder you can write to")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
