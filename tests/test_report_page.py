"""report.html of real short runs, with and without a dev set, in a headless chromium: the x axes
start at epoch 1, the loss chart draws a line even for a run of a few steps, no label is broken
across lines. Screenshots are written to test-artifacts/report.png and report-nodev.png."""

import json
import re
from pathlib import Path

import pytest

from helpers import BROWSER_ARGS, chromium
from tagtune.training.report import loss_points, render
from tagtune import TrainConfig, train

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    executable = chromium()  # skips, or fails under CI, where there is none
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def run_with_dev(tiny_bert, wnut_files, tmp_path_factory):
    """3 epochs of some 40 steps on 300 tweets (a loss entry every 10), dev scores every epoch."""
    out = tmp_path_factory.mktemp("report") / "with-dev"
    train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "train.conll"), dev=str(wnut_files / "dev.conll"),
                      out=str(out), epochs=3, lr=1e-3, batch_size=8, progress=False))
    return out


@pytest.fixture(scope="module")
def run_without_dev(tiny_bert, wnut_files, tmp_path_factory):
    """2 epochs of 2 steps on 60 tweets, no dev set: no step in metrics.jsonl reaches the 10th."""
    out = tmp_path_factory.mktemp("report") / "no-dev"
    train(TrainConfig(model=str(tiny_bert), train=str(wnut_files / "dev.conll"), out=str(out), epochs=2,
                      lr=1e-3, progress=False))
    return out


def open_report(browser, folder: Path):
    page = browser.new_page(viewport={"width": 1140, "height": 900})
    page.goto((folder / "report.html").as_uri())
    return page


def chart(page, kind: str) -> dict:
    """Ticks, points and line of one chart, as the browser laid them out."""
    return page.evaluate("""kind => {
        const fig = document.querySelector(`figure[data-chart="${kind}"]`);
        const ticks = [...fig.querySelectorAll('text.x-tick')].map(t => ({
            label: t.textContent, x: parseFloat(t.getAttribute('x'))}));
        const points = [...fig.querySelectorAll('circle.point')].map(c => ({
            x: parseFloat(c.getAttribute('cx')), epoch: parseFloat(c.dataset.x)}));
        const line = fig.querySelector('path.line');
        return {ticks, points, d: line ? line.getAttribute('d') : null,
                length: line ? line.getTotalLength() : 0, text: fig.textContent,
                plotLeft: parseFloat(fig.querySelector('rect.frame').getAttribute('x'))};
    }""", kind)


def label_layout(page) -> list[dict]:
    """Each label element: its text, height and the number of line boxes its text takes."""
    return page.eval_on_selector_all("ul.labels li", """items => items.map(li => {
        const range = document.createRange();
        range.selectNodeContents(li);
        return {text: li.textContent, height: li.getBoundingClientRect().height,
                lines: range.getClientRects().length};
    })""")


def assert_labels_whole(page, folder: Path):
    labels = [label for _, label in sorted(json.loads((folder / "config.json").read_text())["id2label"].items(),
                                           key=lambda kv: int(kv[0]))]
    layout = label_layout(page)
    assert [item["text"] for item in layout] == labels
    assert all(item["lines"] == 1 for item in layout), [item for item in layout if item["lines"] != 1]
    assert len({round(item["height"], 1) for item in layout}) == 1, layout


def assert_epoch_axis(c: dict, epochs: int):
    assert [t["label"] for t in c["ticks"]] == [str(e) for e in range(1, epochs + 1)]
    assert c["ticks"][0]["x"] >= c["plotLeft"]


def test_report_of_a_short_run_with_dev(browser, run_with_dev):
    page = open_report(browser, run_with_dev)
    assert "no data yet" not in page.content()

    f1 = chart(page, "f1")
    assert_epoch_axis(f1, 3)
    # the first point is at epoch 1, on the first tick, at the left edge of the plot
    assert [p["epoch"] for p in f1["points"]] == [1, 2, 3]
    assert f1["points"][0]["x"] == pytest.approx(f1["ticks"][0]["x"]) == pytest.approx(f1["plotLeft"])
    assert f1["d"].count("L") == 2 and f1["length"] > 100

    # the loss line starts at the first logged step, a fraction into epoch 1; dots at epoch ends
    loss = chart(page, "loss")
    assert_epoch_axis(loss, 3)
    assert loss["d"].startswith(f"M{loss['plotLeft']:.1f},") and loss["d"].count("L") >= 6 and loss["length"] > 100
    assert [p["epoch"] for p in loss["points"]] == [1, 2, 3]
    assert loss["points"][0]["x"] == pytest.approx(loss["ticks"][0]["x"])
    assert loss["ticks"][0]["x"] > loss["plotLeft"] + 10

    assert_labels_whole(page, run_with_dev)
    kept = page.text_content("tr.kept td")
    assert kept.endswith("(saved)")
    assert page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")[1].startswith("Per label, epoch ")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    page.close()


def test_report_of_a_run_without_dev(browser, run_without_dev):
    history = [json.loads(line) for line in (run_without_dev / "metrics.jsonl").read_text().splitlines()]
    assert not any("loss" in h for h in history), "the run was meant to log no step entries"
    page = open_report(browser, run_without_dev)
    assert "no data yet" not in page.content()

    loss = chart(page, "loss")
    assert_epoch_axis(loss, 2)
    assert loss["d"] is not None and loss["d"].count("L") == 1 and loss["length"] > 100
    assert loss["points"][0]["x"] == pytest.approx(loss["plotLeft"])

    f1 = chart(page, "f1")
    assert "no dev set" in f1["text"] and f1["d"] is None
    body = page.text_content("body")
    assert "No dev set: the saved model is the last epoch's (epoch 2)" in body
    assert "training on all 60 texts" in body and "No dev set, so no per-label scores." in body
    assert "dev F1" not in page.text_content("table")  # the epochs table has no empty dev columns

    assert_labels_whole(page, run_without_dev)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "report-nodev.png"), full_page=True)
    page.close()


def test_loss_points_sit_at_their_fraction_of_the_epoch():
    history = [
        {"step": 10, "epoch": 1, "loss": 0.9},
        {"step": 20, "epoch": 1, "loss": 0.8},
        {"epoch": 1, "step": 20, "train_loss": 0.8, "tokens_per_second": 1.0},
        {"step": 30, "epoch": 2, "loss": 0.5},
        {"epoch": 2, "step": 40, "train_loss": 0.45, "tokens_per_second": 1.0},
    ]
    assert loss_points(history) == [(0.5, 0.9), (1.0, 0.8), (1.5, 0.5), (2.0, 0.45)]
    assert loss_points(history[2:3]) == [(1.0, 0.8)]
    page = render(history[2:3], ["O", "B-x", "I-x"])  # one epoch of a few steps: a point, not "no data yet"
    assert "no data yet" not in page and 'class="point"' in page and "no dev set" in page


# -- span scores on dev -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dev_predictions(tiny_bert, wnut_files):
    """The WNUT dev tweets and spans decoded for them from noisy logits: each unit (word) of the
    tiny BERT's tokenizer leans to its gold tag, with Gaussian noise, so that some spans are
    right and some wrong, with scores of every size."""
    import numpy as np

    from tagtune.data.align import units_of
    from tagtune.data.formats import read_examples
    from tagtune.data.decode import decode_spans
    from tagtune.data.schemes import tag_names
    from tagtune.text.tokenizer import load_tokenizer

    examples = read_examples(str(wnut_files / "dev.conll"))
    labels = tag_names({s.label for ex in examples for s in ex.spans}, "BIO")
    rng = np.random.default_rng(0)
    predicted = []
    for ex, enc in zip(examples, load_tokenizer(tiny_bert).encode_batch([ex.text for ex in examples])):
        ranges = units_of(enc).ranges
        logits = rng.standard_normal((len(ranges), len(labels))) * 1.5
        for k, (a, b) in enumerate(ranges):
            inside = [s for s in ex.spans if s.start <= a and b <= s.end]
            tag = f"{'B' if inside[0].start == a else 'I'}-{inside[0].label}" if inside else "O"
            logits[k, labels.index(tag)] += 2.5
        predicted.append(decode_spans(logits, labels, ranges) if ranges else [])
    return examples, predicted


def svg_elements(page: str, chart: str, pattern: str) -> list[dict]:
    """The data- attributes of the elements matching ``pattern`` inside one chart's figure."""
    figure = re.search(rf'<figure class="chart" data-chart="{chart}">.*?</figure>', page, re.S)
    assert figure, f"no {chart} chart"
    return [dict(re.findall(r'data-([a-z]+)="([^"]*)"', m.group(0))) for m in re.finditer(pattern, figure.group(0))]


def test_report_shows_the_kept_epochs_span_scores(dev_predictions):
    from tagtune.data.metrics import calibration

    examples, predicted = dev_predictions
    gold = [{(s.start, s.end, s.label) for s in ex.spans} for ex in examples]
    pairs = [(s.score, (s.start, s.end, s.label) in truth) for truth, spans in zip(gold, predicted) for s in spans]
    assert len(pairs) >= 50 and 0 < sum(right for _, right in pairs) < len(pairs)
    history = [{"epoch": 1, "step": 4, "train_loss": 0.9, "tokens_per_second": 1.0,
                "dev": {"precision": 0.1, "recall": 0.1, "f1": 0.1, "macro_f1": 0.1}, "dev_per_label": {},
                "dev_calibration": calibration([ex.spans for ex in examples], predicted)}]
    page = render(history, ["O", "B-x", "I-x"])
    assert "<h2>Span scores (dev, epoch 1)</h2>" in page

    # reliability: each non-empty bin of 0.1 with its count, mean score and fraction exactly right
    bins = svg_elements(page, "reliability", r'<g class="bin"[^>]*>')
    want = {}
    for score, right in pairs:
        want.setdefault(min(int(score * 10), 9), []).append((score, right))
    assert [round(float(b["low"]) * 10) for b in bins] == sorted(want)
    for b in bins:
        members = want[round(float(b["low"]) * 10)]
        assert int(b["count"]) == len(members)
        assert float(b["mean"]) == pytest.approx(sum(s for s, _ in members) / len(members), abs=1e-4)
        assert float(b["correct"]) == pytest.approx(sum(r for _, r in members) / len(members), abs=1e-4)
    assert sum(int(b["count"]) for b in bins) == len(pairs)
    ece = sum(len(m) / len(pairs) * abs(sum(r for _, r in m) / len(m) - sum(s for s, _ in m) / len(m))
              for m in want.values())
    assert f"ECE {ece:.4f} over {len(pairs)} spans" in page

    # precision and recall of the spans scoring at least each threshold
    n_gold = sum(len(truth) for truth in gold)
    for key in ("precision", "recall"):
        points = svg_elements(page, "threshold", rf'<circle class="point {key}"[^>]*>')
        assert [float(p["threshold"]) for p in points][:3] == [0.0, 0.05, 0.1]
        for p in points:
            kept = [right for score, right in pairs if score >= float(p["threshold"])]
            value = sum(kept) / (len(kept) if key == "precision" else n_gold)
            assert float(p["value"]) == pytest.approx(value, abs=1e-4) and int(p["spans"]) == len(kept)
        assert len(points) >= 2 and 'class="line ' + key in page

    # given outright, as write_report passes them, the same numbers; without them, no such part
    history[0].pop("dev_calibration")
    assert render(history, ["O"], calibration=calibration([ex.spans for ex in examples], predicted)) == page \
        .replace('<ul class="labels"><li>O</li><li>B-x</li><li>I-x</li></ul>', '<ul class="labels"><li>O</li></ul>') \
        .replace("Tags (3):", "Tags (1):")
    assert "Span scores" not in render(history, ["O"])


def test_a_span_runs_report_names_labels_and_its_head():
    epoch = {"epoch": 1, "step": 4, "train_loss": 0.5, "tokens_per_second": 1.0}
    scored = {**epoch, "dev": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "macro_f1": 0.6667},
              "dev_per_label": {"LOC": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 2}}}
    for history, summary in (([epoch], "No dev set: the saved model (span head, up to 8 words) is the last epoch's"),
                             ([scored], "The saved model (span head, up to 8 words) is epoch 1's: best dev F1 0.6667")):
        page = render(history, ["LOC", "ORG"], span_words=8)
        assert "<p>Labels (2):</p>" in page and "Tags (" not in page and summary in page
        token = render(history, ["O", "B-LOC", "I-LOC"])
        assert "<p>Tags (3):</p>" in token and "span head" not in token
    assert "<tr><td>LOC</td><td>1.0000</td><td>0.5000</td><td>0.6667</td><td>2</td></tr>" in page
