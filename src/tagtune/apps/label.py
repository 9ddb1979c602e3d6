"""``tagtune label``: a teacher language model's entities for each text, as labels to review and
train on.

TEXTS (a text per line, JSON Lines with a ``"text"`` and an optional ``"id"``, or CoNLL
sentences) -> one chat-completions request per distinct text to any OpenAI-compatible API
(Ollama, vLLM, llama.cpp's server, LM Studio, OpenAI), through the official ``openai`` client ->
the entities of each reply placed into character spans by tagtune (tagtune.data.teacher) -> OUT.

OUT formats (:data:`FORMATS`), every record with the text's ``id`` (the input's own, else the
number of its line in a text file, of its record in JSON Lines, of its sentence in CoNLL):

``jsonl``
    tagtune's spans JSONL, ``{"id", "text", "spans": [{"start", "end", "label", "text"}],
    "source": "llm:MODEL"}``, which ``tagtune train``, ``evaluate`` and ``score`` read as it is.
``doccano``
    doccano's JSONL import, ``{"id", "text", "label": [[start, end, label], ...], "source"}``.
``label-studio``
    Label Studio's JSON import, a list of tasks ``{"data": {"text"}, "meta": {"id", "source"},
    "predictions": [{"model_version": "llm:MODEL", "result": [...]}]}``: the spans are shown as
    pre-annotations to accept or correct (a labelling config with ``<Labels name="label"
    toName="text">`` and ``<Text name="text" value="$text"/>``).

Nothing is lost to a crash or an interrupt, and nothing is asked twice:

* each reply is appended to the cache beside OUT (``OUT.llm-cache``, JSON Lines keyed by the
  SHA-256 of the request body, the model included) and fsynced as it arrives, and only then are
  its records appended to OUT (jsonl, doccano) and fsynced; Label Studio's JSON list is written
  whole (through a temporary file) at the end of each run, from the cache;
* a rerun reads OUT and the cache back: texts whose id OUT already holds are done, texts the
  cache answers are written without a request, and only the others are asked. A line cut short
  by a killed process (the last line, without its line end) is removed from OUT and the cache
  before anything is appended, so a run killed at any moment (kill -9 included) and run again
  leaves every text exactly once;
* OUT and the cache are locked against a second ``tagtune label`` writing to them.

Requests: at most ``concurrency`` at once (asyncio with the client's AsyncOpenAI), each with a
``timeout``; the client retries timeouts, dropped connections, 408, 409, 429 and 5xx answers up to
``retries`` times with exponential backoff, waiting as long as a ``Retry-After`` header asks (up
to two minutes). A request that still fails stops the run with one line naming the URL and the
cause; what was answered is kept, and the same command goes on from there. A 400 that names
``response_format`` (a server without structured outputs) switches the run to asking for JSON in
the prompt alone; the reply's JSON is then read from the text (a fenced block, or from the
first ``{`` to the last ``}``). A reply without the JSON asked for is counted and left out of OUT
(and of the cache, so the next run asks again).

The progress bar on stderr shows texts done, requests per second, retries and the tokens the
API reports used. Needs the ``llm`` extra (``pip install 'tagtune[llm]'``); ``dry_run`` prints
the first request without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tagtune import safejson
from tagtune.apps._pool import decoded_lines, detect_format, probe_lines, read_records
from tagtune.data.formats import read_examples
from tagtune.data.teacher import (Dropped, ReplyError, cache_key, parse_labels, parse_reply, pick_examples, place,
                                  read_guide, request)
from tagtune.errors import TagtuneError
from tagtune.files import AppendFile, open_input, write_error, write_file
from tagtune.progress import Progress
from tagtune.safejson import excerpt
from tagtune.spans import Span

FORMATS = ("jsonl", "label-studio", "doccano")
CACHE_SUFFIX = ".llm-cache"
INSTALL = "pip install 'tagtune[llm]'"


@dataclass
class Item:
    """A text of TEXTS and the id its records carry."""

    id: int | str
    text: str


@dataclass
class Tally:
    """What a run did, for the progress bar and the closing lines."""

    asked: int = 0
    """Requests sent (a retry the client makes is not another request here)."""
    cached: int = 0
    """Distinct texts answered from the cache."""
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    written: int = 0
    """Records written to OUT."""
    spans: int = 0
    unreadable: int = 0
    first_unreadable: str = ""
    left: int = 0
    """Distinct texts not asked because of --max-requests."""
    dropped: Dropped = field(default_factory=Dropped)
    started: float = field(default_factory=time.perf_counter)

    def fields(self) -> dict:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        return {"req/s": round(self.asked / elapsed, 2), "retries": self.retries,
                "tokens": self.prompt_tokens + self.completion_tokens}


# --------------------------------------------------------------------------- reading


def read_texts(path: str | os.PathLike, format: str | None = None) -> list[Item]:
    """The non-empty texts of ``path`` with their ids: a JSON Lines record's ``"id"`` (a string
    or an integer) where it has one, else the record's number (its line's in a text file)."""
    name = str(path)
    with open_input(path) as stream:
        head, lines = probe_lines(decoded_lines(stream, name))
        format = format or detect_format(name, head)
        items: list[Item] = []
        seen: dict[int | str, int] = {}
        for number, record in enumerate(read_records(lines, name, format), 1):
            key = record.get("id", number)
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise TagtuneError(f'{name}: record {number}: "id" is {safejson.shown(key)}, not a string or an integer')
            if not record["text"].strip():
                continue
            if key in seen:
                raise TagtuneError(f"{name}: record {number}: the id {excerpt(key)} was given to record {seen[key]} "
                                   "already; ids must be unique")
            seen[key] = number
            items.append(Item(key, record["text"]))
    if not items:
        raise TagtuneError(f"{name}: no texts (the file has no non-empty text)")
    return items


class Journal(AppendFile):
    """A JSON Lines file appended to one fsynced line at a time, locked against a second writer
    (tagtune.files.AppendFile). Opening it removes a last line cut short (a write a killed process
    did not finish)."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, "tagtune label", "name a file that is one, or that does not exist yet", links=False)
        try:
            data = self.read()
            whole = data.rfind(b"\n") + 1
            if whole < len(data):
                self.truncate(whole)
                print(f"tagtune: {self.path}: removed its last line, cut short by a run that did not finish",
                      file=sys.stderr)
        except OSError as e:
            self.close()
            raise write_error(self.path, e) from None
        except BaseException:
            self.close()
            raise
        self.lines = [(n, line) for n, line in enumerate(data[:whole].decode("utf-8", "replace").split("\n"), 1)
                      if line.strip()]

    def records(self, strict: bool) -> list[tuple[int, dict]]:
        """(line number, object) of each line; a line that is not a JSON object is an error with
        ``strict``, else passed over."""
        out = []
        for number, line in self.lines:
            try:
                value = safejson.loads(line)
            except (json.JSONDecodeError, safejson.JsonLimitError) as e:
                if strict:
                    raise TagtuneError(f"{self.path}:{number}: not valid JSON ({getattr(e, 'msg', e)})") from None
                continue
            if isinstance(value, dict):
                out.append((number, value))
            elif strict:
                raise TagtuneError(f"{self.path}:{number}: expected a JSON object, got {safejson.shown(value)}")
        return out

    def empty(self) -> None:
        """Cut the file to nothing (``overwrite``)."""
        self.truncate(0)
        self.lines = []


# --------------------------------------------------------------------------- writing


def record(item: Item, spans: list[Span], format: str, source: str) -> dict:
    """OUT's record of ``item`` with ``spans`` in ``format`` (a Label Studio task for label-studio)."""
    text = item.text
    if format == "jsonl":
        return {"id": item.id, "text": text, "spans": [s.to_dict(text) for s in spans], "source": source}
    if format == "doccano":
        return {"id": item.id, "text": text, "label": [[s.start, s.end, s.label] for s in spans], "source": source}
    result = [{"from_name": "label", "to_name": "text", "type": "labels",
               "value": {"start": s.start, "end": s.end, "text": text[s.start:s.end], "labels": [s.label]}}
              for s in spans]
    return {"data": {"text": text}, "meta": {"id": item.id, "source": source},
            "predictions": [{"model_version": source, "result": result}]}


def _done_ids(out: Journal, source: str) -> set:
    """The (id, text) pairs OUT holds; a record of another source is an error."""
    done = set()
    for number, rec in out.records(strict=True):
        if rec.get("source") != source:
            raise TagtuneError(f"{out.path}:{number}: labelled by {excerpt(rec.get('source'))}, not {source!r}; "
                               "give another -o, or --overwrite to start it again")
        if isinstance(rec.get("text"), str) and isinstance(rec.get("id"), (int, str)):
            done.add((rec["id"], rec["text"]))
    return done


def _check_label_studio_out(out: Path, source: str, overwrite: bool) -> None:
    """An existing Label Studio OUT is replaced only if an earlier run of the same model wrote it
    (or with ``overwrite``)."""
    if overwrite or not os.path.lexists(out):
        return
    if out.is_symlink() or not out.is_file():
        raise TagtuneError(f"{out}: not a regular file; name a file that is one, or that does not exist yet")
    try:
        tasks = safejson.loads(out.read_text(encoding="utf-8") or "[]")
    except (OSError, ValueError, safejson.JsonLimitError):
        tasks = None
    ours = isinstance(tasks, list) and all(
        isinstance(t, dict) and isinstance(t.get("meta"), dict) and t["meta"].get("source") == source for t in tasks)
    if not ours:
        raise TagtuneError(f"{out}: already exists and was not written by tagtune label with {source!r} "
                           "(pass --overwrite to replace it)")


class Output:
    """OUT as a run writes it: each answer's records appended as it comes (jsonl, doccano), or
    every text's task written at the end (label-studio, by :meth:`finish`)."""

    def __init__(self, path: Path, format: str, source: str, items: list[Item], target: Journal | None,
                 labels: list[str], overlaps: bool, tally: Tally):
        self.path = path
        self.format = format
        self.source = source
        self.items = items
        self.target = target
        self.labels = labels
        self.overlaps = overlaps
        self.tally = tally
        self.waiting: dict[str, list[Item]] = {}
        """The items of each distinct text, the ones a request answers together."""
        for item in items:
            self.waiting.setdefault(item.text, []).append(item)
        self.labelled: dict[str, list[Span]] = {}

    def write(self, text: str, reply: str | None) -> None:
        """The records of ``text``'s items from the ``reply`` (nothing for None, an unreadable one)."""
        if reply is None:
            return
        spans, dropped = place(text, parse_reply(reply), self.labels, overlaps=self.overlaps)
        self.tally.dropped.merge(dropped)
        self.labelled[text] = spans
        for item in self.waiting[text]:
            self.tally.written += 1
            self.tally.spans += len(spans)
            if self.target is not None:
                self.target.append(record(item, spans, self.format, self.source))

    def finish(self) -> None:
        """Label Studio's list of tasks, of every text answered so far, in TEXTS order."""
        if self.format != "label-studio" or not self.labelled:
            return
        tasks = [record(item, self.labelled[item.text], self.format, self.source) for item in self.items
                 if item.text in self.labelled]
        write_file(self.path, "[\n" + ",\n".join(json.dumps(t, ensure_ascii=False) for t in tasks) + "\n]\n")


# --------------------------------------------------------------------------- asking


class Teacher:
    """The requests of one run: their bodies (``body(text, structured)``), the cache (key ->
    reply, and its file), the tally, and the client's errors turned into one-line TagtuneErrors."""

    def __init__(self, url: str, model: str, body, cache: dict, cache_file: Journal, tally: Tally):
        self.url = url
        self.model = model
        self.body = body
        self.cache = cache
        self.cache_file = cache_file
        self.tally = tally
        self.structured = True
        self.retries = 0

    def cached(self, text: str) -> str | None:
        """The cached reply to ``text``: asked with the schema, or without it."""
        for structured in (True, False):
            reply = self.cache.get(cache_key(self.body(text, structured)))
            if reply is not None:
                return reply
        return None

    async def ask(self, client, text: str) -> str | None:
        """The reply's content for ``text``, cached; None where it holds no entities JSON."""
        import openai

        body = self.body(text, self.structured)
        try:
            raw = await client.chat.completions.with_raw_response.create(**body)
        except openai.BadRequestError as e:
            if "response_format" in body and "response_format" in f"{e.message} {e.body}":
                if self.structured:  # once, though requests in flight may be refused too
                    self.structured = False
                    print(f"tagtune: {self.url} does not take a JSON schema ({self.detail(e)}); asking for JSON in "
                          "the prompt alone", file=sys.stderr)
                return await self.ask(client, text)
            raise self.failed(e, text) from None
        except openai.APIError as e:
            raise self.failed(e, text) from None
        self.tally.retries += getattr(raw, "retries_taken", 0)
        completion = raw.parse()
        usage = completion.usage
        if usage is not None:
            self.tally.prompt_tokens += usage.prompt_tokens or 0
            self.tally.completion_tokens += usage.completion_tokens or 0
        choice = completion.choices[0] if completion.choices else None
        content = choice.message.content if choice is not None else None
        try:
            parse_reply(content)
        except ReplyError as e:
            self.tally.unreadable += 1
            self.tally.first_unreadable = self.tally.first_unreadable or f"{excerpt(text)}: {e}"
            return None
        key = cache_key(body)
        self.cache[key] = content
        self.cache_file.append({"key": key, "model": self.model, "content": content, "usage": _tokens(usage)})
        return content

    @staticmethod
    def detail(error) -> str:
        body = error.body
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body, str) and body.strip():
            return body.strip()
        return error.message

    def failed(self, error, text: str) -> TagtuneError:
        """The one line for a request that failed after the client's retries; a request the server
        refused as it was (400, 413, 422) names its text."""
        import openai

        retried = f" (after {self.retries} retries)" if self.retries else ""
        if isinstance(error, openai.APITimeoutError):
            self.tally.retries += self.retries
            what = f"no answer within the timeout{retried}; a slow model may need a larger --timeout"
        elif isinstance(error, openai.APIConnectionError):
            self.tally.retries += self.retries
            cause = error.__cause__ or error.__context__
            reason = str(cause) if cause is not None and str(cause) else error.message
            what = f"cannot connect{retried}: {reason}; is the server running, and is this its base URL?"
        elif isinstance(error, openai.APIStatusError):
            status = error.status_code
            if status in (408, 409, 429) or status >= 500:
                self.tally.retries += self.retries
            else:
                retried = ""
            what = f"the server answered {status}{retried}: {self.detail(error)}"
            if isinstance(error, openai.NotFoundError):
                what += f" (is --llm-model {self.model!r} a model this server has?)"
            elif isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
                what += " (set OPENAI_API_KEY to a key this server accepts)"
            elif status in (400, 413, 422):
                what += f" (asking for the text {excerpt(text)})"
        else:
            what = str(error)
        return TagtuneError(" ".join(f"{self.url}: {what}".split()))


def _tokens(usage) -> dict | None:
    if usage is None:
        return None
    return {name: getattr(usage, name, None) for name in ("prompt_tokens", "completion_tokens", "total_tokens")}


async def _ask_all(teacher: Teacher, client, texts: list[str], done, concurrency: int,
                   max_requests: int | None) -> None:
    """Ask for ``texts``, at most ``concurrency`` at a time and ``max_requests`` in all; ``done(text,
    reply)`` gets each answer as it arrives. The first failure cancels the requests in flight and
    is raised."""
    queue = iter(texts)

    async def worker():
        for text in queue:
            if max_requests is not None and teacher.tally.asked >= max_requests:
                teacher.tally.left += 1
                continue
            teacher.tally.asked += 1
            done(text, await teacher.ask(client, text))

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(texts)))]
    try:
        finished, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in finished:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()


def client_for(url: str, timeout: float, retries: int):
    """The AsyncOpenAI client for ``url``; OPENAI_API_KEY is its key, a placeholder when unset
    (local servers take any)."""
    try:
        import openai
    except ModuleNotFoundError as e:
        if e.name != "openai":
            raise
        raise TagtuneError(f"label needs the openai client, which is not installed: {INSTALL}") from None
    return openai.AsyncOpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
                              timeout=timeout, max_retries=retries)


# --------------------------------------------------------------------------- the command


def _check(name: str, value, low, allow_none: bool = False, kind=int):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value < low:
        need = "a number" if kind is float else "a whole number"
        raise TagtuneError(f"{name} must be {need} of at least {low}, got {value!r}")
    return value


def label(texts, out, labels: str | None = None, llm: str | None = None, model: str | None = None,
          guide=None, examples=None, k: int = 5, examples_format: str | None = None, format: str = "jsonl",
          head: str = "token", concurrency: int = 8, max_requests: int | None = None, timeout: float = 120.0,
          retries: int = 4, temperature: float = 0.0, dry_run: bool = False, overwrite: bool = False,
          input_format: str | None = None, cache=None, progress: bool = True) -> Tally:
    """Label the texts of the file ``texts`` with the teacher ``model`` served at ``llm`` (a base URL
    such as ``http://localhost:11434/v1``; OPENAI_BASE_URL without it) into ``out`` (see the module
    doc). ``labels``: ``"PER,ORG"``, else the labels of ``guide`` (a file of ``LABEL:
    description`` lines); ``examples``: an annotated file whose ``k`` texts are shown as worked
    examples. ``cache``: the cache file (default: OUT.llm-cache), which another OUT of the same
    texts may share (another format, asked nothing again). ``head``: ``token`` resolves overlapping spans (the longer wins), ``span`` keeps
    them. ``dry_run`` prints the first request as JSON and sends nothing. Returns the tally."""
    if format not in FORMATS:
        raise TagtuneError(f"unknown output format {format!r}; the formats are: {', '.join(FORMATS)}")
    if head not in ("token", "span"):
        raise TagtuneError(f"--head must be token or span, got {head!r}")
    concurrency = _check("--concurrency", concurrency, 1)
    max_requests = _check("--max-requests", max_requests, 1, allow_none=True)
    k = _check("-k", k, 0)
    retries = _check("--retries", retries, 0)
    timeout = _check("--timeout", timeout, 0.001, kind=float)
    if not model:
        raise TagtuneError("label needs --llm-model NAME: the model as the server names it (e.g. qwen2.5:7b)")
    described = read_guide(guide) if guide is not None else {}
    if labels is not None:
        label_list = parse_labels(labels)
        unknown = [name for name in described if name not in label_list]
        if unknown:
            raise TagtuneError(f"{guide}: describes {excerpt(unknown[0])}, which is not in --labels "
                               f"({', '.join(label_list)})")
    elif described:
        label_list = list(described)
    else:
        raise TagtuneError("label needs --labels (e.g. --labels PER,ORG,LOC), or a --guide FILE of "
                           "'LABEL: description' lines")
    url = llm or os.environ.get("OPENAI_BASE_URL")
    if not dry_run and not url:
        raise TagtuneError("label needs --llm URL, the server's base URL (e.g. http://localhost:11434/v1 for "
                           "Ollama), or OPENAI_BASE_URL")
    if url and not url.startswith(("http://", "https://")):
        raise TagtuneError(f"--llm {excerpt(url)}: not an http:// or https:// URL (e.g. http://localhost:11434/v1)")
    url = url.rstrip("/") if url else url
    items = read_texts(texts, input_format)
    shown = pick_examples(read_examples(examples, examples_format, overlaps=head == "span"), label_list, k) \
        if examples is not None else []

    def body(text: str, structured: bool) -> dict:
        return request(model, text, label_list, described, shown, structured, temperature)

    if dry_run:
        if url:
            print(f"tagtune: POST {url}/chat/completions (not sent)", file=sys.stderr)
        print(json.dumps(body(items[0].text, True), indent=2, ensure_ascii=False))
        return Tally()

    source = f"llm:{model}"
    out = Path(out)
    if os.path.exists(out) and os.path.samefile(out, texts):
        raise TagtuneError(f"{out}: is TEXTS; write the labels to another file")
    for other, name in ((out, "OUT"), (texts, "TEXTS")):
        if cache is not None and os.path.exists(cache) and os.path.exists(other) and os.path.samefile(cache, other):
            raise TagtuneError(f"--cache {cache}: is {name}; the cache is a file of its own")
    client = client_for(url, timeout, retries)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    if format == "label-studio":
        _check_label_studio_out(out, source, overwrite)
    tally = Tally()
    journals: list[Journal] = []
    try:
        cache_file = Journal(out.with_name(out.name + CACHE_SUFFIX) if cache is None else cache)
        journals.append(cache_file)
        cache = {r["key"]: r["content"] for _, r in cache_file.records(strict=False)
                 if isinstance(r.get("key"), str) and isinstance(r.get("content"), str)}
        target = None
        done: set = set()
        if format != "label-studio":
            target = Journal(out)
            journals.append(target)
            if overwrite:
                target.empty()
            done = _done_ids(target, source)
        teacher = Teacher(url, model, body, cache, cache_file, tally)
        output = Output(out, format, source, [item for item in items if (item.id, item.text) not in done], target,
                        label_list, head == "span", tally)
        replies = {text: teacher.cached(text) for text in output.waiting}
        to_ask = [text for text, reply in replies.items() if reply is None]
        if progress:
            print(f"tagtune: {texts}: {len(items):,} texts; {out}: {len(items) - len(output.items):,} already "
                  f"labelled, {len(replies) - len(to_ask):,} answered from the cache, {len(to_ask):,} to ask {url} "
                  f"({model})", file=sys.stderr, flush=True)
        for text, reply in replies.items():
            if reply is not None:
                tally.cached += 1
                output.write(text, reply)
        bar = Progress(len(to_ask), "label", unit="texts", enabled=progress and bool(to_ask))

        def answered(text: str, reply: str | None) -> None:
            output.write(text, reply)
            bar.update(1, **tally.fields())

        try:
            if to_ask:
                asyncio.run(_run(teacher, client, to_ask, answered, concurrency, max_requests))
        except TagtuneError as e:
            if tally.written or done:
                raise TagtuneError(f"{e}; the answers so far are kept in {out}: run the same command again to "
                                   "go on") from None
            raise
        finally:
            bar.close()
            output.finish()
    finally:
        for journal in journals:
            journal.close()
    if progress:
        _report(tally, out, format)
    return tally


async def _run(teacher: Teacher, client, texts: list[str], answered, concurrency: int,
               max_requests: int | None) -> None:
    teacher.retries = client.max_retries
    try:
        await _ask_all(teacher, client, texts, answered, concurrency, max_requests)
    finally:
        await client.close()


def _report(tally: Tally, out: Path, format: str) -> None:
    if not (tally.written or tally.asked):
        return
    tokens = tally.prompt_tokens + tally.completion_tokens
    print(f"tagtune: {out}: {tally.written:,} records written ({format}), {tally.spans:,} spans; {tally.asked:,} "
          f"requests, {tally.retries:,} retries, {tokens:,} tokens ({tally.prompt_tokens:,} in, "
          f"{tally.completion_tokens:,} out), {tally.cached:,} texts from the cache", file=sys.stderr)
    dropped = tally.dropped
    causes = [(dropped.absent, "not in their text", "absent"),
              (dropped.unasked, "with a label not asked for", "unasked"),
              (dropped.malformed, "not {\"text\", \"label\"} items", "malformed"),
              (dropped.overlapping, "overlapping a longer span", "overlapping")]
    parts = [f"{n:,} {what} (first: {dropped.examples[cause]})" for n, what, cause in causes if n]
    if parts:
        print(f"tagtune: dropped from the replies: {'; '.join(parts)}", file=sys.stderr)
    if tally.unreadable:
        print(f"tagtune: warning: {tally.unreadable:,} replies without the entities JSON (first: "
              f"{tally.first_unreadable}); their texts are left out: run the same command again to ask again",
              file=sys.stderr)
    if tally.left:
        print(f"tagtune: --max-requests reached: {tally.left:,} texts not asked yet; run the same command again "
              "to go on", file=sys.stderr)
