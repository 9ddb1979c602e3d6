"""report.html in a training output folder: loss and dev-F1 curves and a per-label table.

One self-contained page (inline SVG, no scripts or downloads), made from metrics.jsonl entries.
"""

from __future__ import annotations

import html
from pathlib import Path


def _polyline(points: list[tuple[float, float]], width: int, height: int, pad: int = 36) -> tuple[str, str]:
    """SVG polyline and axis labels for (x, y) points scaled into the plot box."""
    if not points:
        return "", ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(0.0, min(ys)), max(ys) or 1.0
    sx = (width - 2 * pad) / ((x1 - x0) or 1)
    sy = (height - 2 * pad) / ((y1 - y0) or 1)
    coords = " ".join(f"{pad + (x - x0) * sx:.1f},{height - pad - (y - y0) * sy:.1f}" for x, y in points)
    dots = "".join(f'<circle cx="{pad + (x - x0) * sx:.1f}" cy="{height - pad - (y - y0) * sy:.1f}" r="3"/>'
                   for x, y in points) if len(points) <= 50 else ""
    labels = (f'<text x="{pad}" y="{pad - 8}">{y1:.3g}</text>'
              f'<text x="{pad}" y="{height - pad + 16}">{y0:.3g}</text>'
              f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end">{x1:g}</text>')
    return f'<polyline points="{coords}" fill="none" stroke="#2563eb" stroke-width="2"/>{dots}', labels


def _chart(title: str, xlabel: str, points: list[tuple[float, float]], width: int = 520, height: int = 260) -> str:
    line, labels = _polyline(points, width, height)
    body = line or f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data yet</text>'
    return (f'<figure><figcaption>{html.escape(title)}</figcaption>'
            f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{html.escape(title)}"><rect x="36" y="36" width="{width - 72}" height="{height - 72}" '
            f'fill="none" stroke="#ccc"/>{body}{labels}'
            f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle">{html.escape(xlabel)}</text></svg></figure>')


def render(history: list[dict], labels: list[str], title: str = "tagtune training report") -> str:
    steps = [(h["step"], h["loss"]) for h in history if "loss" in h]
    epochs = [h for h in history if "dev" in h]
    f1 = [(h["epoch"], h["dev"]["f1"]) for h in epochs]
    best = max(epochs, key=lambda h: h["dev"]["f1"], default=None)
    rows = ""
    if best:
        for label, s in sorted(best["dev_per_label"].items()):
            rows += (f"<tr><td>{html.escape(label)}</td><td>{s['precision']:.4f}</td><td>{s['recall']:.4f}</td>"
                     f"<td>{s['f1']:.4f}</td><td>{s['support']}</td></tr>")
        d = best["dev"]
        rows += (f"<tr class=total><td>micro average</td><td>{d['precision']:.4f}</td><td>{d['recall']:.4f}</td>"
                 f"<td>{d['f1']:.4f}</td><td></td></tr>"
                 f"<tr class=total><td>macro F1</td><td></td><td></td><td>{d['macro_f1']:.4f}</td><td></td></tr>")
    epoch_rows = "".join(
        f"<tr><td>{h['epoch']}</td><td>{h['train_loss']:.4f}</td><td>{h['dev']['precision']:.4f}</td>"
        f"<td>{h['dev']['recall']:.4f}</td><td>{h['dev']['f1']:.4f}</td><td>{h['tokens_per_second']:,.0f}</td></tr>"
        for h in epochs)
    best_line = (f"Best dev F1 {best['dev']['f1']:.4f} at epoch {best['epoch']} (the saved model)."
                 if best else "No epoch finished yet.")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #111; }}
figure {{ display: inline-block; margin: 0 1rem 1rem 0; }} figcaption {{ font-weight: 600; }}
svg text {{ font-size: 11px; fill: #444; }} svg circle {{ fill: #2563eb; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
td, th {{ padding: .25rem .75rem; border-bottom: 1px solid #ddd; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }} tr.total td {{ font-weight: 600; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{best_line} Labels: {html.escape(", ".join(labels))}.</p>
{_chart("training loss", "optimizer step", steps)}
{_chart("dev entity F1", "epoch", f1)}
<h2>Epochs</h2>
<table><tr><th>epoch</th><th>train loss</th><th>dev precision</th><th>dev recall</th><th>dev F1</th><th>tokens/s</th></tr>
{epoch_rows}</table>
<h2>Per label, best epoch (dev, exact character spans)</h2>
<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{rows}</table>
</body></html>
"""


def write_report(directory: Path, history: list[dict], labels: list[str]) -> Path:
    from tagtune.checkpoint import atomic_write

    path = Path(directory) / "report.html"
    atomic_write(path, render(history, labels))
    return path
