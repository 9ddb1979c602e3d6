"""``tagtune score``: entity precision, recall and F1 of one annotation file against another,
without a model, so that a teacher, a student and two labellers can be compared on one gold set.

Both files are read as ``tagtune train`` reads them (any of tagtune.data.formats's formats,
overlapping spans kept), and their texts are paired by text: the n-th occurrence of a text in
GOLD with its n-th occurrence in PRED, whatever order each file has. A span counts as found only
where PRED has one with the same start, end and label (tagtune.data.metrics.span_scores): for
flat spans the numbers are seqeval's in its default mode, per label and micro.

Texts that only one file has:

* a GOLD text that PRED lacks is an error naming it (a teacher that could not answer every text,
  or two files of different texts), unless ``missing="empty"``, which scores it as predicted
  with no spans (its entities count as missed), or ``missing="skip"``, which leaves it out;
* a PRED text that GOLD lacks is left out and counted (PRED may label more texts than the gold
  sample holds).

The result holds the scores (as ``tagtune evaluate`` prints them) and ``texts`` (pairs scored),
``missing`` (GOLD texts PRED lacks) and ``unscored`` (PRED texts GOLD lacks).
"""

from __future__ import annotations

from collections import defaultdict, deque

from tagtune.data.formats import read_examples
from tagtune.data.metrics import span_scores
from tagtune.errors import TagtuneError
from tagtune.safejson import excerpt

MISSING = ("error", "empty", "skip")


def score_files(gold, pred, gold_format: str | None = None, pred_format: str | None = None,
                missing: str = "error") -> dict:
    """Scores of the spans of the file ``pred`` against those of the file ``gold`` (see the module
    doc); ``missing`` says what a GOLD text that PRED lacks does: error, empty or skip."""
    if missing not in MISSING:
        raise TagtuneError(f"--missing must be one of {', '.join(MISSING)}, got {missing!r}")
    gold_examples = read_examples(gold, gold_format, overlaps=True)
    pred_examples = read_examples(pred, pred_format, overlaps=True)
    by_text = defaultdict(deque)
    for example in pred_examples:
        by_text[example.text].append(example)
    gold_spans, pred_spans, lacking = [], [], []
    for example in gold_examples:
        queue = by_text.get(example.text)
        if queue:
            gold_spans.append(example.spans)
            pred_spans.append(queue.popleft().spans)
            continue
        lacking.append(example)
        if missing == "empty":
            gold_spans.append(example.spans)
            pred_spans.append([])
    if lacking and missing == "error":
        first = lacking[0]
        raise TagtuneError(
            f"{first.source}: {pred} has no text {excerpt(first.text)} ({len(lacking)} of the {len(gold_examples)} "
            f"texts of {gold} are not in it); --missing empty scores such texts as predicted without spans, "
            "--missing skip leaves them out")
    if not gold_spans:
        raise TagtuneError(f"{pred}: none of the texts of {gold} is in it; nothing to score")
    scores = span_scores(gold_spans, pred_spans)
    scores["texts"] = len(gold_spans)
    scores["missing"] = len(lacking)
    scores["unscored"] = sum(len(queue) for queue in by_text.values())
    return scores
