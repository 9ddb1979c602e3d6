"""README.md in a trained tagger folder: a model card in the Hugging Face Hub's convention.

https://huggingface.co/docs/hub/model-cards: YAML front matter (``library_name``,
``pipeline_tag``, ``base_model``, ``tags`` and, with a dev set, ``model-index`` holding the kept
epoch's dev precision, recall and F1 as the Hub's schema nests them: results -> task -> dataset ->
metrics), then Markdown: what the tagger tags (labels and their training spans), how it was
trained (data, head, epochs, precision, the equivalent command line), its dev scores per label,
and how to use it (tagtune predict, ``Tagger.load``, transformers).

``base_model`` is written only when it is reliably known: ``--model`` given as a Hub id, or as a
snapshot folder of the HF cache (``models--ORG--NAME/snapshots/SHA``); a local folder is left
out. ``language`` is left out (nothing in a checkpoint says it reliably), and so is
``license``, for the user to fill in (a commented line shows where).

The YAML is written by ``front_matter``, a small emitter of mappings, lists, numbers, booleans
and double-quoted strings, so the package needs no YAML library.

The card starts, after its front matter, with MARKER. A README.md without it is the user's: it
is never replaced (``write_card`` keeps it and says so); one with it is tagtune's, rewritten at
each final save.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections import Counter
from dataclasses import MISSING, asdict, fields
from pathlib import Path

from tagtune.errors import TagtuneError
from tagtune.files import atomic_write
from tagtune.spans import Example
from tagtune.store.hub import CARD_FILE, parse_repo_id
from tagtune.training.config import TrainConfig

MARKER = "<!-- written by tagtune train -->"
"""Marks a README.md as tagtune's card, which the next final save may replace."""

_CACHE_SNAPSHOT = re.compile(r"models--(?:([^/]+?)--)?([^/]+)/snapshots/[^/]+/?$")
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_PLAIN_VALUE = re.compile(r"[A-Za-z][A-Za-z0-9_./-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}
"""Words YAML 1.1 reads as booleans or null: quoted, though plain otherwise."""


def write_card(folder: Path, config: TrainConfig, history: list[dict], kept: int, train: list[Example],
               dev: list[Example], precision: str, calibration: dict | None = None) -> str | None:
    """Write ``folder``/README.md (see render_card), unless a README.md there lacks MARKER: then
    it is kept as it is, and the returned line says so (None when the card was written)."""
    path = folder / CARD_FILE
    if path.exists():
        try:
            own = MARKER in path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            own = False
        if not own:
            return (f"{path}: a README.md not written by tagtune (no {MARKER} in it); kept as it is, "
                    "so no model card was written")
    atomic_write(path, render_card(config, history, kept, train, dev, precision, calibration))
    return None


def render_card(config: TrainConfig, history: list[dict], kept: int, train: list[Example], dev: list[Example],
                precision: str, calibration: dict | None = None) -> str:
    """The card's text for the run of ``config`` whose epoch ``kept`` is the tagger; ``history``
    is metrics.jsonl's entries, ``train`` and ``dev`` the texts trained and scored on,
    ``precision`` the training precision mode ("fp32", "bf16" or "autocast"), ``calibration``
    the temperature fitted on dev with its before and after (metrics.jsonl's ``calibration``)."""
    name = Path(config.out).name or str(config.out)
    epoch = next(h for h in history if h.get("epoch") == kept and "train_loss" in h)
    meta = {"library_name": "tagtune", "pipeline_tag": "token-classification"}
    base = hub_id(config.model)
    if base:
        meta["base_model"] = base
    meta["tags"] = ["tagtune", "token-classification", "ner", *(["span-head"] if config.head == "span" else [])]
    if "dev" in epoch:
        dataset = dev_name(config)
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "token-classification", "name": "Token Classification"},
            "dataset": {"name": dataset, "type": dataset},
            "metrics": [{"type": key, "value": epoch["dev"][key], "name": f"dev {key}"}
                        for key in ("precision", "recall", "f1")]}]}]
    sections = [
        f"# {md(name)}",
        intro(config, base),
        labels_section(train, dev),
        training_section(config, history, kept, train, dev, precision),
        scores_section(config, epoch),
        *([score_calibration(calibration)] if calibration else []),
        usage_section(config),
    ]
    return front_matter(meta) + "\n" + MARKER + "\n\n" + "\n\n".join(sections) + "\n"


# -- sections ------------------------------------------------------------------------------------


def intro(config: TrainConfig, base: str | None) -> str:
    what = (f"a span tagger: it gives every stretch of up to {config.max_span_words} words a label or none, so its "
            "spans may overlap or nest" if config.head == "span" else
            f"a token tagger: it tags each word ({config.scheme} tags), so its spans never overlap")
    start = f"[{base}](https://huggingface.co/{base})" if base else f"`{md_code(config.model)}`"
    return f"An entity tagger fine-tuned from {start} with tagtune; {what}."


def labels_section(train: list[Example], dev: list[Example]) -> str:
    trained, scored = span_counts(train), span_counts(dev)
    rows = [f"| {md(label)} | {trained[label]:,} |" + (f" {scored[label]:,} |" if dev else "")
            for label in sorted({*trained, *scored})]
    head = "| label | training spans |" + (" dev spans |" if dev else "")
    rule = "|---|---:|" + ("---:|" if dev else "")
    return "\n".join(["## What it tags", "", head, rule, *rows])


def training_section(config: TrainConfig, history: list[dict], kept: int, train: list[Example],
                     dev: list[Example], precision: str) -> str:
    ran = max(h["epoch"] for h in history if "train_loss" in h)
    epochs = f"{ran} of {config.epochs}" + (" (stopped early: dev F1 stopped improving)" if ran < config.epochs
                                            else "")
    chosen = config.save == "best" and any(h.get("best") for h in history)
    kept_line = f"epoch {kept}'s model, " + ("the best by dev F1" if chosen else "the last epoch's")
    if config.head == "span":
        head = f"a span head over spans of up to {config.max_span_words} words"
    else:
        head = (f"a token head, {config.scheme} tags on "
                + ("every subword" if config.all_subwords else "the first subword of each word")
                + (", with a CRF (crf.json)" if config.crf else ""))
    lines = [
        "## How it was trained",
        "",
        f"- data: {len(train):,} training texts from `{md_code(Path(config.train).name)}`; "
        + (f"{len(dev):,} dev texts ({dev_name(config)})" if dev else "no dev set"),
        f"- head: {head}",
        f"- epochs: {epochs}; kept: {kept_line}",
        f"- precision: {'fp32' if precision == 'fp32' else 'bf16 mixed precision'}",
        *([f"- attention: {config.attention} (tagtune.json keeps it; transformers' token classifier runs the "
           "family's attention, so where that differs only tagtune and its ONNX export run this tagger as trained)"]
          if config.attention else []),
        f"- learning rate {config.lr:g}, windows of {config.max_length} tokens (stride {config.stride}), "
        f"seed {config.seed}",
        "",
        "The same run from the command line:",
        "",
        "```sh",
        command_line(config),
        "```",
    ]
    return "\n".join(lines)


def scores_section(config: TrainConfig, epoch: dict) -> str:
    if "dev" not in epoch:
        return ("## Dev scores\n\nThis run had no dev set, so it was not scored. Score it on annotated text with "
                f"`tagtune evaluate {md_code(shlex.quote(config.out))} FILE`.")
    scores, per_label = epoch["dev"], epoch.get("dev_per_label") or {}
    rows = [f"| {md(label)} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']:,} |"
            for label, row in sorted(per_label.items())]
    return "\n".join([
        "## Dev scores",
        "",
        f"Entity scores on {dev_name(config)} (a span counts when its start, end and label are exact), at the "
        f"kept epoch: precision {scores['precision']:.4f}, recall {scores['recall']:.4f}, F1 {scores['f1']:.4f} "
        f"(macro F1 {scores['macro_f1']:.4f}).",
        "",
        "| label | precision | recall | F1 | dev spans |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ])


def score_calibration(calibration: dict) -> str:
    """The card's section on the temperature that calibrates the span scores (fitted on dev)."""
    before, after = calibration["before"], calibration["after"]
    return "\n".join([
        "## Span scores",
        "",
        f"Each span's score is a probability, calibrated: the logits are divided by the temperature "
        f"{calibration['temperature']:.3f} (kept in tagtune.json), fitted on the dev predictions so that spans "
        f"scored about p are right about p of the time. Over those {before['spans']:,} dev spans "
        f"({before['right']:,} right):",
        "",
        "| span scores | expected calibration error | average precision | Brier score |",
        "|---|---:|---:|---:|",
        *(f"| {name} | {row['ece']:.4f} | {row['average_precision']:.4f} | {row['brier']:.4f} |"
          for name, row in (("the model's own", before), ("calibrated", after))),
    ])


def usage_section(config: TrainConfig) -> str:
    folder = config.out
    lines = [
        "## How to use it",
        "",
        "With tagtune (`pip install tagtune`), from this folder or from the Hub repo it is pushed to:",
        "",
        "```sh",
        f"echo \"Barack Obama visited Lisbon\" | tagtune predict {shlex.quote(folder)}",
        "```",
        "",
        "```python",
        "import tagtune",
        "",
        f"tagger = tagtune.Tagger.load({json.dumps(folder)})",
        "for span in tagger(\"Barack Obama visited Lisbon\"):",
        "    print(span.label, span.start, span.end, round(span.score, 4))",
        "```",
        "",
    ]
    if config.head == "span":
        lines += [
            "In transformers, `AutoModel.from_pretrained` loads the encoder alone (its hidden states); the span "
            "head that labels spans is in span_head.safetensors, which tagtune runs.",
        ]
        return "\n".join(lines)
    lines += [
        "In transformers, as a token classifier:",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f"ner = pipeline(\"token-classification\", model={json.dumps(folder)}, aggregation_strategy=\"first\")",
        "print(ner(\"Barack Obama visited Lisbon\"))",
        "```",
        "",
        "transformers runs the classifier alone, each token's most probable tag"
        + (", without the CRF in crf.json" if config.crf else "")
        + ("; its grouping reads BIO tags, so group this tagger's " f"{config.scheme} tags with tagtune"
           if config.scheme != "BIO" else "")
        + "; tagtune adds decoding within the tagging scheme, windows over long texts and span scores that are "
        "probabilities.",
    ]
    return "\n".join(lines)


# -- facts -----------------------------------------------------------------------------------------


def hub_id(model: str) -> str | None:
    """The Hub repo id of ``--model``: as given (without its revision) when it is no local
    folder, or read from an HF cache snapshot folder's path; None for any other local folder."""
    match = _CACHE_SNAPSHOT.search(Path(model).expanduser().as_posix())
    if match and Path(model).expanduser().is_dir():
        return f"{match[1]}/{match[2]}" if match[1] else match[2]
    if Path(model).expanduser().exists():
        return None
    try:
        parsed = parse_repo_id(model)
    except TagtuneError:  # an invalid revision: not a Hub id to name
        return None
    return parsed[0] if parsed else None


def dev_name(config: TrainConfig) -> str:
    """The dev set in words: its file's name, or the share of the training file held out."""
    if config.dev:
        return Path(config.dev).name
    return f"{config.dev_fraction * 100:g}% of {Path(config.train).name} held out"


def span_counts(examples: list[Example]) -> Counter:
    return Counter(span.label for ex in examples for span in ex.spans)


OPTION_FIELDS = ("model", "train", "dev", "dev_fraction", "out")
"""The fields the command line names first, in this order; the others follow when not default
(how a run was started, TrainConfig.RUN_FIELDS, is left out)."""


def command_line(config: TrainConfig) -> str:
    """``tagtune train`` with the options that give ``config``: the data and folders, then every
    setting that is not the default. (A ``patience`` of None, which no option gives, is left out.)"""
    values = asdict(config)
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    args = ["tagtune", "train"]
    rest = [f.name for f in fields(TrainConfig) if f.name not in OPTION_FIELDS + TrainConfig.RUN_FIELDS]
    for name in [*OPTION_FIELDS, *rest]:
        value = values[name]
        if value is None or name in rest and value == defaults.get(name):
            continue
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):  # the flags: --crf, --all-subwords; --no-bucket, --no-head-prior
            args.append(option if value else f"--no-{name.replace('_', '-')}")
        else:
            args += [option, str(value)]
    return " ".join(shlex.quote(a) for a in args)


# -- YAML and Markdown -----------------------------------------------------------------------------


def front_matter(meta: dict) -> str:
    """``meta`` as YAML between ``---`` lines, with the commented license line after its first
    keys."""
    lines = yaml_lines(meta, 0)
    at = next((i for i, line in enumerate(lines) if line.startswith("tags:")), len(lines))
    lines.insert(at, "# license: the license your base model and data allow, e.g. apache-2.0")
    return "---\n" + "\n".join(lines) + "\n---\n"


def yaml_lines(value, indent: int) -> list[str]:
    """Block-style YAML lines of a mapping or list (keys are plain identifiers or quoted)."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            key = key if _PLAIN_KEY.fullmatch(key) else yaml_scalar(key)
            if isinstance(item, (dict, list)) and item:
                lines.append(f"{pad}{key}:")
                lines += yaml_lines(item, indent + 2 if isinstance(item, dict) else indent)
            else:
                lines.append(f"{pad}{key}: {yaml_scalar(item)}")
        return lines
    for item in value:
        if isinstance(item, (dict, list)) and item:
            inner = yaml_lines(item, indent + 2)
            lines += [f"{pad}- {inner[0][indent + 2:]}", *inner[1:]]
        else:
            lines.append(f"{pad}- {yaml_scalar(item)}")
    return lines


def yaml_scalar(value) -> str:
    """One YAML value: null, true/false, an int, a float that reads back as the same float, an
    empty mapping or list, or a double-quoted string with every character YAML might misread
    escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return ".nan"
        if math.isinf(value):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a float
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, dict) and not value:
        return "{}"
    if isinstance(value, list) and not value:
        return "[]"
    text = str(value)
    if _PLAIN_VALUE.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    return '"' + "".join(_yaml_char(c) for c in text) + '"'


def _yaml_char(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    n = ord(c)
    if 0x20 <= n <= 0x7E or 0xA0 <= n <= 0xD7FF or 0xE000 <= n <= 0xFFFD and n != 0xFEFF or n >= 0x10000:
        return c  # printable in YAML's sense
    return f"\\u{n:04x}" if n <= 0xFFFF else f"\\U{n:08x}"


def md(text: str) -> str:
    """``text`` for Markdown prose or a table cell: its markup characters escaped."""
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", str(text)).replace("&", "&amp;").replace("\n", " ")


def md_code(text: str) -> str:
    """``text`` inside a code span: backticks and pipes (which end a table cell) replaced."""
    return str(text).replace("`", "'").replace("|", "/").replace("\n", " ")
