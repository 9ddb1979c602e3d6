"""Entity scores of a trained tagger on annotated examples or an annotated file."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from tagtune.data.formats import read_examples
from tagtune.data.metrics import calibration, span_scores
from tagtune.data.schemes import OUTSIDE, entity_type
from tagtune.distributed import Group
from tagtune.inference.spantagger import SpanTagger
from tagtune.inference.tagger import Tagger
from tagtune.progress import Progress
from tagtune.spans import Example


def evaluate_examples(tagger: Tagger | SpanTagger, examples: list[Example], group: Group | None = None, progress: bool = False,
                      desc: str = "evaluating", chunk: int = 256, with_calibration: bool = False) -> dict:
    """Entity scores of the tagger's spans against the examples' spans (exact character match),
    with ``calibration`` (tagtune.data.metrics.calibration: how well span scores say which spans are
    right) when ``with_calibration``. Texts are tagged ``chunk`` at a time, with a progress bar
    over them when ``progress``. Under torchrun each process tags every world-th example and the
    spans are gathered."""
    group = group or Group()
    texts = [ex.text for ex in examples[group.rank::group.world]]
    mine = []
    with Progress(len(texts), desc, "texts", enabled=progress and group.main and bool(texts)) as bar:
        for lo in range(0, len(texts), chunk):
            mine += tagger.predict(texts[lo:lo + chunk])
            bar.update(len(texts[lo:lo + chunk]))
    parts = group.gather(mine)
    predicted = [parts[i % group.world][i // group.world] for i in range(len(examples))]
    gold = [ex.spans for ex in examples]
    scores = span_scores(gold, predicted)
    if with_calibration:
        scores["calibration"] = calibration(gold, predicted)
    return scores


def unknown_labels(tagger: Tagger | SpanTagger, examples: list[Example]) -> tuple[list[str], list[str]]:
    """(labels of the examples' spans the tagger does not predict, the tagger's labels)."""
    known = sorted({entity_type(tag) for tag in tagger.labels if tag != OUTSIDE})  # B-PER -> PER
    gold = {s.label for ex in examples for s in ex.spans}
    return sorted(gold - set(known)), known


def evaluate(directory: str, path: str, format: str | None = None, keyword_label: str = "KEY",
             device: str | None = None, progress: bool = True, bf16: str = "auto") -> dict:
    """Load a trained tagger and score it on an annotated file (with overlapping and nested
    spans for a span tagger). With ``progress``, says what it does on stderr. Labels in the file that the tagger does not know are warned about: their
    spans can never be found."""
    if progress and Path(directory).expanduser().is_dir():
        print(f"tagtune: loading the tagger in {directory}", file=sys.stderr)
    tagger = Tagger.load(directory, device=device, bf16=bf16)
    # a span tagger is scored on overlapping and nested gold spans too
    examples = read_examples(path, format, keyword_label, overlaps=isinstance(tagger, SpanTagger))
    unknown, known = unknown_labels(tagger, examples)
    if unknown:
        warnings.warn(f"{path}: label{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} not among the tagger's "
                      f"({', '.join(known)}); those spans count as missed", stacklevel=2)
    return evaluate_examples(tagger, examples, progress=progress, desc=f"evaluating on {Path(path).name}")
