"""``tagtune annotate``: label texts in a browser, one at a time, into a file ``tagtune train`` reads.

The page (``static/annotate.html``) shows one text; the mouse marks spans, keys 1-9 choose the
label, Enter accepts. Every answer is one JSON line appended to OUT, in tagtune.data.formats's ``jsonl``
format with the text's id beside it::

    {"id": 7, "text": "Acme hired Ann", "spans": [{"start": 0, "end": 4, "label": "ORG", "text": "Acme"}]}
    {"id": 8, "text": "...", "skipped": true}

A line is written, flushed and fsynced before the page gets its answer, so a server stopped at
any moment has lost nothing it answered. A text answered again (going back) gets a new line
with the same id: the id's last line wins, here on a restart and in tagtune.data.formats, and a skipped
text is no training example. On a restart OUT is read back; answered texts are done, and texts skipped earlier come
again after every unanswered one.

Texts are handed out under a lock, one to each page (``client``, a random id each page load makes)
that asks: two tabs never hold the same text at once, and a page holds one text at most, since
asking for the next lets the earlier one go. An open page says so every ``BEAT_SECONDS``
(``/api/beat``). A text held by a page is free again when that page asks for its next text, goes
away (it sends ``/api/let-go`` on ``pagehide``, a ``fetch`` with ``keepalive``, which unlike
``sendBeacon`` carries the token header as every other request does), or has not been heard from
for ``RELEASE_SECONDS`` (a crashed browser, a killed process, a closed laptop lid: no
``pagehide``). A page heard from again gets its text back if no other page took it meanwhile (a
browser wakes a tab long in the background less often; a page restored from the back-forward
cache after its ``pagehide``). Answers are written one at a time under the same lock.

An answer is saved whether or not its page still holds the text (a page may go back to earlier
texts, or come back after its text went to another page), but never over an answer it has not
seen: each text shown carries its ``version`` (the answers it got since the start), and an answer
that names an older one than the text has is refused (409, with the version to name to replace it).

Only the server's own page is answered (:class:`Guard`); anything else gets 403 with a JSON error
before the request is read, so it writes nothing and holds nothing:

- ``Host`` must name the address the server listens on, with its port: the address as bound, the
  ``--host`` as given, and ``localhost`` for a loopback address. A web page whose own name its
  owner points at this address (DNS rebinding) sends its own name and is refused.
- ``Origin``, where the browser sends one, must be the page's own, ``http://`` and that ``Host``
  (``null`` or another site is refused).
- Every ``/api/`` request carries the server's token in ``X-Tagtune-Token``: a random
  ``secrets.token_urlsafe`` made at each start and written into the page it serves, as Jupyter
  does. Another site can neither read the page nor set that header on a request it makes.
- A request with a body has ``Content-Type: application/json`` (which no other site can send
  without the browser asking the server first, and it is never asked).

Listening on every address (``--host 0.0.0.0`` or ``::``), the names the machine is known by
cannot be listed, so any ``Host`` is let through; the token still guards every ``/api/`` request.
Then the page is served to a ``Host`` that is an IP address or a loopback name (no other site
can read those), and to any other name only with the token in the address: the printed URL ends
with ``/?token=...``, to open as it is or with the machine's name in place of the address. The
page is never cached, framed or sent as a referrer.

Offsets are Unicode code points (Python ``str`` indices), as everywhere in tagtune; the page
converts the UTF-16 offsets of its selections before sending them, and the server checks each
span's ``text`` against the code points it names. With a tagger (``model``) its spans are shown
as suggestions, and texts come most uncertain first (:func:`rank`); without one, in file order,
with the spans an annotated file holds for each text as suggestions where one is given
(``suggestions``: a teacher's labels from ``tagtune label``, another labeller's answers).

Spans side by side only, as a token tagger learns them, unless ``overlaps`` (``--overlaps``, on
with a span tagger's ``--model``, whose nested spans it suggests): then a span may lie inside
another or across one, as ``tagtune train --head span`` learns them, and the page draws spans
that nest or overlap on levels below the text. An exact duplicate (same characters, same label)
counts once; the same characters with another label are one span relabelled, never two (a span
has one label, as the readers of tagtune.data.formats require).

Needs the ``serve`` extra (uvicorn, starlette).
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import secrets
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tagtune import safejson
from tagtune.apps._http import (ApiError, Refusing, bind, entity_labels, error_handlers, host_of, loopback, page_html,
                                read_body, require_server_packages, run_app, url_host)
from tagtune.apps._pool import decoded_lines, text_record
from tagtune.data.formats import read_answers, read_examples
from tagtune.errors import TagtuneError
from tagtune.files import AppendFile, open_input, read_bytes
from tagtune.inference.rank import score
from tagtune.inference.spantagger import SpanTagger
from tagtune.inference.tagger import Tagger
from tagtune.safejson import excerpt
from tagtune.spans import Span

MAX_KEYS = 9
"""Labels 1 to 9 get a key; any further ones are chosen with the mouse."""
BEAT_SECONDS = 5.0
"""How often an open page tells the server it is still there."""
RELEASE_SECONDS = 3 * BEAT_SECONDS
"""A text held by a page not heard from for this long (three missed beats) goes to the next page that asks."""
MAX_BODY = 1_048_576
"""Bytes of a request body."""
RECENT = 200
"""Latest answers a page can go back through after it opens."""
BASE_MODEL = "BASE_MODEL"
"""Stands for the model in the training command when the tagger's base model is not known."""
TOKEN_HEADER = "X-Tagtune-Token"
"""The header in which every API request carries the server's token."""
TOKEN_SLOT = 'content="TAGTUNE-TOKEN"'
"""Where annotate.html's ``<meta name="tagtune-token">`` gets the token."""
SHARED_BLOCK = re.compile(r'<(style|script) id="(span-levels[a-z-]*)">(.*?)</\1>', re.S)
"""The style and script blocks that draw spans on levels: written once, in the page of tagtune serve
(index.html); annotate.html has them empty, filled from there when served."""


class Conflict(ApiError):
    """409: text ``index`` has an answer the page has not seen (``version`` is the text's now)."""

    def __init__(self, index: int, version: int):
        super().__init__(409, f"text {index} was answered in another page since this page showed it, and that answer "
                              f'is kept; to replace it, send this answer again with "version": {version}')
        self.version = version


@dataclass
class Text:
    """One text to label: its place among the texts, its id (the record's ``"id"``, else its line
    number), the text, and its line in the file."""

    index: int
    id: int | str
    text: str
    line: int


# --------------------------------------------------------------------------- input


def parse_labels(value: str) -> list[str]:
    """``"KEY,ORG"`` -> ``["KEY", "ORG"]``: the names between commas, without surrounding spaces.
    An empty name or one given twice is an error."""
    labels = [name.strip() for name in value.split(",")]
    for i, label in enumerate(labels):
        if not label:
            raise TagtuneError(f"--labels {excerpt(value)}: label {i + 1} is empty")
        if label in labels[:i]:
            raise TagtuneError(f"--labels {excerpt(value)}: {excerpt(label)} is given twice")
    return labels


def read_texts(path: str | os.PathLike) -> tuple[list[Text], int]:
    """The texts of ``path`` in order, and how many repeats of an earlier text were left out.

    The file is a text per line (empty lines are left out), or JSON Lines with a ``"text"``
    string (and an optional ``"id"``, a string or an integer) when its first non-empty line is a
    JSON object. Bytes that are not UTF-8 and lines that are not JSON objects with a text are a
    one-line ``file:line:`` error."""
    path = Path(path)
    stream = open_input(path)
    texts: list[Text] = []
    seen: set[str] = set()
    repeats = 0
    jsonl = None
    with stream:
        for number, line in decoded_lines(stream, str(path)):
            if not line.strip():
                continue
            if jsonl is None:
                jsonl = line.lstrip().startswith("{")
            key: int | str = number
            text = line
            if jsonl:
                text, key = _text_record(path, number, line)
            if not text.strip():
                continue
            if text in seen:
                repeats += 1
                continue
            seen.add(text)
            texts.append(Text(len(texts), key, text, number))
    if not texts:
        raise TagtuneError(f"{path}: no texts (the file has no non-empty line)")
    return texts, repeats


def _text_record(path: Path, number: int, line: str) -> tuple[str, int | str]:
    where = f"{path}:{number}"
    record = text_record(line, where, " (the first line of the file is JSON, so every line is read as JSON)")
    key = record.get("id", number)
    if isinstance(key, bool) or not isinstance(key, (int, str)):
        raise TagtuneError(f'{where}: "id" is {safejson.shown(key)}, not a string or an integer')
    return record["text"], key


def read_out(path: str | os.PathLike, texts: list[Text], labels: list[str],
             overlaps: bool = False) -> tuple[dict, list[int], int]:
    """What OUT says of ``texts``: the latest answer of each text answered (index -> spans, or
    None for a skip), those indices in the order of their latest answers, and the number of
    other texts OUT answers (texts no longer in the file). OUT is only read; a malformed line,
    a span with another label than ``labels``, overlapping spans without ``overlaps``, or a JSON
    list is a one-line ``file:line:`` error."""
    path = Path(path)
    if not os.path.lexists(path) or os.path.getsize(path) == 0:
        return {}, [], 0
    with open(path, "rb") as f:
        start = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if start == b"[":
        raise TagtuneError(f"{path}:1: a JSON list; answers are appended as JSON Lines, one object a line "
                           "(give another --out)")
    _check_last_line(path)
    where = {t.text: t.index for t in texts}
    latest: dict[int, list[Span] | None] = {}
    order: dict[int, None] = {}  # an ordered set: a text moves to the end when answered again
    others: set[str] = set()
    for example, skipped in read_answers(path, labels, overlaps=True):
        clash = None if overlaps else overlapping(example.spans)
        if clash is not None:
            raise TagtuneError(f"{example.source}: spans overlap: {_shown(clash[0], example.text)} and "
                               f"{_shown(clash[1], example.text)}; the answers were given with --overlaps: add "
                               "--overlaps to go on with them")
        index = where.get(example.text)
        if index is None:
            others.add(example.text)
            continue
        latest[index] = None if skipped else example.spans
        order.pop(index, None)
        order[index] = None
    return latest, list(order), len(others)


def read_suggestions(path: str | os.PathLike, texts: list[Text], labels: list[str],
                     overlaps: bool = False) -> tuple[dict[int, list[Span]], dict[str, int]]:
    """The spans the annotated file ``path`` holds for ``texts`` (index -> spans), to suggest, and
    how many of them were left out for a label not in ``labels`` (label -> count).

    ``path`` is any file tagtune.data.formats reads (``tagtune label``'s JSONL, doccano JSONL as
    it is); its records are matched to ``texts`` by their text, the last one of a text winning
    (and the last one of an ``"id"``, as :func:`tagtune.data.formats.read_examples` keeps them).
    A text the file lacks has no suggestions. Spans that overlap (after those left out) are a
    one-line ``file:line:`` error without ``overlaps``."""
    where = {t.text: t.index for t in texts}
    latest = {example.text: example for example in read_examples(path, overlaps=True) if example.text in where}
    keep = set(labels)
    found: dict[int, list[Span]] = {}
    dropped: dict[str, int] = {}
    for text, example in latest.items():
        spans = [span for span in example.spans if span.label in keep]
        for span in example.spans:
            if span.label not in keep:
                dropped[span.label] = dropped.get(span.label, 0) + 1
        clash = None if overlaps else overlapping(spans)
        if clash is not None:
            raise TagtuneError(f"{example.source}: spans overlap: {_shown(clash[0], text)} and "
                               f"{_shown(clash[1], text)}; add --overlaps to have spans that nest or overlap "
                               "suggested (and answered, for train --head span)")
        found[where[text]] = spans
    return found, dropped


def _check_last_line(path: Path) -> None:
    """A last line of OUT that is not JSON, as a write the machine did not finish leaves it (the
    power went, the disk filled), is a one-line ``file:line:`` error that says how to go on."""
    data = read_bytes(path).rstrip(b" \t\r\n")
    start = data.rfind(b"\n") + 1
    last = data[start:].decode("utf-8", errors="replace").removeprefix("\ufeff")
    number = data.count(b"\n", 0, start) + 1
    try:
        safejson.loads(last)
    except json.JSONDecodeError as e:
        raise TagtuneError(
            f"{path}:{number}: invalid JSON: {e.msg} (column {e.colno}), in the last line, as a write that did "
            "not finish leaves it: remove that line to go on; every earlier answer is kept") from None
    except safejson.JsonLimitError:  # JSON, and refused as every other line would be
        pass


# --------------------------------------------------------------------------- ranking


def rank(uncertainty: list[float]) -> list[int]:
    """Positions of texts in the order to label them: most uncertain first (the tagger's
    uncertainty, :meth:`tagtune.inference.tagger.Tagger.uncertainty`, as ``tagtune select`` ranks), file
    order among equals."""
    return sorted(range(len(uncertainty)), key=lambda i: -uncertainty[i])


# --------------------------------------------------------------------------- OUT


class AnswerFile(AppendFile):
    """OUT, open for appending while the server runs, and locked against a second ``tagtune
    annotate`` on the same file (where the system has advisory locks). Nothing already in it is
    ever changed: a failed write is cut back to where it started (tagtune.files.AppendFile)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, "tagtune annotate", "--out must be a file or not exist yet")


# --------------------------------------------------------------------------- the texts and their answers


class Annotator:
    """The texts, their latest answers, and which page holds which text. Every method takes the
    lock, so the server may call them from several threads.

    ``latest`` (index -> spans, or None for a skip) and ``answered`` (indices by latest answer)
    are what OUT held at the start (:func:`read_out`); ``order`` is the order in which to hand
    out the texts without an answer; texts skipped earlier come after them. ``out`` gets each
    answer's record (an AnswerFile, or anything with ``append(record)``). A page not heard from
    for ``release`` seconds (by ``clock``) loses its text to the next page that asks; ``beat`` is
    how often its page says it is there. ``overlaps``: answers may hold spans that nest or overlap."""

    def __init__(self, texts: list[Text], labels: list[str], out, latest: dict | None = None,
                 answered: list[int] | None = None, order: list[int] | None = None,
                 suggestions: dict[int, list[Span]] | None = None, train_command: str = "",
                 names: dict | None = None, clock=time.monotonic, beat: float = BEAT_SECONDS,
                 release: float = RELEASE_SECONDS, overlaps: bool = False):
        self.texts = texts
        self.labels = labels
        self.overlaps = overlaps
        self.out = out
        self.latest: dict[int, list[Span] | None] = dict(latest or {})
        self.answered: dict[int, None] = dict.fromkeys(answered or [])
        unanswered = order if order is not None else [t.index for t in texts if t.index not in self.latest]
        self.queue = [i for i in unanswered if i not in self.latest]
        self.queue += [i for i in self.answered if self.latest[i] is None]
        self.handed = set(self.queue)  # the texts /api/next hands out
        self.head = 0  # queue[:head] are all answered in this run
        self.done_now: set[int] = set()  # answered or skipped since the start
        self.suggestions = suggestions or {}
        self.train_command = train_command
        self.names = names or {}
        self.clock = clock
        self.beat_seconds = beat
        self.release = release
        self.holder: dict[int, str] = {}  # index -> client
        self.held: dict[str, int] = {}  # client -> index
        self.heard: dict[str, float] = {}  # client holding a text -> when it was last heard from
        self.versions: dict[int, int] = {}  # index -> answers since the start
        self.lock = threading.Lock()

    # ----------------------------------------------------------- reading

    def info(self) -> dict:
        with self.lock:
            return {
                "labels": [{"label": label, "key": str(k + 1) if k < MAX_KEYS else None}
                           for k, label in enumerate(self.labels)],
                "progress": self._progress(),
                "recent": list(self.answered)[-RECENT:],
                "train_command": self.train_command,
                "beat_seconds": self.beat_seconds,
                "release_seconds": self.release,
                "overlaps": self.overlaps,
                **self.names,
            }

    def item(self, index: int) -> dict:
        with self.lock:
            self._check_index(index)
            return self._item(index)

    def progress(self) -> dict:
        with self.lock:
            return self._progress()

    # ----------------------------------------------------------- handing out

    def next(self, client: str) -> dict:
        """The next text for ``client`` (its earlier one let go): ``{"item": ..., "progress":
        ..., "held": texts held by other pages}``; ``item`` is None when none is left for it."""
        with self.lock:
            now = self.clock()
            self._let_go(client)
            while self.head < len(self.queue) and self.queue[self.head] in self.done_now:
                self.head += 1
            held = 0
            for index in self.queue[self.head:]:
                if index in self.done_now:
                    continue
                holder = self.holder.get(index)
                if holder is not None and self._heard_lately(holder, now):
                    held += 1
                    continue
                if holder is not None:  # its page went silent: free again
                    self._let_go(holder)
                self._hold(client, index, now)
                return {"item": self._item(index), "progress": self._progress(), "held": 0}
            return {"item": None, "progress": self._progress(), "held": held}

    def beat(self, client: str, index: int | None) -> dict:
        """``client``'s page is open and shows text ``index``, which ``next`` gave it (None: no
        such text). Keeps its hold; a hold it lost by going silent comes back when no other page
        took the text and it has no answer since. Returns ``{"elsewhere": ...}``, true when
        another page holds ``index`` now."""
        with self.lock:
            now = self.clock()
            if client in self.held:
                self.heard[client] = now
            elif index is not None and index in self.handed and index not in self.done_now:
                holder = self.holder.get(index)
                if holder is not None and not self._heard_lately(holder, now):
                    self._let_go(holder)
                if index not in self.holder:
                    self._hold(client, index, now)
            holder = self.holder.get(index)
            return {"elsewhere": holder is not None and holder != client and self._heard_lately(holder, now)}

    def let_go(self, client: str) -> None:
        """``client`` no longer works on the text it holds (its page closed)."""
        with self.lock:
            self._let_go(client)

    def answer(self, index: int, spans: list[Span] | None, version: int | None = None) -> dict:
        """Record ``spans`` (None: a skip) as the latest answer of text ``index``: appended to OUT
        and on disk before this returns. Returns the progress. With ``version`` (the one the page
        showed the text with), an answer given since then by another page is not replaced:
        :class:`Conflict` instead."""
        with self.lock:
            self._check_index(index)
            if version is not None and version != self.versions.get(index, 0):
                raise Conflict(index, self.versions.get(index, 0))
            text = self.texts[index]
            record: dict = {"id": text.id, "text": text.text}
            if spans is None:
                record["skipped"] = True
            else:
                record["spans"] = [span.to_dict(text.text) for span in spans]
            self.out.append(record)
            self.latest[index] = spans
            self.answered.pop(index, None)
            self.answered[index] = None
            self.done_now.add(index)
            self.versions[index] = self.versions.get(index, 0) + 1
            holder = self.holder.get(index)
            if holder is not None:
                self._let_go(holder)
            return self._progress()

    # ----------------------------------------------------------- inside the lock

    def _hold(self, client: str, index: int, now: float) -> None:
        self.holder[index] = client
        self.held[client] = index
        self.heard[client] = now

    def _heard_lately(self, client: str, now: float) -> bool:
        return now - self.heard.get(client, -math.inf) <= self.release

    def _let_go(self, client: str) -> None:
        index = self.held.pop(client, None)
        self.heard.pop(client, None)
        if index is not None and self.holder.get(index) == client:
            del self.holder[index]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.texts):
            raise KeyError(index)

    def _item(self, index: int) -> dict:
        text = self.texts[index]
        if index not in self.latest:
            status, spans = "new", self.suggestions.get(index, [])
        elif self.latest[index] is None:
            status, spans = "skipped", self.suggestions.get(index, [])
        else:
            status, spans = "answered", self.latest[index]
        return {"index": index, "id": text.id, "text": text.text, "status": status,
                "version": self.versions.get(index, 0), "suggested": status != "answered" and bool(spans),
                "spans": [span.to_dict(text.text) for span in spans]}

    def _progress(self) -> dict:
        counts = dict.fromkeys(self.labels, 0)
        done = skipped = 0
        for spans in self.latest.values():
            if spans is None:
                skipped += 1
                continue
            done += 1
            for span in spans:
                counts[span.label] = counts.get(span.label, 0) + 1
        return {"total": len(self.texts), "done": done, "skipped": skipped,
                "left": len(self.texts) - done - skipped, "spans": counts}


# --------------------------------------------------------------------------- requests


def parse_answer(body: bytes, annotator: Annotator) -> tuple[int, list[Span] | None, int | None]:
    """``(index, spans, version)`` of an answer request, spans None for a skip, version None when
    not given; ApiError 400 (not JSON), 404 (no such text), 409 (another text) or 422 (anything
    else wrong) otherwise.

    ``{"index": int, "spans": [{"start", "end", "label", "text"?}]}`` or ``{"index": ...,
    "skip": true}``, with ``"text"``, the text the page shows,
    checked when given (409 if the texts changed under the page), and ``"version"``, the text's
    version the page shows (:meth:`Annotator.answer`). Offsets are code points; a
    span's ``text``, when given, must be the text's code points ``start`` to ``end``; spans may
    not overlap, unless the annotator's ``overlaps`` (an exact duplicate then counts once, and the
    same characters may not carry two labels)."""
    data = _json_body(body, {"index", "text", "spans", "skip", "version"})
    index = _index(data.get("index"), annotator)
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ApiError(422, f'"version" must be an integer from 0, got {safejson.shown(version)}')
    if "text" in data and data["text"] != annotator.texts[index].text:
        raise ApiError(409, f"text {index} is not the text the page shows (the texts changed since it was "
                            "shown); reload the page")
    skip = data.get("skip", False)
    if not isinstance(skip, bool):
        raise ApiError(422, f'"skip" must be true or false, got {safejson.shown(skip)}')
    if skip:
        if data.get("spans"):
            raise ApiError(422, "a skipped text has no spans")
        return index, None, version
    if "spans" not in data:
        raise ApiError(422, 'missing field "spans" (a list of {"start", "end", "label"}), or "skip": true')
    text = annotator.texts[index].text
    return index, _spans(data["spans"], text, annotator.labels, annotator.overlaps), version


def parse_beat(body: bytes, annotator: Annotator) -> tuple[str, int | None]:
    """``(client, index)`` of a beat: ``{"client": str, "index": int or null}``, the text the
    page got from ``/api/next`` and shows; ApiError otherwise."""
    data = _json_body(body, {"client", "index"})
    index = data.get("index")
    return _client(data), None if index is None else _index(index, annotator)


def _index(index, annotator: Annotator) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise ApiError(422, f'"index" must be an integer, got {safejson.shown(index)}')
    if not 0 <= index < len(annotator.texts):
        raise ApiError(404, f"no text {index} (there are {len(annotator.texts)})")
    return index


def _spans(items, text: str, labels: list[str], overlaps: bool = False) -> list[Span]:
    if not isinstance(items, list):
        raise ApiError(422, f'"spans" must be a list, got {safejson.shown(items)}')
    spans = []
    for i, item in enumerate(items):
        what = f"spans[{i}]"
        if not isinstance(item, dict):
            raise ApiError(422, f"{what} must be an object, got {safejson.shown(item)}")
        unknown = sorted(set(item) - {"start", "end", "label", "text"})
        if unknown:
            raise ApiError(422, f"{what} has unknown field {excerpt(unknown[0])}")
        start, end, label = item.get("start"), item.get("end"), item.get("label")
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ApiError(422, f"{what} {name} must be an integer, got {safejson.shown(value)}")
        if not 0 <= start < end <= len(text):
            raise ApiError(422, f"{what} [{start}, {end}) is not within the text ({len(text)} characters, "
                                "counted in code points) or is empty")
        if label not in labels:
            shown = excerpt(label) if isinstance(label, str) else safejson.shown(label)
            raise ApiError(422, f"{what} has unknown label {shown} "
                                f"(the labels are: {', '.join(labels)})")
        if "text" in item and item["text"] != text[start:end]:
            raise ApiError(422, f"{what} says its text is {safejson.shown(item['text'])}, but code points "
                                f"[{start}, {end}) of the text are {excerpt(text[start:end])}")
        spans.append(Span(start, end, label))
    spans.sort()
    if not overlaps:
        clash = overlapping(spans)
        if clash is not None:
            raise ApiError(422, f"spans overlap: {_shown(clash[0], text)} and {_shown(clash[1], text)} "
                                "(tagtune annotate --overlaps keeps spans that nest or overlap)")
        return spans
    spans = list(dict.fromkeys(spans))  # an exact duplicate counts once
    for a, b in zip(spans, spans[1:]):
        if (a.start, a.end) == (b.start, b.end):
            raise ApiError(422, f"spans mark the same characters {_shown(a, text)} with two labels, {a.label} and "
                                f"{b.label}; a span has one label")
    return spans


def overlapping(spans: list[Span]) -> tuple[Span, Span] | None:
    """Two of ``spans`` (sorted) that share a character, or None when they lie side by side."""
    return next(((a, b) for a, b in zip(spans, spans[1:]) if b.start < a.end), None)


def _shown(span: Span, text: str) -> str:
    return f"[{span.start}, {span.end}) {excerpt(text[span.start:span.end])}"


def _json_body(body: bytes, fields: set[str]) -> dict:
    try:
        data = safejson.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ApiError(400, "the body is not UTF-8") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"the body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except safejson.JsonLimitError as e:
        raise ApiError(400, f"the body is not accepted: {e.msg}") from None
    if not isinstance(data, dict):
        raise ApiError(422, f"expected a JSON object, got {safejson.shown(data)}")
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ApiError(422, f"unknown field {excerpt(unknown[0])}")
    return data


def _client(data: dict) -> str:
    client = data.get("client")
    if not isinstance(client, str) or not 0 < len(client) <= 100:
        raise ApiError(422, '"client" must be a string of 1 to 100 characters naming the page')
    return client


class Guard:
    """Which requests the server answers: those of its own page (see the module's notes).

    ``address`` is the listening socket's (``sock.getsockname()``), ``host`` the ``--host`` as
    given; ``token`` is the one the page carries."""

    def __init__(self, address: tuple, host: str | None = None, token: str | None = None):
        bound, self.port = address[0], address[1]
        self.token = token or secrets.token_urlsafe(32)
        self.everywhere = ipaddress.ip_address(bound).is_unspecified
        self.names = {bound.lower(), (host or bound).strip("[]").lower()}
        if loopback(bound):
            self.names.add("localhost")

    @property
    def page_path(self) -> str:
        """What follows the address in the URL that opens the page."""
        return f"/?token={self.token}" if self.everywhere else ""

    def refusal(self, scope, headers) -> str | None:
        """Why a request is refused, or None (:class:`tagtune.apps._http.Refusing` asks)."""
        from urllib.parse import parse_qs

        value = headers.get("host")
        found = host_of(value)
        if found is None:
            return f"the request has no usable Host header (got {safejson.shown(value)})"
        name, port = found
        if not self.everywhere and (name not in self.names or (80 if port is None else port) != self.port):
            own = " or ".join(f"http://{url_host(n)}:{self.port}" for n in sorted(self.names))
            return (f"Host {excerpt(value)} is not this server, which answers its page at {own} only: open the "
                    "address tagtune annotate printed")
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"http://{value}".lower():
            return (f"Origin {excerpt(origin)} is not this server's page (http://{value}): only its own page may "
                    "send requests")
        if scope["path"].startswith("/api/"):
            sent = headers.get(TOKEN_HEADER, "").encode("latin-1")
            if not secrets.compare_digest(sent, self.token.encode("ascii")):
                return (f"the request does not carry this server's token ({TOKEN_HEADER}, which its page has): "
                        "reload the page (a server started again has a new token)")
            if scope["method"] not in ("GET", "HEAD"):
                kind = headers.get("content-type")
                if kind is None or kind.split(";")[0].strip().lower() != "application/json":
                    return f"Content-Type must be application/json, got {'none' if kind is None else excerpt(kind)}"
        elif self.everywhere and not loopback(name) and not _address(name):
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if not any(secrets.compare_digest(t.encode("latin-1"), self.token.encode("ascii"))
                       for t in query.get("token", [])):
                return (f"Host {excerpt(value)} is a name: the page is served to it only at the address "
                        "tagtune annotate printed, with its ?token=")
        return None


def shared_blocks(page: str, source: str) -> str:
    """``page`` with each of its empty SHARED_BLOCK elements filled with the element of the same id in
    ``source``; a RuntimeError unless the two pages have the same such blocks, once each."""
    found = {m.group(2): m.group(0) for m in SHARED_BLOCK.finditer(source)}
    wanted = [m.group(2) for m in SHARED_BLOCK.finditer(page)]
    if not found or sorted(wanted) != sorted(found) or any(m.group(3).strip() for m in SHARED_BLOCK.finditer(page)):
        raise RuntimeError(f"annotate.html's shared blocks {wanted} are not the empty places of index.html's "
                           f"{sorted(found)}")
    return SHARED_BLOCK.sub(lambda m: found[m.group(2)], page)


def _address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def create_app(annotator: Annotator, guard: Guard):
    """The Starlette app: the page at ``/`` and its JSON API under ``/api/``, answering only what
    ``guard`` lets through (403 otherwise)."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    template = shared_blocks(page_html("annotate.html"), page_html("index.html"))
    if template.count(TOKEN_SLOT) != 1:
        raise RuntimeError(f"annotate.html has {template.count(TOKEN_SLOT)} places for the token, not one")
    page = template.replace(TOKEN_SLOT, f'content="{guard.token}"')
    page_headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                    "Content-Security-Policy": "frame-ancestors 'none'"}

    def error(status: int, message: str):
        return JSONResponse({"error": message}, status_code=status)

    async def answering(request: Request, work):
        """``work(body)`` in a worker thread (it may wait for the lock and the disk); its result as JSON."""
        try:
            body = await read_body(request, MAX_BODY)
            return JSONResponse(await run_in_threadpool(work, body))
        except Conflict as e:
            return JSONResponse({"error": e.message, "version": e.version}, status_code=e.status)
        except ApiError as e:
            return error(e.status, e.message)
        except ClientDisconnect:  # nobody to answer
            return Response(status_code=400)
        except TagtuneError as e:  # OUT could not be written: the answer is not recorded
            return error(500, f"the answer was not saved: {e}")

    async def index(request: Request):
        return HTMLResponse(page, headers=page_headers)

    async def info(request: Request):
        return JSONResponse(await run_in_threadpool(annotator.info))

    async def next_text(request: Request):
        return await answering(request, lambda body: annotator.next(_client(_json_body(body, {"client"}))))

    async def text(request: Request):
        number = request.path_params["index"]
        try:
            return JSONResponse({"item": await run_in_threadpool(annotator.item, number)})
        except KeyError:
            return error(404, f"no text {number} (there are {len(annotator.texts)})")

    def record(body: bytes) -> dict:
        number, spans, version = parse_answer(body, annotator)
        return {"progress": annotator.answer(number, spans, version)}

    async def answer(request: Request):
        return await answering(request, record)

    async def beat(request: Request):
        return await answering(request, lambda body: annotator.beat(*parse_beat(body, annotator)))

    async def let_go(request: Request):
        return await answering(request, lambda body: annotator.let_go(_client(_json_body(body, {"client"}))) or {})

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/api/info", info, methods=["GET"]),
            Route("/api/next", next_text, methods=["POST"]),
            Route("/api/texts/{index:int}", text, methods=["GET"]),
            Route("/api/answer", answer, methods=["POST"]),
            Route("/api/beat", beat, methods=["POST"]),
            Route("/api/let-go", let_go, methods=["POST"]),
        ],
        exception_handlers=error_handlers(),
        middleware=[Middleware(Refusing, refusal=guard.refusal)],
    )


# --------------------------------------------------------------------------- the command


def train_command(out: str, model: str | None, overlaps: bool = False) -> str:
    """The command that trains a tagger on ``out``: on the base model of ``model``'s training run
    when its folder says which, else with BASE_MODEL to fill in; with ``overlaps``, a span tagger
    (``--head span``), which learns spans that nest or overlap."""
    base = BASE_MODEL
    if model is not None and (Path(model) / "train_config.json").is_file():
        try:
            saved = safejson.read_object(Path(model) / "train_config.json", max_bytes=1_000_000)
        except TagtuneError:
            saved = {}
        if isinstance(saved.get("model"), str) and saved["model"]:
            base = saved["model"]
    stem = Path(out).stem or "annotations"
    head = ["--head", "span"] if overlaps else []
    return shlex.join(["tagtune", "train", "--model", base, "--train", str(out),
                       "--out", str(Path(out).with_name(f"{stem}-tagger")), *head])


def suggest(tagger, texts: list[str], labels: list[str],
            progress: bool = True) -> tuple[list[list[Span]], list[float]]:
    """The tagger's spans for ``texts``, those with a label in ``labels`` only, and its
    uncertainty of each text (tagtune.inference.rank.score): a span tagger's spans as its overlap
    rule keeps them (nested, as :func:`annotate` loads it)."""
    keep = set(labels)
    spans, uncertainty = score(tagger, texts, progress, batch_texts=64)
    return [[span for span in found if span.label in keep] for found in spans], uncertainty


def _left_out(dropped: dict[str, int]) -> str:
    """What :func:`read_suggestions` left out, for the line that sums up the suggestions."""
    if not dropped:
        return ""
    total = sum(dropped.values())
    counts = ", ".join(f"{label} {n}" for label, n in sorted(dropped.items()))
    return f"; {total} span{'s' if total > 1 else ''} left out, their labels not in --labels ({counts})"


def annotate(texts: str, out: str, labels: str | None = None, model: str | None = None, host: str = "127.0.0.1",
             port: int = 8080, device: str | None = None, access_log: bool = False, progress: bool = True,
             bf16: str = "auto", overlaps: bool = False, suggestions: str | None = None) -> None:
    """Serve the page that labels the texts of the file ``texts`` into ``out``, until interrupted.

    ``labels`` is ``"KEY,ORG"``; without it, the labels of the tagger ``model``. With ``model``
    (a trained tagger folder), its spans are suggested and the texts come most uncertain first;
    it runs in the precision ``bf16`` chooses (auto, on, off; tagtune.models.precision).
    ``overlaps``: spans may nest or overlap; on with a span tagger, whose nested spans are
    suggested. With ``suggestions`` instead of ``model`` (an annotated file, such as ``tagtune
    label`` writes: :func:`read_suggestions`), its spans of each text are suggested, those with
    a label in ``labels`` only, and the texts come in file order. Prints where the answers stand
    and the address once listening."""
    require_server_packages()
    if model is not None and suggestions is not None:
        raise TagtuneError("annotate takes --model or --suggestions, not both: the suggestions come from the tagger "
                           "or from the file")
    if labels is None and model is None:
        raise TagtuneError("annotate needs --labels (e.g. --labels PER,ORG), or --model DIR for its tagger's labels")
    label_list = parse_labels(labels) if labels is not None else None
    items, repeats = read_texts(texts)
    suggested: dict[int, list[Span]] = {}
    if suggestions is not None:
        suggested, dropped = read_suggestions(suggestions, items, label_list, overlaps)
    tagger = None
    if model is not None:
        tagger = Tagger.load(model, device=device, bf16=bf16, overlap="nested")
        if isinstance(tagger, SpanTagger):
            if not overlaps:
                print(f"tagtune: {model} is a span tagger: its spans may nest, and so may the answers (--overlaps)",
                      file=sys.stderr)
            overlaps = True
            found = list(tagger.labels)
        else:
            found = entity_labels(list(tagger.labels))
        unused = [label for label in found if label_list is not None and label not in label_list]
        if label_list is None:
            label_list = found
        elif unused:
            print(f"tagtune: the tagger's labels {', '.join(unused)} are not in --labels: it suggests no spans "
                  "with them", file=sys.stderr)
    file = AnswerFile(out)
    try:
        latest, answered, others = read_out(out, items, label_list, overlaps)
        done = sum(spans is not None for spans in latest.values())
        note = f" ({repeats} repeated text{'s' if repeats > 1 else ''} shown once)" if repeats else ""
        print(f"tagtune: {texts}: {len(items)} texts{note}; {out}: {done} answered, "
              f"{len(latest) - done} skipped, {len(items) - len(latest)} to go", file=sys.stderr)
        if others:
            print(f"tagtune: {out} also answers {others} texts that {texts} does not have (kept as they are)",
                  file=sys.stderr)
        if suggestions is not None:
            print(f"tagtune: {suggestions}: suggestions for {len(suggested)} of the {len(items)} texts, "
                  f"{sum(map(len, suggested.values()))} spans{_left_out(dropped)}", file=sys.stderr)
        order = [t.index for t in items if t.index not in latest]
        if tagger is not None:
            wanted = order + [i for i in answered if latest[i] is None]
            predicted, unsure = suggest(tagger, [items[i].text for i in wanted], label_list, progress)
            suggested = dict(zip(wanted, predicted))
            order = [order[k] for k in rank(unsure[:len(order)])]
        command = train_command(out, model, overlaps)
        source = model if model is not None else suggestions  # what the suggestions come from, shown on the page
        names = {"texts": str(texts), "out": str(out), "model": str(source) if source is not None else None,
                 "fill_in": BASE_MODEL if BASE_MODEL in shlex.split(command) else None}
        annotator = Annotator(items, label_list, file, latest, answered, order, suggested, command, names,
                              overlaps=overlaps)
        sock = bind(host, port)
        guard = Guard(sock.getsockname(), host)
        run_app(create_app(annotator, guard), access_log=access_log, shown=f"{texts} for annotation into {out}",
                sock=sock, path=guard.page_path)
    finally:
        file.close()
