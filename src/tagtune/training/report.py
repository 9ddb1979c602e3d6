"""report.html in a training output folder: loss and dev-F1 curves, the epochs, a per-label table,
and how well the kept model's span scores predict which dev spans are right.

One self-contained page (inline SVG, no scripts or downloads), made from metrics.jsonl entries:
step entries ``{"step", "epoch", "loss"}`` (the epoch's mean loss so far, every 10 optimizer
steps) and epoch entries ``{"epoch", "step", "train_loss", ...}`` with ``dev`` and
``dev_per_label`` when the run has a dev set. Both charts have epochs on the x axis, from the
first point, with ticks at whole epochs; a step entry sits at its fraction of its epoch.

The kept epoch's dev predictions, summed up by tagtune.data.metrics.calibration (given to ``render``,
or found in the epoch entry as ``dev_calibration``), add two charts: a reliability diagram (10
score bins: the spans' mean score against the fraction of them exactly right, with counts) and
the precision and recall of the spans scoring at least a threshold, against the threshold.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from tagtune.files import atomic_write

WIDTH, HEIGHT = 520, 260
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 14, 40  # plot margins inside the SVG


def loss_points(history: list[dict]) -> list[tuple[float, float]]:
    """(epoch, loss) points: each epoch's train loss at its end, and the step entries at their
    fraction of their epoch (the epoch's mean loss so far), in order."""
    ends = {h["epoch"]: h["step"] for h in history if "train_loss" in h}
    last_step: dict[int, int] = {}
    for h in history:
        if "loss" in h:
            last_step[h["epoch"]] = max(h["step"], last_step.get(h["epoch"], 0))
    points: dict[float, float] = {}
    for h in history:
        if "loss" in h:
            epoch = h["epoch"]
            start = ends.get(epoch - 1, 0)
            end = ends.get(epoch, last_step[epoch])
            x = epoch - 1 + (h["step"] - start) / max(end - start, 1)
            points[round(x, 6)] = h["loss"]
    for epoch, h in ((h["epoch"], h) for h in history if "train_loss" in h):
        points[float(epoch)] = h["train_loss"]
    return sorted(points.items())


def _nice_top(value: float) -> tuple[float, float]:
    """(top, step): a round upper bound for an axis from 0 to ``value``, and its tick step."""
    if not value > 0:
        return 1.0, 0.25
    raw = value / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    return step * math.ceil(value / step - 1e-9), step


def _epoch_ticks(x0: float, x1: float) -> list[int]:
    first, last = math.ceil(x0 - 1e-9), math.floor(x1 + 1e-9)
    every = max(1, math.ceil((last - first + 1) / 12))
    return list(range(first, last + 1, every))


def _chart(title: str, kind: str, points: list[tuple[float, float]], dots: list[tuple[float, float]],
           highlight: float | None = None, empty: str = "no data yet") -> str:
    """A figure with an SVG line chart of ``points`` (x in epochs), circles at ``dots``, and a
    ring at the dot whose x is ``highlight``."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    frame = f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>'
    axis = f'<text class="axis-label" x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">epoch</text>'
    if not points:
        body = f'<text class="empty" x="{LEFT + plot_w / 2}" y="{TOP + plot_h / 2}" text-anchor="middle">{empty}</text>'
    else:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(xs)
        top, step = _nice_top(max(ys))
        bottom = min(0.0, min(ys))

        def sx(x: float) -> float:
            return LEFT + (plot_w / 2 if x1 == x0 else (x - x0) / (x1 - x0) * plot_w)

        def sy(y: float) -> float:
            return TOP + plot_h - (y - bottom) / ((top - bottom) or 1) * plot_h

        parts = []
        for k in range(int(round((top - bottom) / step)) + 1):
            y = bottom + k * step
            parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(y):.1f}" y2="{sy(y):.1f}"/>'
                         f'<text class="y-tick" x="{LEFT - 10}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.4g}</text>')
        for e in _epoch_ticks(x0, x1):
            parts.append(f'<line class="tick" x1="{sx(e):.1f}" x2="{sx(e):.1f}" y1="{TOP + plot_h}" '
                         f'y2="{TOP + plot_h + 5}"/><text class="x-tick" data-value="{e}" x="{sx(e):.1f}" '
                         f'y="{TOP + plot_h + 18}" text-anchor="middle">{e}</text>')
        d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
        parts.append(f'<path class="line" d="{d}"/>')
        for x, y in dots:
            parts.append(f'<circle class="point" data-x="{x:g}" data-y="{y:.5g}" cx="{sx(x):.1f}" cy="{sy(y):.1f}" '
                         f'r="3"><title>epoch {x:g}: {y:.4f}</title></circle>')
            if highlight is not None and x == highlight:
                parts.append(f'<circle class="kept" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="7"/>')
        body = "".join(parts)
    return (f'<figure class="chart" data-chart="{kind}"><figcaption>{html.escape(title)}</figcaption>'
            f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
            f'aria-label="{html.escape(title)}">{frame}{body}{axis}</svg></figure>')


def _f(value: float) -> str:
    return f"{value:.4f}"


UNIT_W, UNIT_H = 380, 300  # charts over [0, 1] x [0, 1]


def _unit_chart(title: str, kind: str, x_label: str, y_label: str, body) -> str:
    """A figure with a [0, 1] x [0, 1] SVG chart: frame, grid and ticks every 0.2, axis labels,
    and what ``body(sx, sy)`` draws (sx, sy: data to SVG coordinates)."""
    plot_w, plot_h = UNIT_W - LEFT - RIGHT, UNIT_H - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + x * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - y * plot_h

    parts = [f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}"/>']
    for k in range(6):
        v = k / 5
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(v):.1f}" y2="{sy(v):.1f}"/>'
                     f'<text class="y-tick" x="{LEFT - 10}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:g}</text>'
                     f'<line class="tick" x1="{sx(v):.1f}" x2="{sx(v):.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 5}"/>'
                     f'<text class="x-tick" x="{sx(v):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{v:g}</text>')
    parts.append(body(sx, sy))
    parts.append(f'<text class="axis-label" x="{LEFT + plot_w / 2}" y="{UNIT_H - 6}" text-anchor="middle">'
                 f'{html.escape(x_label)}</text>'
                 f'<text class="axis-label" transform="translate(12,{TOP + plot_h / 2}) rotate(-90)" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')
    return (f'<figure class="chart" data-chart="{kind}"><figcaption>{html.escape(title)}</figcaption>'
            f'<svg viewBox="0 0 {UNIT_W} {UNIT_H}" width="{UNIT_W}" height="{UNIT_H}" role="img" '
            f'aria-label="{html.escape(title)}">{"".join(parts)}</svg></figure>')


def reliability_chart(calibration: dict) -> str:
    """The reliability diagram of ``calibration`` (tagtune.data.metrics.calibration): a bar per
    non-empty score bin as high as the fraction of its spans exactly right, a dot at (their mean
    score, that fraction), their count above, and the diagonal a calibrated tagger follows."""
    def body(sx, sy):
        parts = [f'<line class="diagonal" x1="{sx(0):.1f}" y1="{sy(0):.1f}" x2="{sx(1):.1f}" y2="{sy(1):.1f}"/>']
        for b in calibration["bins"]:
            if not b["count"]:
                continue
            mean, right, n = b["mean_score"], b["correct"], b["count"]
            tip = (f'scores {b["low"]:g} to {b["high"]:g}: {n} span{"s" if n != 1 else ""}, mean score {mean:.3f}, '
                   f'{right:.3f} exactly right')
            parts.append(
                f'<g class="bin" data-low="{b["low"]:g}" data-count="{n}" data-mean="{mean:.4f}" '
                f'data-correct="{right:.4f}"><title>{tip}</title>'
                f'<rect class="bar" x="{sx(b["low"]) + 1:.1f}" y="{sy(right):.1f}" '
                f'width="{sx(b["high"]) - sx(b["low"]) - 2:.1f}" height="{sy(0) - sy(right):.1f}"/>'
                f'<circle class="point" cx="{sx(mean):.1f}" cy="{sy(right):.1f}" r="3"/>'
                f'<text class="count" x="{(sx(b["low"]) + sx(b["high"])) / 2:.1f}" y="{sy(right) - 5:.1f}" '
                f'text-anchor="middle">{n}</text></g>')
        return "".join(parts)

    title = f'reliability: ECE {calibration["ece"]:.4f} over {calibration["spans"]} spans'
    return _unit_chart(title, "reliability", "span score (bin mean)", "fraction exactly right", body)


def threshold_chart(calibration: dict) -> str:
    """Precision and recall of the spans scoring at least each threshold of ``calibration``."""
    def body(sx, sy):
        parts = []
        for key in ("precision", "recall"):
            points = [(t["threshold"], t[key]) for t in calibration["thresholds"] if t[key] is not None]
            if not points:
                continue
            d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
            parts.append(f'<path class="line {key}" d="{d}"/>')
            for t in calibration["thresholds"]:
                if t[key] is None:
                    continue
                parts.append(f'<circle class="point {key}" data-threshold="{t["threshold"]:g}" '
                             f'data-value="{t[key]:.4f}" data-spans="{t["spans"]}" cx="{sx(t["threshold"]):.1f}" '
                             f'cy="{sy(t[key]):.1f}" r="2.5"><title>score at least {t["threshold"]:g}: '
                             f'{key} {t[key]:.4f} ({t["spans"]} spans)</title></circle>')
        legend_x = sx(0.62)
        parts.append(f'<text class="legend precision" x="{legend_x:.1f}" y="{TOP + 16}">precision</text>'
                     f'<text class="legend recall" x="{legend_x:.1f}" y="{TOP + 30}">recall</text>')
        return "".join(parts)

    return _unit_chart("precision and recall of spans scoring at least a threshold", "threshold",
                       "score threshold", "precision, recall", body)


def calibration_section(calibration: dict, epoch, temperature: dict | None = None) -> str:
    """The page's part on span scores: a sentence, the fitted temperature's before and after
    (``temperature``, the ``calibration`` entry of metrics.jsonl) when there is one, the two charts."""
    which = f", epoch {epoch}" if epoch is not None else ""
    fitted = ""
    if temperature:
        before, after = temperature["before"], temperature["after"]
        rows = "".join(f"<tr><td>{name}</td><td>{_f(before[key])}</td><td>{_f(after[key])}</td></tr>"
                       for name, key in (("expected calibration error", "ece"),
                                         ("average precision", "average_precision"), ("Brier score", "brier")))
        fitted = (f"<p>The scores are the model's with its logits divided by the temperature "
                  f"{temperature['temperature']:.3f}, fitted on these dev predictions (kept in tagtune.json); "
                  f"over the {before['spans']} spans it was fitted on ({before['right']} right):</p>\n"
                  f"<table><tr><th></th><th>before</th><th>after</th></tr>{rows}</table>\n")
    return (f"<h2>Span scores (dev{which})</h2>\n"
            "<p>A span's score is the probability, under the tagger, that exactly its characters form one "
            "entity of its label. Of the spans scored about <i>p</i>, a share of about <i>p</i> should be "
            f"right: the bars should reach the diagonal. {calibration['spans']} predicted spans, "
            f"{calibration['gold']} gold spans.</p>\n"
            f"{fitted}{reliability_chart(calibration)}\n{threshold_chart(calibration)}")


def render(history: list[dict], labels: list[str], title: str = "tagtune training report",
           kept_epoch: int | None = None, data: str | None = None, note: str | None = None,
           calibration: dict | None = None, span_words: int | None = None, temperature: dict | None = None) -> str:
    """The page. ``kept_epoch``: the epoch whose model the folder holds (default: the best by dev
    F1, or the last without dev scores); ``data``: a line on the train and dev texts; ``note``: a
    remark on the dev set (e.g. that it is too small to pick the best epoch); ``calibration``: the
    kept model's dev predictions summed up by tagtune.data.metrics.calibration (default: the kept epoch
    entry's ``dev_calibration``, if any); ``span_words``: the run trained a span head of spans
    of up to that many words (``--head span``), whose ``labels`` are entity labels, not tags;
    ``temperature``: the temperature fitted on dev with its before and after (metrics.jsonl's
    ``calibration`` entry), ``calibration`` then being the dev predictions at it."""
    epochs = [h for h in history if "train_loss" in h]
    with_dev = [h for h in epochs if "dev" in h]
    if kept_epoch is None and epochs:
        kept_epoch = max(with_dev, key=lambda h: h["dev"]["f1"])["epoch"] if with_dev else epochs[-1]["epoch"]
    kept = next((h for h in epochs if h["epoch"] == kept_epoch), None)

    losses = loss_points(history)
    loss_chart = _chart("training loss", "loss", losses, [(float(h["epoch"]), h["train_loss"]) for h in epochs])
    if with_dev:
        f1 = [(float(h["epoch"]), h["dev"]["f1"]) for h in with_dev]
        f1_chart = _chart("dev entity F1", "f1", f1, f1, highlight=float(kept_epoch) if kept_epoch else None)
    elif epochs:
        f1_chart = _chart("dev entity F1", "f1", [], [], empty="no dev set")
    else:
        f1_chart = _chart("dev entity F1", "f1", [], [])

    model = "saved model" + (f" (span head, up to {span_words} words)" if span_words else "")
    if kept is None:
        summary = "No epoch finished yet."
    elif "dev" in kept:
        how = "best dev F1" if kept is max(with_dev, key=lambda h: h["dev"]["f1"]) else "dev F1"
        summary = (f"The {model} is epoch {kept['epoch']}'s: {how} {_f(kept['dev']['f1'])}, "
                   f"train loss {_f(kept['train_loss'])}.")
    else:
        summary = (f"No dev set: the {model} is the last epoch's (epoch {kept['epoch']}), train loss "
                   f"{_f(kept['train_loss'])}. Score it on annotated text with "
                   "<code>tagtune evaluate MODEL_DIR FILE</code>.")

    dev_heads = "<th>dev precision</th><th>dev recall</th><th>dev F1</th>" if with_dev else ""
    epoch_rows = ""
    for h in epochs:
        dev_cells = ("".join(f"<td>{_f(h['dev'][k])}</td>" for k in ("precision", "recall", "f1"))
                     if "dev" in h else "<td></td><td></td><td></td>" if with_dev else "")
        mark = ' class="kept"' if h is kept else ""
        epoch_rows += (f"<tr{mark}><td>{h['epoch']}{' (saved)' if h is kept else ''}</td><td>{_f(h['train_loss'])}</td>"
                       f"{dev_cells}<td>{h['tokens_per_second']:,.0f}</td></tr>")

    if kept is not None and "dev" in kept:
        rows = ""
        for label, s in sorted(kept["dev_per_label"].items()):
            rows += (f"<tr><td>{html.escape(label)}</td><td>{_f(s['precision'])}</td><td>{_f(s['recall'])}</td>"
                     f"<td>{_f(s['f1'])}</td><td>{s['support']}</td></tr>")
        d = kept["dev"]
        rows += (f"<tr class=total><td>micro average</td><td>{_f(d['precision'])}</td><td>{_f(d['recall'])}</td>"
                 f"<td>{_f(d['f1'])}</td><td></td></tr>"
                 f"<tr class=total><td>macro F1</td><td></td><td></td><td>{_f(d['macro_f1'])}</td><td></td></tr>")
        per_label = (f"<h2>Per label, epoch {kept['epoch']} (dev, exact character spans)</h2>\n"
                     "<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>\n"
                     f"{rows}</table>")
    elif kept is not None:
        per_label = "<h2>Per label</h2>\n<p>No dev set, so no per-label scores.</p>"
    else:
        per_label = ""

    if calibration is None and kept is not None:
        calibration = kept.get("dev_calibration")
    scores_part = calibration_section(calibration, kept_epoch, temperature) if calibration else ""

    chips = "".join(f"<li>{html.escape(label)}</li>" for label in labels)
    paragraphs = "".join(f"<p>{html.escape(text)}</p>" for text in (data, note) if text)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #111; padding: 0 1rem; }}
figure {{ display: inline-block; margin: 0 1rem 1rem 0; vertical-align: top; }} figcaption {{ font-weight: 600; }}
svg text {{ font-size: 11px; fill: #444; }} svg .empty {{ font-size: 13px; fill: #666; }}
svg .frame {{ fill: none; stroke: #ccc; }} svg .grid {{ stroke: #eee; }} svg .tick {{ stroke: #999; }}
svg .line {{ fill: none; stroke: #2563eb; stroke-width: 2; }} svg .point {{ fill: #2563eb; }}
svg .kept {{ fill: none; stroke: #d97706; stroke-width: 2; }}
svg .bar {{ fill: #bfdbfe; }} svg .diagonal {{ stroke: #999; stroke-dasharray: 4 3; }}
svg .line.recall {{ stroke: #d97706; }} svg .point.recall, svg .legend.recall {{ fill: #d97706; }}
svg .legend.precision {{ fill: #2563eb; }}
ul.labels {{ list-style: none; padding: 0; margin: .25rem 0 1rem; display: flex; flex-wrap: wrap; gap: .3rem; }}
ul.labels li {{ white-space: nowrap; font: 13px/1.6 ui-monospace, monospace; background: #f1f5f9;
  border: 1px solid #cbd5e1; border-radius: 4px; padding: 0 .4rem; }}
code {{ white-space: nowrap; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
td, th {{ padding: .25rem .75rem; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr.total td, tr.kept td {{ font-weight: 600; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{paragraphs}<p>{summary}</p>
<p>{"Labels" if span_words else "Tags"} ({len(labels)}):</p>
<ul class="labels">{chips}</ul>
{loss_chart}
{f1_chart}
<h2>Epochs</h2>
<table><tr><th>epoch</th><th>train loss</th>{dev_heads}<th>tokens/s</th></tr>
{epoch_rows}</table>
{per_label}
{scores_part}
</body></html>
"""


def write_report(directory: Path, history: list[dict], labels: list[str], kept_epoch: int | None = None,
                 data: str | None = None, note: str | None = None, calibration: dict | None = None,
                 span_words: int | None = None, temperature: dict | None = None) -> Path:
    """report.html in ``directory`` (see render)."""
    path = Path(directory) / "report.html"
    atomic_write(path, render(history, labels, kept_epoch=kept_epoch, data=data, note=note,
                              calibration=calibration, span_words=span_words, temperature=temperature))
    return path
