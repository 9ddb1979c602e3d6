"""Annotation files in, :class:`~tagtune.spans.Example` lists out (and back, and split).

Every reader returns one :class:`Example` per annotated text, with character spans into that text
and ``source = "file:line"`` of the record it came from. Any problem a user can fix stops the read
with a :class:`TagtuneError` whose message starts with ``file:line:`` and says what is wrong.

Formats (:data:`FORMATS`):

``conll``
    One token per line, the token in the first column and its tag in the last (any number of
    columns, tab or space separated; a line with a tab is split at tabs only, so a token may hold
    other whitespace). A blank line (or one of only whitespace) ends a sentence; ``-DOCSTART-``
    lines are skipped. The text is the tokens joined by single spaces. Tags are ``O`` or
    ``P-TYPE`` with ``P`` one of B, I, E, S, L (= E), U (= S), so BIO/IOB2, IOB1, IO, BIOES and
    BILOU all read; chunks are cut the way conlleval cuts them (an ``I-`` after ``O``, after
    another type or after an ``E-``/``S-`` starts a new entity).
``jsonl``
    ``{"text": ..., "spans": [{"start": 0, "end": 5, "label": "PER"}, ...]}``, one object a line.
    Records with an ``"id"`` (a string or an integer, as ``tagtune annotate`` writes them) answer
    that id: a later record of the same id replaces the earlier ones (an answer changed later). A
    record ``{"text": ..., "skipped": true}`` has no answer: it is no example, and with an id it
    replaces the earlier records of that id. Records without an id are each an example.
``doccano``
    doccano's JSONL export: ``{"text": ..., "label": [[0, 5, "PER"], ...]}``; also ``"labels"``,
    ``"entities": [{"start_offset", "end_offset", "label"}]`` (projects with relations), and
    ``"data"`` for the text (doccano 1.x). Label Studio's JSON-MIN export reads as this format:
    ``{"text": ..., "label": [{"start", "end", "text", "labels"}], "annotation_id": ...}``, one
    record per annotation; a record of an annotation without spans has no ``"label"`` and reads as
    a text without entities.
``keywords``
    ``{"text": ..., "keywords": ["Tokyo", ...]}``: every occurrence of every keyword is marked
    with ``keyword_label``; see :func:`keyword_spans` for the matching rules.
``label-studio``
    Label Studio's JSON export: a list of tasks, the text in ``data.text`` (or the first string in
    ``data``), spans from the ``"labels"`` results of the task's first annotation that was not
    cancelled. Tasks with no such annotation are left out, counted in one
    :class:`LabelStudioWarning`; predictions are never read (they are model output, not
    annotations). Offsets that older Label Studio versions wrote in UTF-16 code
    units (texts with emoji) are recognised by the span's ``text`` and converted.

The JSON formats are read the same way: a file whose first character is ``[`` is one JSON list of
records, anything else is JSON Lines; ``jsonl`` and ``doccano`` records may use any of the span
keys above (``spans``, ``entities``, ``label``, ``labels``; triples or objects), and a span object
that carries its ``text`` has it checked against the offsets. Spans are not trimmed or otherwise
changed; exact duplicates (same start, end and label) are merged. Overlapping and nested spans
are an error unless read with ``overlaps=True`` (for the span head); the same characters with two
labels are an error either way.

JSON is parsed within the bounds of :mod:`tagtune.safejson` (nesting depth, length of a number,
no NaN or Infinity, no half surrogate pairs), a record of JSON Lines and a whole JSON list alike;
beyond them is a ``file:line:`` error. Values quoted in errors are cut to a short excerpt.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
import warnings
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from tagtune import safejson
from tagtune.data.schemes import chunks, is_file_tag, split_tag
from tagtune.errors import TagtuneError
from tagtune.files import read_bytes
from tagtune.safejson import cut, excerpt
from tagtune.spans import Example, Span

__all__ = [
    "FORMATS",
    "KeywordWarning",
    "LabelStudioWarning",
    "keyword_spans",
    "read_answers",
    "read_examples",
    "split_dev",
    "write_jsonl",
]

FORMATS = ("conll", "jsonl", "keywords", "label-studio", "doccano")

CONLL_SUFFIXES = frozenset({
    ".conll", ".conll03", ".conll2003", ".bio", ".iob", ".iob1", ".iob2", ".bioes", ".iobes",
    ".bilou", ".ner",
})
JSON_SUFFIXES = frozenset({".json", ".jsonl", ".ndjson", ".jsonlines"})

_SPAN_KEYS = ("spans", "entities", "label", "labels")
_MISSING = object()


class KeywordWarning(UserWarning):
    """Keywords that never occur in their text (one warning per file, with the count)."""


class LabelStudioWarning(UserWarning):
    """Label Studio tasks left out for having no annotation, or only cancelled ones (one warning
    per file, with the counts)."""


# --------------------------------------------------------------------------- public API


def read_examples(
    path: str | Path,
    format: str | None = None,
    keyword_label: str = "KEY",
    *,
    labels: Collection[str] | None = None,
    overlaps: bool = False,
) -> list[Example]:
    """Read the annotated texts of ``path``.

    ``format`` is one of :data:`FORMATS`, or None to tell it from the file name and content.
    ``keyword_label`` is the label of the spans that the ``keywords`` format marks. ``labels``,
    when given, is the set of allowed labels (entity types): any other is an error.
    ``overlaps`` keeps overlapping and nested spans (the span head learns them); without it they
    are an error (the token head tags each word once). CoNLL cannot hold overlapping spans, and
    the ``keywords`` format keeps its longest-match rule either way.

    Raises :class:`TagtuneError` for an unreadable, empty or malformed file. Keywords that never
    occur in their text are not errors: they are counted and reported in one
    :class:`KeywordWarning` per file; so are Label Studio tasks without an annotation, left out,
    in one :class:`LabelStudioWarning` (an error when no task is left).
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise TagtuneError(f"{path}: unknown format {format!r}; the formats are: {', '.join(FORMATS)}")
    if not isinstance(keyword_label, str) or not keyword_label.strip():
        raise TagtuneError(f"the keyword label must be a non-empty string, got {keyword_label!r}")
    if labels is not None:
        labels = frozenset(labels)
    text = _read_text(path)
    if not text.strip():
        raise TagtuneError(f"{path}: the file is empty")

    records = None
    if format is None:
        format, records = _detect(path, text)
    if format == "conll":
        examples = _read_conll(path, text, labels)
        if not examples:
            raise TagtuneError(f"{path}: no examples (no token lines in the CoNLL file)")
        return examples

    if records is None:
        records = _json_records(path, text)
    if not records:
        raise TagtuneError(f"{path}: no examples (the file holds no records)")
    if format == "label-studio":
        examples, left_out = _read_label_studio(path, records, labels, overlaps)
        if left_out:
            warnings.warn(f"{path}: {left_out}", LabelStudioWarning, stacklevel=2)
        return examples
    if format == "keywords":
        if labels is not None and keyword_label not in labels:
            raise TagtuneError(f"{path}: the keyword label {keyword_label!r} is not one of the labels "
                               f"({', '.join(sorted(labels))})")
        examples, missing = _read_keywords(path, records, keyword_label)
        if missing:
            where, keyword = missing[0]
            warnings.warn(
                f"{path}: {len(missing)} keyword(s) never occur in their text as a whole word "
                f"(the first: {where}: {excerpt(keyword)})",
                KeywordWarning,
                stacklevel=2,
            )
        return examples
    if format == "jsonl":
        answers = _answers(path, records, labels, overlaps)
        keys = [_answer_key(record, line) for line, record in records]
        last = {key: i for i, key in enumerate(keys)}  # the last record of an "id" wins
        examples = [example for i, (example, skipped) in enumerate(answers)
                    if not skipped and last[keys[i]] == i]
        if not examples:
            raise TagtuneError(f"{path}: no examples (every text in the file is marked skipped)")
        return examples
    return [_span_record(path, line, record, labels, overlaps) for line, record in records]


def read_answers(path: str | Path, labels: Collection[str] | None = None,
                 overlaps: bool = False) -> list[tuple[Example, bool]]:
    """Every record of the ``jsonl`` spans file ``path`` in file order, as ``(example, skipped)``;
    a record marked ``"skipped": true`` has no spans. A text may come more than once (where
    :func:`read_examples` keeps its last record). An empty file has no records; errors are those
    of :func:`read_examples`, overlapping spans kept with ``overlaps`` as there."""
    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        return []
    return _answers(path, _json_records(path, text), frozenset(labels) if labels is not None else None, overlaps)


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """Write ``examples`` in the ``jsonl`` spans format (UTF-8, one object a line).

    Each span also carries its ``text`` (for people reading the file; :func:`read_examples` checks
    it against the offsets) and its ``score`` when it has one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for example in examples:
            record = {"text": example.text, "spans": [s.to_dict(example.text) for s in example.spans]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def split_dev(
    examples: Sequence[Example], fraction: float = 0.1, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into (train, dev), ``dev`` being a random ``fraction`` of them.

    The choice depends only on ``len(examples)``, ``fraction`` and ``seed``; both parts keep the
    original order. ``dev`` gets ``round(n * fraction)`` examples, at least one and at most n - 1.
    """
    examples = list(examples)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise TagtuneError(f"the dev fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    n = len(examples)
    if n < 2:
        raise TagtuneError(f"need at least 2 examples to split off a dev set, got {n}")
    n_dev = min(n - 1, max(1, round(n * fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    dev_indices = set(order[:n_dev])
    train = [e for i, e in enumerate(examples) if i not in dev_indices]
    dev = [e for i, e in enumerate(examples) if i in dev_indices]
    return train, dev


def keyword_spans(text: str, keywords: Iterable[str], label: str) -> tuple[list[Span], list[str]]:
    """Mark the occurrences of ``keywords`` in ``text``; return (spans, keywords never found).

    Matching is exact (case-sensitive). A match may not cut a word of a script written with spaces:
    ``art`` is not found in ``start``, ``3`` not in ``2023``; in scripts written without spaces
    between words (Chinese, Japanese, Thai, ...) and in Hangul, whose particles attach to nouns,
    any substring matches (``東京`` in ``東京都``). Where matches overlap, the longer wins, then the
    earlier. A keyword found only where a longer one wins still counts as found.
    """
    candidates = []
    missing = []
    for keyword in dict.fromkeys(keywords):
        found = False
        position = text.find(keyword)
        while position != -1:
            end = position + len(keyword)
            if _whole_words(text, position, end):
                candidates.append((position, end))
                found = True
            position = text.find(keyword, position + 1)
        if not found:
            missing.append(keyword)
    candidates.sort(key=lambda c: (c[0] - c[1], c[0]))
    taken = bytearray(len(text))
    spans = []
    for start, end in candidates:
        if not any(taken[start:end]):
            taken[start:end] = b"\x01" * (end - start)
            spans.append(Span(start, end, label))
    spans.sort()
    return spans, missing


# --------------------------------------------------------------------------- files and detection


def _read_text(path: Path) -> str:
    data = read_bytes(path)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise TagtuneError(f"{path}: the file is UTF-16, not UTF-8; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise TagtuneError(
            f"{path}:{line}: the file is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None


def looks_like_conll(line: str) -> bool:
    """Whether ``line`` reads as a CoNLL token line: a token, any columns, and a tag last."""
    fields = conll_fields(line)
    return len(fields) >= 2 and is_file_tag(fields[-1])


def _detect(path: Path, text: str) -> tuple[str, list | None]:
    """The format of ``path`` (and its JSON records, when it has them)."""
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        return "conll", None
    first_line = next(line for line in text.split("\n") if line.strip())
    if suffix not in JSON_SUFFIXES:
        if looks_like_conll(first_line):
            return "conll", None
        if first_line.lstrip()[0] not in "[{":
            raise TagtuneError(
                f"{path}: cannot tell the format of the file; name it with --format (format= in Python), "
                f"one of: {', '.join(FORMATS)}"
            )
    records = _json_records(path, text)
    if not records:
        raise TagtuneError(f"{path}: no examples (the file holds no records)")
    return _format_of_records(path, records), records


def _format_of_records(path: Path, records: list) -> str:
    line, record = next(((n, r) for n, r in records if not _skipped(r)), records[0])
    if _skipped(record):  # nothing but skipped texts
        return "jsonl"
    if not isinstance(record, dict):
        raise TagtuneError(f"{path}:{line}: expected a JSON object, got {_kind(record)}")
    if any(k in record for k in ("annotations", "completions", "predictions")) or isinstance(
        record.get("data"), dict
    ):
        return "label-studio"
    if "keywords" in record:
        return "keywords"
    if "spans" in record:
        return "jsonl"
    if "label" in record or "labels" in record or "annotation_id" in record:  # with Label Studio's JSON-MIN
        return "doccano"
    if "entities" in record:
        entities = record["entities"]
        if isinstance(entities, list) and any(isinstance(e, dict) and "start_offset" in e for e in entities):
            return "doccano"
        return "jsonl"
    fields = excerpt(", ".join(map(str, record)), 200) or "none"
    raise TagtuneError(
        f"{path}:{line}: cannot tell the format from the first record (its fields: {fields}); "
        'expected "spans", "entities", "label", "labels" or "keywords" next to "text", '
        f"or a Label Studio task; or name it with --format (format= in Python), one of: {', '.join(FORMATS)}"
    )


def _json_records(path: Path, text: str) -> list[tuple[int, object]]:
    """(line, value) of each record: the items of a JSON list, or the lines of JSON Lines."""
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[":
        return _json_list(path, text, start)
    records = []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((number, safejson.loads(line)))
        except json.JSONDecodeError as e:
            raise TagtuneError(f"{path}:{number}: invalid JSON: {e.msg} (column {e.colno})") from None
        except safejson.JsonLimitError as e:
            raise TagtuneError(f"{path}:{number}: {e.msg}") from None
    return records


def _json_list(path: Path, text: str, start: int) -> list[tuple[int, object]]:
    try:
        safejson.loads(text)
    except json.JSONDecodeError as e:
        raise TagtuneError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
    except safejson.JsonLimitError as e:
        raise TagtuneError(f"{path}:{e.lineno}: {e.msg}") from None
    # Valid JSON within the bounds: walk the list again to learn the line each item starts on.
    decoder = safejson.DECODER
    whitespace = re.compile(r"[ \t\n\r]*")
    records = []
    line, counted = 1, 0
    i = whitespace.match(text, start + 1).end()
    if text[i] == "]":
        return records
    while True:
        value, end = decoder.raw_decode(text, i)
        line += text.count("\n", counted, i)
        counted = i
        records.append((line, value))
        i = whitespace.match(text, end).end()
        if text[i] == "]":
            return records
        i = whitespace.match(text, i + 1).end()  # past the comma


# --------------------------------------------------------------------------- CoNLL


def conll_fields(line: str) -> list[str]:
    """The columns of a CoNLL line: split at tabs when it has one, else at spaces."""
    parts = line.split("\t") if "\t" in line else line.split(" ")
    return [p for p in (part.strip(" \r") for part in parts) if p]


def _parse_tag(tag: str, where: str) -> tuple[str, str]:
    parsed = split_tag(tag)
    if parsed is not None:
        return parsed
    raise TagtuneError(
        f"{where}: unknown tag {excerpt(tag)} (expected O, or B-, I-, E-, S-, L- or U- and an entity type)"
    )


def _read_conll(path: Path, text: str, labels: frozenset[str] | None) -> list[Example]:
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[tuple[str, str]] = []
    first_line = 0

    def flush() -> None:
        if tokens:
            examples.append(_conll_example(tokens, tags, f"{path}:{first_line}"))
            tokens.clear()
            tags.clear()

    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            flush()
            continue
        fields = conll_fields(line)
        if fields[0] == "-DOCSTART-":
            flush()
            continue
        if len(fields) < 2:
            raise TagtuneError(
                f"{path}:{number}: token {excerpt(fields[0])} has no tag (a line needs the token first "
                "and its tag last)"
            )
        prefix, kind = _parse_tag(fields[-1], f"{path}:{number}")
        if labels is not None and prefix != "O" and kind not in labels:
            raise TagtuneError(f"{path}:{number}: unknown label {excerpt(kind)} in tag {excerpt(fields[-1])} "
                               f"(expected one of: {', '.join(sorted(labels))})")
        if not tokens:
            first_line = number
        tokens.append(fields[0])
        tags.append((prefix, kind))
    flush()
    return examples


def tag_line(path: str | Path, line: int, label: str) -> int:
    """The line of the first tag of entity type ``label`` in the CoNLL sentence of ``path`` that
    starts at ``line`` (the line a CoNLL example's source names); ``line`` itself when there is
    none there, as in a file of JSON records, whose examples name the line of their record.
    Reads the file again: for a message, not for every span."""
    lines = _read_text(Path(path)).split("\n")
    for number in range(line, len(lines) + 1):
        text = lines[number - 1]
        if not looks_like_conll(text):
            break
        parsed = split_tag(conll_fields(text)[-1])
        if parsed is not None and parsed[1] == label:
            return number
    return line


def _conll_example(tokens: list[str], tags: list[tuple[str, str]], source: str) -> Example:
    starts = []
    offset = 0
    for token in tokens:
        starts.append(offset)
        offset += len(token) + 1
    spans = [Span(starts[first], starts[end - 1] + len(tokens[end - 1]), kind) for first, end, kind in chunks(tags)]
    return Example(" ".join(tokens), spans, source)


# --------------------------------------------------------------------------- JSON records


def _kind(value: object) -> str:
    return safejson.shown(value)


def _record_text(record: dict, where: str) -> str:
    if "text" in record:
        text = record["text"]
    elif isinstance(record.get("data"), str):  # doccano 1.x
        text = record["data"]
    else:
        raise TagtuneError(f'{where}: the record has no "text"')
    if not isinstance(text, str):
        raise TagtuneError(f'{where}: "text" is {_kind(text)}, not a string')
    return text


def _answer_key(record: object, line: int):
    """What a ``jsonl`` record answers: its ``"id"`` where it has one (a later record of the id
    replaces it), else its own line."""
    if isinstance(record, dict) and isinstance(record.get("id"), (str, int)) and not isinstance(record["id"], bool):
        return ("id", record["id"])
    return ("line", line)


def _skipped(record: object) -> bool:
    return isinstance(record, dict) and record.get("skipped") is True


def _answers(path: Path, records: list, labels: frozenset[str] | None,
             overlaps: bool = False) -> list[tuple[Example, bool]]:
    """(example, skipped) of each ``jsonl`` record: a skipped one has a text and no spans."""
    answers = []
    for line, record in records:
        if isinstance(record, dict) and "skipped" in record:
            where = f"{path}:{line}"
            if not isinstance(record["skipped"], bool):
                raise TagtuneError(f'{where}: "skipped" is {_kind(record["skipped"])}, not true or false')
            if record["skipped"]:
                answers.append((Example(_record_text(record, where), [], where), True))
                continue
        answers.append((_span_record(path, line, record, labels, overlaps), False))
    return answers


def _span_record(path: Path, line: int, record: object, labels: frozenset[str] | None,
                 overlaps: bool = False) -> Example:
    where = f"{path}:{line}"
    if not isinstance(record, dict):
        raise TagtuneError(f"{where}: expected a JSON object, got {_kind(record)}")
    text = _record_text(record, where)
    key = next((k for k in _SPAN_KEYS if k in record), None)
    if key is None and _json_min_annotation(record):
        return _json_min_without_spans(record, text, where)
    if key is None and "annotation_id" in record:  # JSON-MIN, annotation_id null
        raise TagtuneError(f'{where}: the Label Studio task has no annotation ("annotation_id" is '
                           f"{_kind(record['annotation_id'])}); export only the annotated tasks")
    if key is None:
        raise TagtuneError(
            f'{where}: the record has no spans: expected a "spans" list (or "entities", "label", '
            '"labels"); write [] for a text without entities'
        )
    items = record[key]
    if not isinstance(items, list):
        raise TagtuneError(f'{where}: "{key}" is {_kind(items)}, not a list')
    spans = []
    for i, item in enumerate(items):
        what = f"{key}[{i}]"
        if isinstance(item, list):
            if len(item) != 3:
                raise TagtuneError(f"{where}: {what} has {len(item)} items, expected [start, end, label]")
            start, end, label = item
            claimed = None
        elif isinstance(item, dict):
            start = item.get("start", item.get("start_offset", _MISSING))
            end = item.get("end", item.get("end_offset", _MISSING))
            label = _dict_label(item, where, what)
            claimed = item.get("text")
        elif isinstance(item, str):
            raise TagtuneError(
                f"{where}: {what} is the string {excerpt(item)}, not a span [start, end, label] "
                "(is this a text classification export?)"
            )
        else:
            raise TagtuneError(f"{where}: {what} is {_kind(item)}, not a span")
        spans.append(_checked_span(text, start, end, label, claimed, where, what, labels))
    return Example(text, _unique_spans(text, spans, where, overlaps), where)


def _json_min_annotation(record: dict) -> bool:
    """Whether ``record`` is Label Studio's JSON-MIN export of a submitted annotation: it names the
    annotation by its integer ``"annotation_id"`` (a task without one has null there)."""
    annotation = record.get("annotation_id")
    return isinstance(annotation, int) and not isinstance(annotation, bool)


def _json_min_without_spans(record: dict, text: str, where: str) -> Example:
    """A JSON-MIN annotation record without a ``"label"`` list: a text without entities, unless
    its spans are under another name (a ``<Labels>`` tag not named ``label``)."""
    for name, value in record.items():
        if isinstance(value, list) and any(isinstance(v, dict) and "labels" in v for v in value):
            raise TagtuneError(
                f'{where}: the spans are under "{cut(name)}", not "label": name the <Labels> tag of the '
                'Label Studio config "label", or rename the field'
            )
    return Example(text, [], where)


def _dict_label(item: dict, where: str, what: str) -> object:
    if "label" in item:
        return item["label"]
    if "labels" in item:
        names = item["labels"]
        if not isinstance(names, list):
            raise TagtuneError(f'{where}: {what} "labels" is {_kind(names)}, not a list')
        if not names:
            raise TagtuneError(f"{where}: {what} has no label (its labels list is empty)")
        return names[0]
    return _MISSING


def _checked_span(
    text: str,
    start: object,
    end: object,
    label: object,
    claimed: object,
    where: str,
    what: str,
    labels: frozenset[str] | None,
) -> Span:
    for name, value in (("start", start), ("end", end)):
        if value is _MISSING:
            raise TagtuneError(f"{where}: {what} has no {name}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise TagtuneError(f"{where}: {what} {name} is {_kind(value)}, not an integer")
    if label is _MISSING:
        raise TagtuneError(f"{where}: {what} has no label")
    if not isinstance(label, str):
        raise TagtuneError(f"{where}: {what} label is {_kind(label)}, not a string")
    if not label.strip():
        raise TagtuneError(f"{where}: {what} label is empty")
    if labels is not None and label not in labels:
        raise TagtuneError(
            f"{where}: {what} has unknown label {excerpt(label)} (expected one of: {', '.join(sorted(labels))})"
        )
    if start < 0:
        raise TagtuneError(f"{where}: {what} start {excerpt(start)} is negative")
    if start >= end:
        raise TagtuneError(f"{where}: {what} start {excerpt(start)} is not before its end {excerpt(end)} "
                           "(an empty or reversed span)")
    if isinstance(claimed, str) and text[start:end] != claimed:
        converted = _from_utf16(text, start, end)
        if converted is not None and text[converted[0]:converted[1]] == claimed:
            start, end = converted
        elif end <= len(text):
            raise TagtuneError(f"{where}: {what} [{start}, {end}) covers {excerpt(text[start:end])} in "
                               f"the text, but the span says its text is {excerpt(claimed)}")
    if end > len(text):
        raise TagtuneError(
            f"{where}: {what} end {excerpt(end)} is past the end of the text ({len(text)} characters)"
        )
    return Span(start, end, label)


def _from_utf16(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Code point offsets for UTF-16 offsets ``start``, ``end``; None if they split a character."""
    if all(ord(c) <= 0xFFFF for c in text):
        return None
    index = {}
    units = 0
    for i, c in enumerate(text):
        index[units] = i
        units += 2 if ord(c) > 0xFFFF else 1
    index[units] = len(text)
    if start in index and end in index:
        return index[start], index[end]
    return None


def _describe(span: Span, text: str) -> str:
    return f"{cut(span.label)} [{span.start}, {span.end}) {excerpt(text[span.start:span.end])}"


def _unique_spans(text: str, spans: list[Span], where: str, overlaps: bool) -> list[Span]:
    """``spans`` sorted, exact duplicates merged. The same characters with two labels are an
    error; so are overlapping spans, unless ``overlaps``."""
    unique = sorted(dict.fromkeys(spans))
    widest: Span | None = None  # the span reaching furthest right so far
    for previous, span in zip([None, *unique], unique):
        if previous is not None and (previous.start, previous.end) == (span.start, span.end):
            raise TagtuneError(f"{where}: spans overlap: {_describe(previous, text)} and {_describe(span, text)} "
                               "(the same characters with two labels; a span has one label)")
        if not overlaps and widest is not None and span.start < widest.end:
            raise TagtuneError(
                f"{where}: spans overlap: {_describe(widest, text)} and {_describe(span, text)}; "
                "a tagger with --head span learns overlapping and nested spans"
            )
        if widest is None or span.end > widest.end:
            widest = span
    return unique


# --------------------------------------------------------------------------- keywords


def _whole_words(text: str, start: int, end: int) -> bool:
    if start > 0 and _spaced_word_char(text[start - 1]) and _spaced_word_char(text[start]):
        return False
    if end < len(text) and _spaced_word_char(text[end]) and _spaced_word_char(text[end - 1]):
        return False
    return True


_UNSPACED_SCRIPTS = (
    "CJK", "IDEOGRAPHIC", "HIRAGANA", "KATAKANA", "HALFWIDTH KATAKANA", "HANGUL", "THAI", "LAO",
    "KHMER", "MYANMAR", "TIBETAN",
)


def _spaced_word_char(char: str) -> bool:
    """A letter or digit of a script that puts spaces between words."""
    if not char.isalnum():
        return False
    return char.isascii() or not unicodedata.name(char, "").startswith(_UNSPACED_SCRIPTS)


def _read_keywords(
    path: Path, records: list, label: str
) -> tuple[list[Example], list[tuple[str, str]]]:
    examples = []
    missing = []
    for line, record in records:
        where = f"{path}:{line}"
        if not isinstance(record, dict):
            raise TagtuneError(f"{where}: expected a JSON object, got {_kind(record)}")
        text = _record_text(record, where)
        if "keywords" not in record:
            raise TagtuneError(f'{where}: the record has no "keywords" list')
        keywords = record["keywords"]
        if not isinstance(keywords, list):
            raise TagtuneError(f'{where}: "keywords" is {_kind(keywords)}, not a list of strings')
        for i, keyword in enumerate(keywords):
            if not isinstance(keyword, str):
                raise TagtuneError(f"{where}: keywords[{i}] is {_kind(keyword)}, not a string")
            if not keyword.strip():
                raise TagtuneError(f"{where}: keywords[{i}] is empty")
        spans, absent = keyword_spans(text, keywords, label)
        missing.extend((where, keyword) for keyword in absent)
        examples.append(Example(text, spans, where))
    return examples, missing


# --------------------------------------------------------------------------- Label Studio


def _read_label_studio(path: Path, records: list, labels: frozenset[str] | None,
                       overlaps: bool = False) -> tuple[list[Example], str]:
    """The examples of the tasks ``records`` and a line on the tasks left out ("" if none)."""
    examples = []
    cancelled = unannotated = predicted = 0
    for line, task in records:
        where = f"{path}:{line}"
        if not isinstance(task, dict):
            raise TagtuneError(f"{where}: expected a Label Studio task (a JSON object), got {_kind(task)}")
        if "id" in task:
            where += f": task {excerpt(task['id'])}"
        data = task.get("data")
        if not isinstance(data, dict):
            raise TagtuneError(f'{where}: the task has no "data" object')
        if "text" in data:
            text = data["text"]
            if not isinstance(text, str):
                raise TagtuneError(f'{where}: "data.text" is {_kind(text)}, not a string')
        else:
            text = next((v for v in data.values() if isinstance(v, str)), None)
            if text is None:
                raise TagtuneError(f'{where}: the task has no text (no string in "data")')
        annotations = task.get("annotations", task.get("completions"))
        if annotations is None:
            annotations = []
        if not isinstance(annotations, list):
            raise TagtuneError(f'{where}: "annotations" is {_kind(annotations)}, not a list')
        annotation = next(
            (a for a in annotations if isinstance(a, dict) and not a.get("was_cancelled")), None
        )
        if annotation is None:
            if annotations:
                cancelled += 1
            else:
                unannotated += 1
                predicted += bool(task.get("predictions"))
            continue
        result = annotation.get("result", [])
        if not isinstance(result, list):
            raise TagtuneError(f'{where}: the annotation\'s "result" is {_kind(result)}, not a list')
        spans = []
        for j, item in enumerate(result):
            what = f"result[{j}]"
            if not isinstance(item, dict):
                raise TagtuneError(f"{where}: {what} is {_kind(item)}, not an object")
            value = item.get("value")
            kind = item.get("type")
            if kind is None:
                if not (isinstance(value, dict) and "labels" in value):
                    continue
            elif kind != "labels":
                continue  # choices, relations, text areas, ...
            if not isinstance(value, dict):
                raise TagtuneError(f'{where}: {what} "value" is {_kind(value)}, not an object')
            spans.append(_checked_span(
                text, value.get("start", _MISSING), value.get("end", _MISSING),
                _dict_label(value, where, what), value.get("text"), where, what, labels,
            ))
        examples.append(Example(text, _unique_spans(text, spans, where, overlaps), f"{path}:{line}"))
    detail = f"{cancelled} with only cancelled annotations, {unannotated} not annotated"
    if predicted:
        detail += f" ({predicted} of them with predictions, which are not read)"
    if not examples:
        raise TagtuneError(
            f"{path}: no examples: none of the {len(records)} tasks has an annotation ({detail})"
        )
    left_out = len(records) - len(examples)
    if not left_out:
        return examples, ""
    return examples, f"{left_out} of the {len(records)} tasks left out, without an annotation ({detail})"
