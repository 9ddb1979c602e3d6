"""``tagtune select``: the texts of a pool a tagger is least sure of, for people to label next.

pool (a text per line, or JSON Lines with a ``"text"``) -> the tagger's unit logits -> spans and
an uncertainty per text -> texts ranked most uncertain first -> near-duplicates of texts already
chosen left out -> the first N written with the tagger's spans as pre-annotations.

Uncertainty (:meth:`tagtune.inference.tagger.Tagger.uncertainty`): the expected share of a text's units
(the positions the tagger labels: words, or subwords with ``all_subwords``) whose decoded tag is
wrong, that is the mean over its units of 1 - p(decoded tag), p the unit's marginal under the
distribution the span scores come from. It is the expected number of tags an annotator corrects
in the pre-annotation, per unit, so a long text does not come first for being long. Unlike a
score from the spans alone, it also counts the units the tagger reads as outside every entity
yet hesitates over (the entities it may have missed), and a text without spans can rank first.
Its cost is one forward-backward pass over the lattice, as small as the span scores' own.

A span tagger (``--head span``) ranks by its own uncertainty
(:meth:`tagtune.inference.spantagger.SpanTagger.uncertainty`): each candidate span is a decision,
its label where the decoding kept it, "none" where not; a unit's uncertainty is 1 - the
probability of the least sure decision among the candidates over it, and the text's the mean
over its units. Its spans, nested ones included, are the pre-annotations.

Near-duplicates (:class:`NearDuplicates`): texts are compared after normalisation (NFKC, case
folded, words joined by single spaces). A text whose normalised form equals a chosen one's is
left out at once; otherwise its character 5-grams are compared with those of the chosen texts
and it is left out when the Jaccard similarity of the two sets reaches ``max_similarity``. Only
chosen texts are compared with, found through MinHash signatures banded for locality-sensitive
hashing, so each text costs one signature and a look-up, however large the pool and N; every
candidate the bands find is then checked with the exact Jaccard similarity.

Output formats (:data:`OUTPUT_FORMATS`), texts in rank order, offsets in code points as everywhere
in tagtune:

``jsonl``
    tagtune's spans JSONL, ``{"text", "spans": [{"start", "end", "label", "text", "score"}],
    "uncertainty"}``, which ``tagtune train`` reads as it is (nested spans with ``--head span``).
``doccano``
    doccano's JSONL import, ``{"text", "label": [[start, end, label], ...]}``.
``label-studio``
    Label Studio's JSON import, a list of tasks ``{"data": {"text"}, "predictions": [{
    "model_version", "score", "result": [...]}]}``: the spans are predictions, which Label Studio
    shows as pre-annotations to accept or correct. The prediction's score is 1 - the uncertainty
    (Label Studio sorts tasks by it); each result is ``{"from_name": "label", "to_name": "text",
    "type": "labels", "value": {"start", "end", "text", "labels": [label]}, "score"}``, for a
    labelling config with ``<Labels name="label" toName="text">`` and ``<Text name="text"
    value="$text"/>``. tagtune reads annotations, not predictions: train on Label Studio's export
    of the labelled project.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import unicodedata
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tagtune.apps._pool import check_output, decoded_lines, read_records
from tagtune.errors import TagtuneError
from tagtune.files import open_input
from tagtune.files import umask, write_error, write_file
from tagtune.inference.rank import score
from tagtune.inference.tagger import Tagger
from tagtune.spans import Span

OUTPUT_FORMATS = ("jsonl", "label-studio", "doccano")


class SelectWarning(UserWarning):
    """The pool gives fewer texts than asked for, or the tagger finds no span in the chosen texts
    (their pre-annotations are all empty)."""


@dataclass
class Choice:
    """A chosen text: its place in the pool's texts, the text, the tagger's spans and its
    uncertainty (0..1; a token tagger's is the expected share of its units tagged wrong)."""

    index: int
    text: str
    spans: list[Span]
    uncertainty: float


# --------------------------------------------------------------------------- the pool


def read_pool(path: str | os.PathLike) -> list[str]:
    """The texts of the pool ``path``: a text per line, or JSON Lines with a ``"text"`` string when
    the first non-empty line is a JSON object. Empty texts are left out. A line that is not UTF-8,
    or in JSON Lines not a JSON object with a text, is a one-line ``file:line:`` error."""
    name = str(path)
    stream = open_input(path)
    with stream:
        texts = [r["text"] for r in read_records(decoded_lines(stream, name), name) if r["text"].strip()]
    if not texts:
        raise TagtuneError(f"{name}: the pool has no texts (no non-empty line)")
    return texts


# --------------------------------------------------------------------------- near-duplicates


_WORD = re.compile(r"\w+")


def normalised(text: str) -> str:
    """``text`` NFKC-normalised and case-folded, its words (runs of letters, digits and ``_``)
    joined by single spaces: punctuation and spacing are left out."""
    return " ".join(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


def shingles(form: str, size: int = 5) -> frozenset[int]:
    """The 32-bit hashes (CRC-32) of the ``size``-character pieces of ``form``; a shorter form is
    one piece."""
    data = [form[i:i + size] for i in range(max(1, len(form) - size + 1))]
    return frozenset(zlib.crc32(piece.encode("utf-8")) for piece in data)


def jaccard(a: frozenset, b: frozenset) -> float:
    """|a & b| / |a | b| (1 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


HASHES = 120  # MinHash functions: divisible into bands of 1 to 6 rows
RECALL = 0.999  # least chance that a pair at the threshold shares a band


def band_rows(threshold: float) -> int:
    """Rows per band for ``threshold``: the most (up to 6) with which two texts at that similarity
    share a band with a chance of at least RECALL, so that fewer unrelated texts become candidates.
    A pair at similarity s shares one of ``HASHES // rows`` bands with chance
    1 - (1 - s^rows)^(HASHES // rows): 6 rows at 0.85, 5 at 0.8, 4 at 0.7, 2 at 0.5."""
    for rows in (6, 5, 4, 3, 2):
        if 1 - (1 - threshold ** rows) ** (HASHES // rows) >= RECALL:
            return rows
    return 1


class NearDuplicates:
    """The texts chosen so far, to tell whether a new one nearly repeats one of them.

    ``add(text)`` keeps ``text`` and returns True, or returns False when it is a near-duplicate of a
    kept text: the same normalised form, or character 5-gram sets with a Jaccard similarity of at
    least ``threshold``. Candidates come from MinHash signatures of HASHES hashes cut into bands of
    :func:`band_rows` rows (a kept text sharing a whole band with the new one is a candidate), then
    the exact similarity decides.
    """

    def __init__(self, threshold: float = 0.8, seed: int = 0):
        self.threshold = threshold
        self.rows = band_rows(threshold)
        self.bands = HASHES // self.rows
        self.seeds = np.random.default_rng(seed).integers(0, 1 << 63, size=self.bands * self.rows, dtype=np.uint64)
        self.forms: set[str] = set()
        self.kept: list[frozenset[int]] = []
        self.buckets: dict[tuple[int, bytes], list[int]] = {}

    def signature(self, pieces: frozenset[int]) -> np.ndarray:
        """The MinHash signature of a shingle set, ``(bands * rows,)`` uint64: per hash function, the
        least of the shingles' hashes, each shingle XORed with the function's seed and mixed with
        MurmurHash3's 64-bit finaliser (products wrap modulo 2^64)."""
        h = np.fromiter(pieces, dtype=np.uint64, count=len(pieces))[:, None] ^ self.seeds  # (S, H)
        for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
            h ^= h >> np.uint64(33)
            h *= np.uint64(multiplier)
        h ^= h >> np.uint64(33)
        return h.min(axis=0)  # (H,)

    def add(self, text: str) -> bool:
        form = normalised(text)
        if form in self.forms:
            return False
        pieces = shingles(form)
        signature = self.signature(pieces).reshape(self.bands, self.rows)
        keys = [(band, signature[band].tobytes()) for band in range(self.bands)]
        candidates = {k for key in keys for k in self.buckets.get(key, ())}
        if any(jaccard(pieces, self.kept[k]) >= self.threshold for k in candidates):
            return False
        self.forms.add(form)
        for key in keys:
            self.buckets.setdefault(key, []).append(len(self.kept))
        self.kept.append(pieces)
        return True


# --------------------------------------------------------------------------- ranking and choice


def check_n(n) -> int:
    """``n`` if it is a whole number of texts, at least 1; else a TagtuneError."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TagtuneError(f"-n must be a whole number of texts, at least 1, got {n!r}")
    return n


def check_similarity(value) -> float:
    """``value`` as a float if it is above 0 and at most 1; else a TagtuneError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise TagtuneError(f"max-similarity must be a number above 0 and at most 1, got {value!r}")
    return float(value)


def choose(tagger, texts: list[str], n: int, max_similarity: float = 0.8, progress: bool = False) -> list[Choice]:
    """The ``n`` texts of ``texts`` the tagger is least sure of, most uncertain first (pool order
    among equals), leaving out each text that nearly repeats one chosen before it
    (:class:`NearDuplicates` at ``max_similarity``). Fewer when the pool has fewer; a
    SelectWarning then says how many there are; another says so when the tagger finds no span in
    any chosen text."""
    n = check_n(n)
    threshold = check_similarity(max_similarity)
    spans, uncertainty = score(tagger, texts, progress)
    order = sorted(range(len(texts)), key=lambda i: -uncertainty[i])
    seen = NearDuplicates(threshold)
    chosen: list[Choice] = []
    for i in order:
        if len(chosen) == n:
            break
        if seen.add(texts[i]):
            chosen.append(Choice(i, texts[i], spans[i], uncertainty[i]))
    if len(chosen) < n:
        left_out = len(texts) - len(chosen)
        detail = f" ({left_out} left out as near-duplicates)" if left_out else ""
        warnings.warn(f"-n {n} but the pool has {len(texts)} texts{detail}: taking all {len(chosen)}",
                      SelectWarning, stacklevel=2)
    if chosen and not any(c.spans for c in chosen):
        warnings.warn(f"the tagger found no span in any of the {len(chosen)} chosen texts: their "
                      "pre-annotations are all empty", SelectWarning, stacklevel=2)
    return chosen


# --------------------------------------------------------------------------- output


def _span_score(span: Span) -> float | None:
    return None if span.score is None else round(span.score, 4)


def render(chosen: list[Choice], format: str, model_version: str = "tagtune") -> str:
    """The file's text for ``chosen`` in ``format`` (one of :data:`OUTPUT_FORMATS`)."""
    if format == "jsonl":
        lines = [{"text": c.text, "spans": [s.to_dict(c.text) for s in c.spans],
                  "uncertainty": round(c.uncertainty, 4)} for c in chosen]
    elif format == "doccano":
        lines = [{"text": c.text, "label": [[s.start, s.end, s.label] for s in c.spans]} for c in chosen]
    elif format == "label-studio":
        tasks = [label_studio_task(c, model_version) for c in chosen]
        if not tasks:
            return "[]\n"
        return "[\n" + ",\n".join(json.dumps(t, ensure_ascii=False) for t in tasks) + "\n]\n"
    else:
        raise TagtuneError(f"unknown output format {format!r}; the formats are: {', '.join(OUTPUT_FORMATS)}")
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def label_studio_task(choice: Choice, model_version: str) -> dict:
    """A Label Studio task with the tagger's spans as one prediction."""
    text = choice.text
    result = []
    for span in choice.spans:
        item = {"from_name": "label", "to_name": "text", "type": "labels",
                "value": {"start": span.start, "end": span.end, "text": text[span.start:span.end],
                          "labels": [span.label]}}
        if span.score is not None:
            item["score"] = _span_score(span)
        result.append(item)
    prediction = {"model_version": model_version, "score": round(1.0 - choice.uncertainty, 4), "result": result}
    return {"data": {"text": text}, "predictions": [prediction]}


def model_version(model_dir) -> str:
    """The name a tagger goes by in Label Studio: its folder's name (a Hub id's last part)."""
    return Path(str(model_dir)).name or str(model_dir)


# --------------------------------------------------------------------------- the command


def select(model_dir, pool, n: int, out, format: str = "jsonl", overwrite: bool = False,
           max_similarity: float = 0.8, device=None, progress: bool = True, bf16: str = "auto") -> list[Choice]:
    """Choose ``n`` texts of the file ``pool`` with the tagger in ``model_dir`` (:func:`choose`)
    and write them with its spans to ``out`` in ``format`` (:data:`OUTPUT_FORMATS`).

    Everything that can be checked is checked before the tagger runs: ``n``, the format, the
    output (an existing ``out`` only with ``overwrite``, and only a regular file; never the pool
    itself) and every line of the pool. ``out`` is written whole, through a temporary file renamed
    over it, so a failure leaves an earlier ``out`` as it was. Returns the choices written.
    """
    n = check_n(n)
    max_similarity = check_similarity(max_similarity)
    if format not in OUTPUT_FORMATS:
        raise TagtuneError(f"unknown output format {format!r}; the formats are: {', '.join(OUTPUT_FORMATS)}")
    out = str(out)
    before = check_output(out, overwrite)
    texts = read_pool(pool)
    if before is not None and os.path.samefile(pool, out):
        raise TagtuneError(f"{out}: is the pool; write the selection to another file")
    if progress:
        print(f"tagtune: {pool}: {len(texts):,} texts", file=sys.stderr, flush=True)
    tagger = Tagger.load(model_dir, device=device, bf16=bf16)
    chosen = choose(tagger, texts, n, max_similarity, progress)
    now = check_output(out, overwrite)
    if before is None and now is not None:
        raise TagtuneError(f"{out}: was created by something else while tagtune was choosing; left as it is")
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    write_file(out, render(chosen, format, model_version(model_dir)),
               stat.S_IMODE(now.st_mode) if now is not None else 0o666 & ~umask())
    if progress and chosen:
        print(f"tagtune: wrote {len(chosen):,} texts to {out} ({format}), uncertainty "
              f"{chosen[0].uncertainty:.3f} down to {chosen[-1].uncertainty:.3f}", file=sys.stderr, flush=True)
    return chosen
