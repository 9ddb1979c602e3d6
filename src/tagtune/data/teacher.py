"""A teacher language model's labels, in the pure parts: what to ask, and what its answer means.

``tagtune label`` asks an OpenAI-compatible chat-completions API for each text's entities. This
module holds everything of that which needs no network: the request (:func:`request`: a system
message with the labels and their descriptions, worked examples as earlier turns, the text as
the last user message, and a JSON schema in ``response_format``), the reading of the reply
(:func:`parse_reply`) and the placing of the named entities into character spans
(:func:`place`), which tagtune does, not the model:

* the model names each entity by its text, ``{"entities": [{"text": "Ann", "label": "PER"}]}``;
* every occurrence of that text in the input is marked (:func:`tagtune.data.formats.keyword_spans`:
  exact, and never cutting a word of a script written with spaces; any substring in Japanese,
  Chinese, Thai and the like);
* an entity whose text is not in the input, or whose label was not asked for, is dropped and
  counted (:class:`Dropped`);
* where spans overlap, the token head's rule keeps the longer, then the earlier (as the keyword
  reader does); for the span head (``overlaps``) they are all kept, except that the same
  characters keep only the label the reply names first (a span has one label).

The guide file (``--guide``) gives each label a sentence, ``LABEL: description`` a line
(:func:`read_guide`); worked examples come from annotated texts (:func:`pick_examples`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tagtune import safejson
from tagtune.data import formats
from tagtune.data.formats import keyword_spans
from tagtune.errors import TagtuneError
from tagtune.safejson import excerpt
from tagtune.spans import Example, Span

__all__ = [
    "Dropped",
    "ReplyError",
    "cache_key",
    "parse_labels",
    "parse_reply",
    "pick_examples",
    "place",
    "read_guide",
    "request",
    "response_format",
]


class ReplyError(ValueError):
    """A reply that holds no ``{"entities": [...]}`` object; the message says what it holds."""


@dataclass
class Dropped:
    """What a reply named that did not become a span, by cause."""

    absent: int = 0
    """Entities whose text is not in the input (or not as whole words)."""
    unasked: int = 0
    """Entities with a label that was not asked for."""
    malformed: int = 0
    """Items that are not ``{"text": "...", "label": "..."}`` with a non-empty text."""
    overlapping: int = 0
    """Spans left out because a longer (or earlier) one covers some of their characters."""
    examples: dict = field(default_factory=dict)
    """The first of each cause, as shown in messages."""

    def add(self, cause: str, what: str) -> None:
        setattr(self, cause, getattr(self, cause) + 1)
        self.examples.setdefault(cause, what)

    def merge(self, other: Dropped) -> None:
        for cause in ("absent", "unasked", "malformed", "overlapping"):
            setattr(self, cause, getattr(self, cause) + getattr(other, cause))
        for cause, what in other.examples.items():
            self.examples.setdefault(cause, what)

    def total(self) -> int:
        return self.absent + self.unasked + self.malformed + self.overlapping


# --------------------------------------------------------------------------- labels and guide


def parse_labels(value: str) -> list[str]:
    """``"PER, ORG"`` -> ``["PER", "ORG"]``; an empty name, a repeated one or a comma inside
    none is a TagtuneError naming ``--labels``."""
    labels = [name.strip() for name in value.split(",")]
    counts = Counter(labels)
    if "" in counts:
        raise TagtuneError(f"--labels {excerpt(value)}: an empty label (two commas in a row, or one at an end)")
    repeated = [name for name, n in counts.items() if n > 1]
    if repeated:
        raise TagtuneError(f"--labels {excerpt(value)}: {excerpt(repeated[0])} is given twice")
    return labels


_GUIDE_LINE = re.compile(r"^\s*([^:#\s][^:]*?)\s*:\s*(.*?)\s*$")


def read_guide(path: str | Path) -> dict[str, str]:
    """The labels of the guide file ``path`` and their descriptions, in file order.

    A line is ``LABEL: description`` (a sentence saying what the label covers, for the model);
    blank lines and lines starting with ``#`` are passed over. A line without a colon, a label
    given twice, or a file without labels is a one-line ``file:line:`` error."""
    text = formats._read_text(Path(path))  # the annotation readers' decoding and its errors
    guide: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _GUIDE_LINE.match(line)
        if match is None:
            raise TagtuneError(f"{path}:{number}: expected 'LABEL: what the label covers', got {excerpt(line)}")
        label, description = match.groups()
        if label in guide:
            raise TagtuneError(f"{path}:{number}: the label {excerpt(label)} is described twice")
        guide[label] = description
    if not guide:
        raise TagtuneError(f"{path}: no labels (write a line 'LABEL: what the label covers' for each)")
    return guide


def pick_examples(examples: Sequence[Example], labels: Sequence[str], k: int) -> list[Example]:
    """``k`` worked examples from ``examples``, in their order, with only the spans of ``labels``:
    first, going through the file, each text that shows a label no chosen text shows yet, until
    every label is shown; then the earliest texts not chosen, until there are ``k``."""
    if k <= 0:
        return []
    wanted = set(labels)
    kept = [Example(e.text, [s for s in e.spans if s.label in wanted], e.source) for e in examples]
    chosen: list[int] = []
    shown: set[str] = set()
    for i, example in enumerate(kept):
        if len(chosen) == k or shown == wanted:
            break
        new = {s.label for s in example.spans} - shown
        if new:
            chosen.append(i)
            shown |= new
    rest = (i for i in range(len(kept)) if i not in chosen)
    chosen.extend(i for _, i in zip(range(k - len(chosen)), rest))
    return [kept[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------- the request


def _instructions(labels: Sequence[str], guide: dict[str, str]) -> str:
    kinds = "\n".join(f"- {label}: {guide[label]}" if guide.get(label) else f"- {label}" for label in labels)
    return (
        "You are an expert annotator for named entity recognition. Find every mention of the entity "
        "types below in the user's text.\n\n"
        f"Entity types:\n{kinds}\n\n"
        'Answer with JSON only, in this form: {"entities": [{"text": "...", "label": "..."}]}. '
        '"text" is the mention copied character for character from the user\'s text (same case, same '
        'spelling, nothing added or left out); "label" is one of: ' + ", ".join(labels) + ". "
        "Name each entity once, even where it occurs several times. Text that is none of these types "
        'is left out. With no entity in the text, answer {"entities": []}.'
    )


def answer_of(example: Example) -> str:
    """The answer a worked example shows: its spans' texts and labels, in text order."""
    entities = [{"text": example.text[s.start:s.end], "label": s.label} for s in sorted(example.spans)]
    return json.dumps({"entities": list({json.dumps(e): e for e in entities}.values())}, ensure_ascii=False)


def response_format(labels: Sequence[str]) -> dict:
    """The ``response_format`` asking for ``{"entities": [{"text", "label"}]}`` with a JSON
    schema (structured outputs), the labels as an enum."""
    entity = {"type": "object",
              "properties": {"text": {"type": "string"}, "label": {"type": "string", "enum": list(labels)}},
              "required": ["text", "label"], "additionalProperties": False}
    schema = {"type": "object", "properties": {"entities": {"type": "array", "items": entity}},
              "required": ["entities"], "additionalProperties": False}
    return {"type": "json_schema", "json_schema": {"name": "entities", "strict": True, "schema": schema}}


def request(model: str, text: str, labels: Sequence[str], guide: dict[str, str] | None = None,
            examples: Sequence[Example] = (), structured: bool = True, temperature: float = 0.0) -> dict:
    """The body of the chat-completions request for ``text``: the instructions as the system
    message, each worked example as a user turn and the assistant's answer, then ``text`` alone
    as the last user message; with ``structured``, the JSON schema in ``response_format``."""
    messages = [{"role": "system", "content": _instructions(labels, guide or {})}]
    for example in examples:
        messages.append({"role": "user", "content": example.text})
        messages.append({"role": "assistant", "content": answer_of(example)})
    messages.append({"role": "user", "content": text})
    body = {"model": model, "messages": messages, "temperature": temperature}
    if structured:
        body["response_format"] = response_format(labels)
    return body


def cache_key(body: dict) -> str:
    """The key of a request in the cache: SHA-256 of its body (the model included) as canonical
    JSON, so any change to the model, the text, the labels, the guide or the examples asks again."""
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the reply

_THINKING = re.compile(r"<think>.*?</think>", re.S)
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def _json_in(content: str):
    """The JSON value of ``content``: all of it, else the first fenced block that parses, else
    the text from the first ``{`` to the last ``}`` (a model that wraps its JSON in prose)."""
    content = _THINKING.sub("", content).strip()
    candidates = [content, *(m.group(1) for m in _FENCE.finditer(content))]
    if "{" in content:
        candidates.append(content[content.index("{"):content.rindex("}") + 1] if "}" in content else "")
    for candidate in candidates:
        try:
            return safejson.loads(candidate)
        except (json.JSONDecodeError, safejson.JsonLimitError):
            continue
    raise ReplyError(f"not JSON: {excerpt(content, 80)}")


def parse_reply(content: str | None) -> list:
    """The items of the reply's ``"entities"`` list (a bare list is taken as that list). A reply
    without such JSON is a ReplyError; the items are checked by :func:`place`."""
    if not isinstance(content, str) or not content.strip():
        raise ReplyError("an empty reply")
    value = _json_in(content)
    if isinstance(value, dict) and isinstance(value.get("entities"), list):
        return value["entities"]
    if isinstance(value, list):
        return value
    raise ReplyError(f'JSON without an "entities" list: {excerpt(content, 80)}')


def place(text: str, items: list, labels: Sequence[str], overlaps: bool = False) -> tuple[list[Span], Dropped]:
    """The spans of ``text`` that the reply's entity ``items`` name, and what was dropped.

    Each item ``{"text": ..., "label": ...}`` with a label of ``labels`` marks every occurrence of
    its text (spaces around it left out) found by :func:`tagtune.data.formats.keyword_spans`.
    Without ``overlaps`` spans that overlap are resolved as the token head reads them: the longer
    wins, then the one that starts first, then the one the reply names first; with ``overlaps``
    all are kept, except that the same characters keep the label named first."""
    dropped = Dropped()
    asked = set(labels)
    candidates: list[Span] = []  # in reply order
    for item in items:
        entity = item.get("text") if isinstance(item, dict) else None
        label = item.get("label") if isinstance(item, dict) else None
        if not isinstance(entity, str) or not entity.strip() or not isinstance(label, str):
            dropped.add("malformed", excerpt(item))
            continue
        entity = entity.strip()
        if label not in asked:
            dropped.add("unasked", f"{excerpt(entity)} as {excerpt(label)}")
            continue
        found, missing = keyword_spans(text, [entity], label)
        if missing:
            dropped.add("absent", f"{excerpt(entity)} ({label})")
        candidates.extend(found)
    candidates = list(dict.fromkeys(candidates))  # the same span named twice counts once
    if overlaps:
        spans: dict[tuple[int, int], Span] = {}
        for span in candidates:
            spans.setdefault((span.start, span.end), span)
        kept = list(spans.values())
    else:
        taken = bytearray(len(text))
        kept = []
        for span in sorted(candidates, key=lambda s: (s.start - s.end, s.start)):  # stable: reply order last
            if any(taken[span.start:span.end]):
                continue
            taken[span.start:span.end] = b"\x01" * (span.end - span.start)
            kept.append(span)
    chosen = set(kept)
    for span in (s for s in candidates if s not in chosen):
        dropped.add("overlapping", f"{excerpt(text[span.start:span.end])} ({span.label})")
    return sorted(kept), dropped
