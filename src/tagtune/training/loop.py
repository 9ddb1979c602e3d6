"""train(): annotations in, a trained tagger folder out.

The loop reads top to bottom: read data, load the model with a head for the data's labels (or
the encoder alone and a span head beside it, see SpanModel; a span tagger's own span head when
its labels and width are the run's, see tagger_start), cut texts into labelled windows
(the span head's: windows with their entities, see span_training_windows), then per epoch:
batches from (seed, epoch), forward, loss, backward, clip, step, schedule, log; evaluate on dev;
keep the best model by entity F1; save a resumable checkpoint; stop early when dev F1 stops
improving. At the end, with a dev set, one temperature for the kept model's span scores is
fitted on its dev predictions (calibrate_scores) and kept in tagtune.json.

With ``report_to``, rank 0 sends the run to experiment trackers (tagtune.training.trackers):
its settings at the start, the loss and learning rate every ``log_every`` steps, each epoch's
dev scores and tokens/s, the final metrics; a tracker that fails is dropped, never the run.

Without a dev set (no ``dev`` file and no ``dev_fraction``) every text is trained on, there is
no per-epoch evaluation or early stopping, and the last epoch's model is kept. A dev set with
fewer than MIN_DEV_SPANS entity spans is scored every epoch but, its F1 being too coarse to
compare epochs by, picks nothing: all epochs run and the last epoch's model is kept.

The output folder, once the run is finished, holds the kept model (an HF token-classification
folder plus tagtune.json, and crf.json with ``crf``; with ``head="span"``, the encoder alone as
the family's base model class and the span head in span_head.safetensors),
``train_config.json``, ``metrics.jsonl``, ``report.html`` and ``tagtune-run.json``. That last file is what makes a folder a tagtune run (tagtune.store.runs): it is
written when the run starts, ``{"format": 1, "finished": false}``, and rewritten with
``"finished": true`` as the last step of the final save. A folder without it is never replaced,
even with ``overwrite``.

An unfinished run looks unfinished. Until the final save the folder holds no config.json or
model.safetensors. The checkpoint is ``checkpoint/state.pt`` (optimizer, schedule, every
process's random state, the history) and the weights of its epoch in
``checkpoint/model-epoch-N.safetensors``, written before the first step and after every epoch
but the last, whose final save follows at once; with ``save="best"`` the best epoch's weights
file stays beside it (one file when the checkpoint's epoch is the best, so the weights are
written once per epoch). Loading the folder as a tagger says it is unfinished. The final save
writes report.html, the model files (config.json last), fsyncs them, marks the run finished and
deletes checkpoint/; if it fails, the last epoch is checkpointed as the others were, where it
can be.

Where a run is trained, and how an existing ``out`` is replaced, is tagtune.training.runfolder's. Before
anything is written, everything that can be checked is: options, data, labels, the model and
tokenizer, that the folder can be made and written, and the free space (see check_room).

Every file is written whole (an fsynced temporary file renamed into place); a failed write (disk
full, read-only, no permission) is a one-line error naming the file, leaves the previous
checkpoint, and removes its temporary file. An error before the first epoch is saved removes
the folder the run made (the replacement sibling, or a new ``out`` with the parents it made), so
the corrected command can be run again as it is. Ctrl-C or SIGTERM once the first checkpoint is
written (before the first step), and any failure after the first epoch is saved, leave the run
resumable.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tagtune.data.align import (IGNORE, AlignStats, token_labels, unit_spans, units_of, windows_of, with_ignored,
                                with_specials)
from tagtune.data.batching import batch_indices, fill_batch, pack
from tagtune.data.candidates import SpanWindow, batch_candidates, candidate_labels, n_candidates, span_windows
from tagtune.data.formats import read_examples, split_dev, tag_line
from tagtune.data.metrics import calibration
from tagtune.data.schemes import OUTSIDE, entity_type, guess_scheme, tag_names
from tagtune.distributed import Group, device_for, from_environment, leave
from tagtune.errors import TagtuneError
from tagtune.files import atomic_write, write_error
from tagtune.inference.evaluate import calibrate, evaluate_examples
from tagtune.inference.load import check_vocab, head_of, load_span_head
from tagtune.inference.spantagger import SpanTagger
from tagtune.inference.tagger import Tagger
from tagtune.models.checkpoint import load_model, write_model_files, write_safetensors
from tagtune.models.config import free_memory, memory_plan, read_config
from tagtune.models.crf import ChainCRF
from tagtune.models.lora import (add_adapters, check_not_adapters, choose_targets, has_adapters, parameter_line,
                                 write_adapter_files)
from tagtune.models.precision import describe, use_bf16
from tagtune.models.spanhead import SpanHead, span_loss
from tagtune.progress import Progress, duration
from tagtune.spans import Example
from tagtune.store.hub import resolve
from tagtune.store.layout import SETTINGS_FILE, SPAN_HEAD_FILE, TaggerSettings, crf_files, settings_files
from tagtune.text.tokenizer import load_tokenizer
from tagtune.training.card import write_card
from tagtune.training.config import CHECKPOINT, MIN_DEV_SPANS, TrainConfig
from tagtune.training.optim import AdamW, LinearSchedule
from tagtune.training.report import write_report
from tagtune.training.runfolder import (RunFolder, check_destination, check_room, epoch_weights, find_resumable,
                                        load_epoch_weights, resumed_config, save_checkpoint)
from tagtune.training.trackers import Reporters, check_installed, epoch_metrics, final_metrics


# ---------------------------------------------------------------------------------------------
# Data


def read_data(config: TrainConfig) -> tuple[list[Example], list[Example]]:
    """(train, dev): dev from its file, or dev_fraction of train held out, or empty; with the
    span head, overlapping and nested spans are kept."""
    overlaps = config.head == "span"  # the span head learns overlapping and nested spans
    train = read_examples(config.train, config.format, config.keyword_label, overlaps=overlaps)
    if config.dev:
        dev = read_examples(config.dev, config.format, config.keyword_label, overlaps=overlaps)
    elif config.dev_fraction is not None:
        if len(train) < 2:
            raise TagtuneError(f"{config.train}: {len(train)} example; at least 2 are needed to hold out a dev set "
                               "(drop --dev-fraction to train on all of it)")
        train, dev = split_dev(train, config.dev_fraction, config.seed)
    else:
        dev = []
    return train, dev


def describe_data(config: TrainConfig, train: list[Example], dev: list[Example]) -> str:
    """One line on what is trained on and what the dev set is."""
    if not dev:
        return (f"training on all {len(train)} texts (no dev set: pass --dev FILE or --dev-fraction 0.1 for a dev "
                "curve and early stopping; the last epoch's model is kept)")
    if config.dev:
        return f"{len(train)} train / {len(dev)} dev texts (dev from {Path(config.dev).name})"
    return (f"{len(train)} train / {len(dev)} dev texts ({config.dev_fraction * 100:g}% of {Path(config.train).name} "
            f"held out as dev, seed {config.seed})")


def dev_too_small(config: TrainConfig, dev: list[Example]) -> str | None:
    """Why the dev set cannot pick the best epoch (too few spans), or None when it can."""
    spans = sum(len(ex.spans) for ex in dev)
    if not dev or spans >= MIN_DEV_SPANS:
        return None
    name = config.dev or "the held-out dev set"
    why = ("each span moves its F1 by several points" if config.epochs == 1 else
           f"they cannot tell the best epoch from noise, so all {config.epochs} epochs run and the last one's "
           "model is kept")
    return (f"{name}: only {plural(spans, 'entity span')} in {plural(len(dev), 'text')}, fewer than "
            f"{MIN_DEV_SPANS}: its scores are printed each epoch, but with so few {why}")


def small_dev_warning(config: TrainConfig, note: str) -> str | None:
    """The warning for a dev set too small to choose by (``note``, see dev_too_small), or None
    where it changes nothing the user asked for: ``--save last`` keeps the last epoch anyway."""
    if config.save == "last":
        return None
    return f"{note} (add dev data, or pass --save last to keep the last epoch without this warning)"


def plural(n: int, word: str) -> str:
    """``1 span``, ``2 spans``."""
    return f"{n} {word}{'s' if n != 1 else ''}"


TYPO_RARE, TYPO_COMMON = 2, 10
"""A label with at most TYPO_RARE spans one edit away from a label with at least TYPO_COMMON
is warned about as a likely typo (see label_typos)."""


def label_typos(examples: list[Example]) -> list[str]:
    """A warning for each entity label seen at most TYPO_RARE times that is one edit (or only
    case) away from a label seen at least TYPO_COMMON times: most likely a typo, which would be
    learned as a label of its own. It names the file and line of the label's first span (for
    CoNLL the line of its tag)."""
    counts = Counter(span.label for ex in examples for span in ex.spans)
    common = [label for label, n in counts.most_common() if n >= TYPO_COMMON]
    found = []
    for label, n in sorted(counts.items()):
        near = [c for c in common if c != label and (c.lower() == label.lower() or one_edit(c, label))]
        if n > TYPO_RARE or not near:
            continue
        first = min((ex for ex in examples if any(span.label == label for span in ex.spans)), key=_line)
        path, _, line = first.source.rpartition(":")
        where = f"{path}:{tag_line(path, int(line), label)}" if line.isdigit() else first.source
        found.append(f"{where}: label {label} appears {'once' if n == 1 else 'twice'}; did you mean {near[0]} "
                     f"({counts[near[0]]} times)? It becomes a label of its own")
    return found


def _line(example: Example) -> int:
    line = example.source.rpartition(":")[2]
    return int(line) if line.isdigit() else 0


def one_edit(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are one insertion, deletion or substitution apart (Levenshtein 1)."""
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    return a[i + (len(a) == len(b)):] == b[i + 1:]


def label_set(config: TrainConfig, train: list[Example], dev: list[Example]) -> list[str]:
    """The labels the head learns: the token head's tags of the scheme, or the span head's
    entity labels, sorted (its label id i + 1 is the i-th, 0 is none)."""
    types = sorted({s.label for ex in train + dev for s in ex.spans})
    if not types:
        raise TagtuneError(f"{config.train}: no annotated spans, so nothing to learn")
    return types if config.head == "span" else tag_names(types, config.scheme)


def training_windows(examples, tokenizer, label2id, settings: TaggerSettings):
    """(sequences, labels, stats, edges): every window of every text, start and end tokens
    added; ``edges`` tells for each window whether it begins and whether it ends its text."""
    sequences, labels, stats, edges = [], [], AlignStats(), []
    encodings = tokenizer.encode_batch([ex.text for ex in examples])
    for ex, enc in zip(examples, encodings):
        if not len(enc):
            continue
        token_tags, text_stats = token_labels(ex.spans, enc, label2id, settings.scheme,
                                              settings.all_subwords, ex.source)
        stats.add(text_stats)
        for a, b in windows_of(len(enc), settings.max_length, settings.stride, tokenizer.specials):
            sequences.append(with_specials(enc.ids[a:b], tokenizer.cls_id, tokenizer.sep_id))
            labels.append(with_ignored(token_tags[a:b], tokenizer.cls_id, tokenizer.sep_id))
            edges.append((a == 0, b == len(enc)))
    return sequences, labels, stats, edges


@dataclass
class SpanData:
    """The span head's training windows: each with its packed sequence's tokens, its units and
    the entities whole in it, and what could not be learnt."""

    sequences: list[list[int]]
    """Each window's tokens, start and end tokens added."""
    windows: list[SpanWindow]
    stats: AlignStats
    too_wide: int = 0
    """Entities wider than max_span_words units: no candidate holds them."""
    cut: int = 0
    """Entities no window holds whole (cut by every window's edge)."""
    examples: tuple[str, str] = ("", "")
    """The source of a too-wide and of a cut entity, for the warning."""
    counts: list[int] = field(default_factory=list)
    """Candidates of each label id over all windows (none first): the head's prior."""

    def warning(self, settings: TaggerSettings) -> str | None:
        """One line on the entities that are not learnt, or None when every one is."""
        parts = []
        for count, what, source, remedy in (
                (self.too_wide, f"wider than --max-span-words {settings.max_span_words}", self.examples[0],
                 "a larger --max-span-words learns them"),
                (self.cut, "longer than a window holds whole", self.examples[1], "a larger --max-length learns them")):
            if count:
                where = f"e.g. {source}; " if source else ""
                parts.append(f"{count} {'entity' if count == 1 else 'entities'} {what} ({where}{remedy})")
        return f"not learnt: {'; '.join(parts)}" if parts else None


def span_training_windows(examples: list[Example], tokenizer, labels: list[str], settings: TaggerSettings) -> SpanData:
    """The span head's windows of every text (span_windows): those with at least one whole unit,
    with the entities whole in each (label id i + 1 for ``labels[i]``); entities wider than
    ``settings.max_span_words`` units and entities no window holds are counted."""
    ids = {label: i + 1 for i, label in enumerate(labels)}
    data = SpanData([], [], AlignStats())
    counts = np.zeros(len(labels) + 1, dtype=np.int64)
    wide_example, cut_example = "", ""
    encodings = tokenizer.encode_batch([ex.text for ex in examples])
    for t, (ex, enc) in enumerate(zip(examples, encodings)):
        if not len(enc):
            continue
        units = units_of(enc)
        found, text_stats = unit_spans(ex.spans, units, ex.source)
        data.stats.add(text_stats)
        entities = [(i, j, ids[label]) for i, j, label in found if j - i <= settings.max_span_words]
        if len(entities) < len(found):
            data.too_wide += len(found) - len(entities)
            wide_example = wide_example or ex.source
        windows, cut = span_windows(units, len(enc), settings.max_length, settings.stride, t, entities,
                                    tokenizer.specials)
        if cut:
            data.cut += cut
            cut_example = cut_example or ex.source
        for window in windows:
            if window.firsts:  # a window without a whole unit has no candidate
                found = candidate_labels(len(window.firsts), settings.max_span_words, window.entities, ex.source)
                counts += np.bincount(found.labels, minlength=len(labels) + 1)
                a, b = window.tokens
                data.sequences.append(with_specials(enc.ids[a:b], tokenizer.cls_id, tokenizer.sep_id))
                data.windows.append(window)
    data.examples = (wide_example, cut_example)
    data.counts = counts.tolist()
    return data


def new_span_head(model, labels: list[str], max_width: int, counts: list[int] | None) -> SpanHead:
    """A new span head for ``labels`` over ``model``'s hidden states, initialised as HF
    initialises a head (with the model's initializer_range and head dropout); with ``counts``
    (candidates per label id), its bias starts at their log frequencies (SpanHead.init_bias)."""
    head = SpanHead(model.config.hidden_size, len(labels) + 1, max_width, dropout=model.config.head_dropout,
                    initializer_range=model.config.initializer_range)
    if counts is not None:
        head.init_bias(counts)
    return head


class SpanModel(torch.nn.Module):
    """The encoder and the span head as one module for the forward pass (and for
    DistributedDataParallel, which then averages both their gradients)."""

    def __init__(self, model: torch.nn.Module, head: SpanHead) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids, cu_seqlens, max_seqlen, start_token, end_token, width) -> torch.Tensor:
        """A packed batch and its candidates (see SpanHead.forward) -> logits (C, L + 1), fp32."""
        hidden = self.model.hidden_states(input_ids, cu_seqlens, max_seqlen)  # (T, H)
        return self.head(hidden, start_token, end_token, width)


def label_prior(labels: list[list[int]], num_labels: int) -> torch.Tensor:
    """Log frequencies of the labels in the training windows (add-one smoothed).

    A new head starts with this as its bias (weights stay HF's normal(0, 0.02)), so its first
    predictions already follow the label distribution: the first steps do not spend large
    gradients teaching the encoder that most tokens are O, and results depend much less on the
    random draw of the head's weights (on WNUT-2016 with MiniLM, test F1 over seeds went from a
    spread of 0.13-0.36 to ~0.45).
    """
    counts = torch.ones(num_labels)
    flat = torch.tensor([x for seq in labels for x in seq if x != IGNORE], dtype=torch.long)
    counts += torch.bincount(flat, minlength=num_labels)[:num_labels].float()
    return (counts / counts.sum()).log()


# ---------------------------------------------------------------------------------------------
# Optimisation


ROW_GRADIENTS_MIN = 1 << 20
"""Embedding tables of at least this many values keep their gradients by rows on the CPU
(AdamW.keep_row_gradients): a vocabulary's, not the positions'."""


def make_optimizer(model, config: TrainConfig, beside: torch.nn.Module | None = None,
                   row_gradients: bool = False) -> AdamW:
    """AdamW; weight decay on matrices only, never on biases and LayerNorm weights. The
    parameters of a CRF or span head ``beside`` the model are grouped the same way (a CRF's
    transition matrix with the decayed weights, its start and end vectors with the biases).
    Frozen parameters (the base weights under LoRA adapters) are left out by AdamW.
    With ``row_gradients`` (one process on the CPU), large embedding tables keep their
    gradients by rows."""
    decay, no_decay = [], []
    named = [*model.named_parameters(), *(beside.named_parameters(prefix="beside") if beside is not None else [])]
    for name, p in named:
        (no_decay if p.dim() < 2 or "LayerNorm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = AdamW(groups, lr=config.lr)
    for m in model.modules() if row_gradients else ():
        if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad and m.weight.numel() >= ROW_GRADIENTS_MIN:
            optimizer.keep_row_gradients(m)
    return optimizer


def make_schedule(optimizer: AdamW, config: TrainConfig, total_steps: int) -> LinearSchedule:
    """Linear warm-up (a fraction of the steps, or a number of them) then linear decay to zero."""
    warmup = math.ceil(config.warmup * total_steps) if config.warmup < 1 else int(config.warmup)
    return LinearSchedule(optimizer, config.lr, warmup, total_steps)


def precision_note(config: TrainConfig, device: torch.device, mode: str) -> str:
    """The precision ``mode`` (see precision) in words, with the reason it was chosen."""
    return describe(config.bf16, device, mode != "fp32", "bf16 mixed precision")


def precision(config: TrainConfig, device: torch.device) -> str:
    """How training multiplies: "fp32"; "autocast" (CUDA bf16 autocast); or "bf16" (CPU: the
    encoder's activations and matrix products in bf16 against bf16 copies of fp32 master
    weights, see model.LowPrecisionLinear). "auto" decides as tagtune.models.precision.use_bf16;
    devices other than CUDA and the CPU take autocast when bf16 is forced."""
    if not use_bf16(config.bf16, device):
        return "fp32"
    return "bf16" if device.type == "cpu" else "autocast"


# ---------------------------------------------------------------------------------------------
# The loop


def train(config: TrainConfig) -> dict:
    """Train a tagger; returns where the model went, the kept epoch and its train loss, and that
    epoch's dev scores (``precision``, ``recall``, ``f1``, ``macro_f1``, ``per_label``; None
    without a dev set).

    Under torchrun, every process runs this with the same config: each takes its share of every
    batch (the batches, the learning-rate schedule and the loss are those of one process with
    the same settings), gradients are averaged by DistributedDataParallel, dev texts are split
    among the processes and their spans gathered, and only rank 0 writes files.

    An error before the first epoch is saved removes the folder the run made; Ctrl-C or SIGTERM
    once the first checkpoint is written, and any failure after the first epoch is saved, leave
    the run resumable, and the message says how to continue it.
    """
    group = from_environment()
    folder = RunFolder(config.out)
    try:
        return _train(config, group, folder)
    except BaseException as e:
        note = folder.give_up(isinstance(e, KeyboardInterrupt)) if group.main else None
        if note and isinstance(e, TagtuneError):
            raise TagtuneError(f"{e}; {note}") from None
        if note and isinstance(e, KeyboardInterrupt):
            e.args = (note,)
        raise
    finally:
        leave(group)


def _train(config: TrainConfig, group: Group, folder: RunFolder) -> dict:
    """Set the run up, train its epochs, then the final save."""
    run = setup(config, group, folder)
    result = None
    try:
        try:
            run_epochs(run)
        finally:
            run.close_log()
        try:
            result = finish(run)
        except BaseException:
            save_last_epoch(run)
            raise
    finally:  # the trackers' runs end finished, or stopped
        run.reporters.finish(final_metrics(result) if result else None, run.state["step"])
    return result


@dataclass(eq=False)
class Run:
    """A run set up to train: what the loop and the final save work with."""

    config: TrainConfig
    group: Group
    folder: RunFolder
    device: torch.device
    model: torch.nn.Module
    tokenizer: object
    settings: TaggerSettings
    labels: list[str]
    train_examples: list[Example]
    dev_examples: list[Example]
    data_line: str
    small_dev: str | None
    choose: bool
    """Dev F1 picks the kept epoch and stops the run early."""
    keeps_best: bool
    """The best epoch's weights wait in checkpoint/ (``--save best`` with a dev set that chooses)."""
    sequences: list[list[int]]
    seq_labels: list[list[int]]
    lengths: list[int]
    labelled: list[int]
    """Labelled tokens of each window: a batch's loss is the mean over them."""
    edges: list[tuple[bool, bool]]
    """Whether each window begins and whether it ends its text (where a CRF's chain takes its
    start and end scores)."""
    batch_size: int | None
    max_tokens: int | None
    batches_per_epoch: int
    optimizer: AdamW
    schedule: LinearSchedule
    mode: str
    """The precision mode, see precision."""
    state: dict
    span_windows: list[SpanWindow] | None = None
    """The span head's training windows, one per sequence (their units and entities)."""
    span_head: SpanHead | None = None
    """The span head (``--head span``), beside the model, which then has no classifier."""
    crf: ChainCRF | None = None
    """The CRF on the classifier (``--crf``), outside the model so that its weights stay a plain
    token classifier's."""
    start: str | None = None
    """Where the weights start, when not from a base checkpoint: a trained tagger, or the
    checkpoint of the run resumed (see tagger_start, resumed_from)."""
    unsaved: bool = False
    """The last epoch is trained but not checkpointed: the final save follows (see finish)."""
    tagger: Tagger | SpanTagger | None = None
    ddp: torch.nn.Module | None = None
    """The model as the forward pass calls it: DistributedDataParallel under torchrun."""
    log: object = None
    reporters: Reporters = field(default_factory=Reporters)
    """The experiment trackers the run reports to (``--report-to``; rank 0's, none elsewhere)."""
    memory: str = ""
    """The memory plan's line (see check_run_memory)."""
    pooler: dict | None = None
    """The base checkpoint's pooler weights, written unchanged beside a span tagger's encoder
    (see write_model_files)."""

    @property
    def work(self) -> Path:
        return self.folder.work

    @property
    def show(self) -> bool:
        return self.config.progress and self.group.main

    @property
    def beside(self) -> torch.nn.Module | None:
        """What is trained beside the model: the CRF or the span head, or None."""
        return self.crf if self.crf is not None else self.span_head

    def parameters(self) -> list[torch.nn.Parameter]:
        """Everything the optimizer trains: the model's parameters and the CRF's or span head's."""
        return [*self.model.parameters(), *(self.beside.parameters() if self.beside is not None else [])]

    @property
    def amp(self) -> torch.dtype | None:
        return torch.bfloat16 if self.mode == "autocast" else None

    def say(self, message: str) -> None:
        if self.show:
            print(message, file=sys.stderr)

    def record(self, entry: dict) -> None:
        """Add an entry to the history and to metrics.jsonl."""
        self.state["history"].append(entry)
        if self.log is not None:
            try:
                self.log.write(json.dumps(entry) + "\n")
                self.log.flush()
            except OSError as e:
                raise write_error(self.work / "metrics.jsonl", e) from None

    def close_log(self) -> None:
        if self.log is not None:
            with contextlib.suppress(OSError):  # a failed write was reported where it happened
                self.log.close()


# -- setup: options, data, model, folder, optimizer, resumed state ------------------------------


def setup(config: TrainConfig, group: Group, folder: RunFolder) -> Run:
    """Everything before the first step. Checks all that can be checked before anything is
    written, makes the folder (or finds the run to resume), and restores or writes the first
    checkpoint."""
    config = run_config(config, group, folder)
    group.on_main(check_installed, config.report_to)  # a tracker's library is missing: stop before anything
    train_examples, dev_examples = read_data(config)  # stops on bad input before anything is written
    labels = label_set(config, train_examples, dev_examples)
    if group.main:  # the dev texts held out of the training file count with it
        for typo in label_typos(train_examples + (dev_examples if config.dev_fraction is not None else [])):
            warnings.warn(typo, stacklevel=3)
    small_dev = dev_too_small(config, dev_examples)
    choose = bool(dev_examples) and small_dev is None
    keeps_best = choose and config.save == "best"
    device = device_for(group, config.device)
    settings = config.settings()

    base = load_base_model(config, labels, device)
    model, tokenizer, start = base.model, base.tokenizer, base.start
    attention = model.config.attention  # kept in tagtune.json where it is not the family's
    settings = replace(settings, attention=None if attention == model.config.default_attention else attention)
    if config.lora:  # the base frozen, adapters on its layers (the names checked against its family)
        add_adapters(model, config.lora, config.lora_scale_alpha, config.lora_dropout,
                     choose_targets(model.config.model_type, config.lora_targets))
    span = None
    if config.head == "span":
        settings = replace(settings, labels=labels)
        span = span_training_windows(train_examples, tokenizer, labels, settings)
        sequences, seq_labels, stats, edges = span.sequences, [], span.stats, []
        unlearnt = span.warning(settings)
        if unlearnt and group.main:
            warnings.warn(f"{config.train}: {unlearnt}", stacklevel=3)
    else:
        sequences, seq_labels, stats, edges = training_windows(train_examples, tokenizer, model.config.label2id,
                                                               settings)
    if stats.message() and group.main:
        warnings.warn(f"{config.train}: {stats.message()}", stacklevel=3)
    if not sequences:
        raise TagtuneError(f"{config.train}: no text with any token to train on")
    warning = small_dev and small_dev_warning(config, small_dev)
    if warning and group.main:
        warnings.warn(warning, stacklevel=3)
    if not config.resume:  # data and model are good: check the place, then make the folder
        group.on_main(check_room, config, model, keeps_best)
        folder.work = Path(group.on_main(folder.make, config))

    lengths = [len(s) for s in sequences]
    if span is not None:  # a batch's loss is the mean over its candidates
        labelled = [n_candidates(len(w.firsts), settings.max_span_words) for w in span.windows]
        span_head = base.span_head or new_span_head(model, labels, settings.max_span_words,
                                                    span.counts if config.head_prior else None)
        span_head.to(device)
    else:
        labelled = [sum(t != IGNORE for t in labs) for labs in seq_labels]
        span_head = None
    if config.head_prior and base.new_head:
        with torch.no_grad():
            model.classifier.bias.copy_(label_prior(seq_labels, len(labels)).to(device))
    if group.active:
        torch.manual_seed(config.seed * 1009 + group.rank)  # each process its own dropout masks
    batch_size, max_tokens, batches_per_epoch, largest = batch_plan(config, lengths)
    total_steps = config.epochs * math.ceil(batches_per_epoch / config.accumulation)
    crf = ChainCRF(labels, config.scheme).to(device) if config.crf else None
    beside = crf if crf is not None else span_head
    memory = check_run_memory(model, beside, config, device, largest)
    optimizer = make_optimizer(model, config, beside, row_gradients=device.type == "cpu" and not group.active)
    schedule = make_schedule(optimizer, config, total_steps)
    mode = group.on_main(precision, config, device)  # measured on one process, the same for all
    state = start_state(config, group, folder, model, optimizer, schedule, device, beside)
    if config.resume:
        start = resumed_from(folder.name, state, config.epochs)
    run = Run(config=config, group=group, folder=folder, device=device, model=model, tokenizer=tokenizer,
              settings=settings, labels=labels, train_examples=train_examples, dev_examples=dev_examples,
              data_line=describe_data(config, train_examples, dev_examples), small_dev=small_dev,
              choose=choose, keeps_best=keeps_best, sequences=sequences, seq_labels=seq_labels, lengths=lengths,
              labelled=labelled, edges=edges, batch_size=batch_size, max_tokens=max_tokens,
              batches_per_epoch=batches_per_epoch, optimizer=optimizer, schedule=schedule, mode=mode, state=state,
              span_windows=span.windows if span is not None else None, span_head=span_head, crf=crf,
              start=start, pooler=base.pooler, memory=memory)
    if group.main:
        atomic_write(run.work / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in run.state["history"]))
        run.log = open(run.work / "metrics.jsonl", "a", encoding="utf-8")
    describe_run(run)
    if span_head is not None:
        run.tagger = SpanTagger(model, span_head, tokenizer, labels, settings.max_span_words, settings.max_length,
                                settings.stride, device)
        run.ddp = SpanModel(model, span_head)
    else:
        run.tagger = Tagger(model, tokenizer, settings, device, transitions=crf.transitions() if crf else None)
        run.ddp = model
    if group.active:
        run.ddp = torch.nn.parallel.DistributedDataParallel(
            run.ddp, device_ids=[device.index] if device.type == "cuda" else None)
    if config.report_to:
        start_reporting(run)
    return run


def start_reporting(run: Run) -> None:
    """Start a run in each tracker of ``report_to`` (rank 0 only), with the run's settings as
    parameters and the output folder's name as its name, and say where each logs."""
    config = run.config
    run.reporters = Reporters(config.report_to if run.group.main else [])
    name = Path(config.out).resolve().name
    places = run.group.on_main(run.reporters.start, asdict(config), name)
    run.say(f"tagtune: reporting to {'; '.join(places)}")


def run_config(config: TrainConfig, group: Group, folder: RunFolder) -> TrainConfig:
    """The config to train with, normalised and checked: with ``resume``, the run's saved one
    (found, and given values checked against it); else ``config``, once ``out`` may be trained
    into."""
    if config.resume:
        folder.work = Path(group.on_main(find_resumable, config))
        folder.keep()
        config = resumed_config(config, folder.work)
    config = config.normalised()
    config.check()
    if not config.resume:
        group.on_main(check_destination, config)
    return config


@dataclass
class Base:
    """The model a run starts from (see load_base_model)."""

    model: torch.nn.Module
    tokenizer: object
    new_head: bool
    """The token head was made here rather than loaded."""
    start: str | None
    """A line on the trained tagger the run continues from, or None (see tagger_start)."""
    pooler: dict
    """The checkpoint's pooler weights (LoadReport.pooler)."""
    span_head: SpanHead | None = None
    """The span head of the span tagger the run continues from, when it fits (see tagger_start)."""


def load_base_model(config: TrainConfig, labels: list[str], device: torch.device) -> Base:
    """The base model with a head for ``labels`` (the encoder alone for the span head, and the
    span head of a span tagger that fits), on ``device``, and its tokenizer."""
    torch.manual_seed(config.seed)  # the new head's initialisation, the same in every process
    span = config.head == "span"
    check_not_adapters(resolve(config.model), config.model)
    model, report = load_model(config.model, labels=[] if span else labels, train_on=device,
                               attention=config.attention)
    if span:  # the encoder alone: a checkpoint's token head and head transform are left out
        model.head = None
    model.config.check_window(config.max_length, "--max-length")
    tokenizer = load_tokenizer(report.directory)
    check_vocab(tokenizer, model.config, report.directory)
    model.encoder.checkpointing = config.checkpointing
    model.to(device)
    start, keeps_span_head = (None, False) if config.resume else tagger_start(config, report.directory, labels,
                                                                               report.new_head)
    head = trained_span_head(report.directory, model, labels, config.max_span_words) if keeps_span_head else None
    return Base(model, tokenizer, report.new_head, start, report.pooler, head)


def trained_span_head(directory: Path, model, labels: list[str], max_width: int) -> SpanHead:
    """The span head of the span tagger ``directory``, to train on: its weights in a head made as
    new_span_head makes one (with the model's head dropout)."""
    head = new_span_head(model, labels, max_width, None)
    try:
        head.load_state_dict(load_span_head(directory).state_dict())
    except RuntimeError:
        raise TagtuneError(f"{directory / SPAN_HEAD_FILE}: its shapes do not fit the {len(labels)} labels and spans "
                           f"of up to {max_width} words its tagtune.json names") from None
    return head


def tagger_start(config: TrainConfig, directory: Path, labels: list[str], new_head: bool) -> tuple[str | None, bool]:
    """When --model is a trained tagger (it has tagtune.json): a line saying that training
    continues from its weights, with its head when this run's head, labels (and for the span
    head, span width) are its own, else with a new head and why; and how to start from its base
    model instead; and whether the run trains on from a span tagger's span head. (None, False)
    for any other checkpoint."""
    if not (directory / SETTINGS_FILE).is_file():
        return None, False
    span = head_of(directory) == "span"
    settings = TaggerSettings.read(directory, []) if span else None
    own_types = settings.labels if span else entity_types(read_config(directory).labels)
    types = labels if config.head == "span" else entity_types(labels)
    kind = "span tagger" if span else "tagger"
    start = f"{config.model} is a trained {kind} ({listing(own_types)}): training continues from"
    keeps = False
    if span and config.head == "span":
        why = misfit(own_types, types)
        if not why and settings.max_span_words != config.max_span_words:
            why = (f"it takes spans of up to {settings.max_span_words} words, this run up to "
                   f"{config.max_span_words}; --max-span-words {settings.max_span_words} keeps it")
        keeps = not why
        start += (" its encoder's weights and span head" if keeps else
                  f" its encoder's weights with a new span head, as its span head does not fit ({why})")
    elif span:
        start += (" its encoder's weights with a new token head, as its head is a span head (pass --head span to "
                  "train a span head)")
    elif config.head == "span":
        start += " its encoder's weights with a new span head"
    elif not new_head:
        start += " its weights and head"
    else:
        own = read_config(directory).labels
        why = misfit(own_types, types) or f"its tags are {guess_scheme(own)}, this run's {config.scheme}"
        start += f" its encoder's weights with a new head, as its head does not fit ({why})"
    base = base_model_of(directory)
    return start + (f"; to start fresh from its base model instead, pass --model {base}" if base else
                    "; to start fresh, pass its base model as --model (it is not recorded in the tagger)"), keeps


def misfit(own: list[str], types: list[str]) -> str:
    """How a tagger's entity labels ``own`` differ from this run's ``types``; "" when they are the same."""
    added, lacking = [t for t in types if t not in own], [t for t in own if t not in types]
    return "; ".join([*([f"this data has labels it lacks: {listing(added)}"] if added else []),
                      *([f"it has labels this data lacks: {listing(lacking)}"] if lacking else [])])


def listing(names: list[str], limit: int = 8) -> str:
    """``a, b, c``; past ``limit`` names, the first of them and how many more."""
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "none"


def entity_types(tags: list[str]) -> list[str]:
    """The entity types of ``tags`` (``B-PER``, ``I-PER`` -> ``PER``), in order of first appearance."""
    return list(dict.fromkeys(entity_type(tag) for tag in tags if tag != OUTSIDE))


def base_model_of(directory: Path) -> str | None:
    """The --model a tagger folder was trained from, as its train_config.json records it."""
    try:
        return json.loads((directory / "train_config.json").read_text(encoding="utf-8")).get("model") or None
    except (OSError, ValueError, AttributeError):
        return None


def resumed_from(name: str, state: dict, epochs: int) -> str:
    """Where a resumed run starts: at the end of its checkpoint's epoch, or at the start."""
    done = state["epoch"]
    if not done:
        return f"resuming {name} from the start of epoch 1 of {epochs}"
    then = "; the final save follows" if state["stopped"] or done == epochs else ""
    return f"resuming {name} from the end of epoch {done} of {epochs} (step {state['step']}){then}"


def batch_plan(config: TrainConfig, lengths: list[int]) -> tuple[int | None, int | None, int, int]:
    """(batch_size, max_tokens, batches per epoch, tokens of the largest batch). Bucketing turns a
    window count into the token budget of that many mean-length windows."""
    batch_size, max_tokens = config.batch_size, config.max_tokens
    if config.bucket and max_tokens is None:
        batch_size, max_tokens = None, max(1, round(config.batch_size * sum(lengths) / len(lengths)))
    batches = batch_indices(lengths, batch_size, max_tokens, config.seed, 0, config.bucket)
    return batch_size, max_tokens, len(batches), max(sum(lengths[i] for i in b) for b in batches)


def check_run_memory(model, beside: torch.nn.Module | None, config: TrainConfig, device: torch.device,
                     tokens: int) -> str:
    """The memory plan's line (weights, gradients and AdamW state of what is trained, activations
    at the largest batch of ``tokens``, the memory free on ``device``); a one-line error when the
    run needs more than is free."""
    parameters = [*model.parameters(), *(beside.parameters() if beside is not None else [])]
    plan = memory_plan(model.config, sum(p.numel() for p in parameters),
                       sum(p.numel() for p in parameters if p.requires_grad), tokens, config.checkpointing)
    free = free_memory(device)
    if free is not None and plan.total > free[0]:
        ways = [way for way, open_ in (("--lora 16", not config.lora), ("--checkpointing", not config.checkpointing),
                                       ("a smaller --batch-size or --max-tokens", True)) if open_]
        raise TagtuneError(f"training needs more memory than is free on {device} ({plan.line(free)}); "
                           f"try {', '.join(ways[:-1]) + ' or ' if len(ways) > 1 else ''}{ways[-1]}")
    return plan.line(free)


def start_state(config: TrainConfig, group: Group, folder: RunFolder, model, optimizer: AdamW,
                schedule: LinearSchedule, device: torch.device, beside: torch.nn.Module | None = None) -> dict:
    """The loop's state (epoch, step, best F1 so far, history): restored with the weights,
    optimizer, schedule and random streams from the checkpoint when resuming, else new and
    written as the first checkpoint, before the first step, so that a run stopped in its first
    epoch resumes."""
    if not config.resume:
        state = {"epoch": 0, "step": 0, "best_f1": -1.0, "best_epoch": 0, "bad_epochs": 0, "stopped": False,
                 "history": []}
        save_checkpoint(folder.work, model, optimizer, schedule, state, device, group, beside)
        folder.checkpointed()
        return state
    saved = torch.load(folder.work / CHECKPOINT, map_location="cpu", weights_only=True)
    weights = epoch_weights(folder.work, saved["state"]["epoch"])
    if not weights.is_file():
        raise TagtuneError(f"{weights}: missing, but the checkpoint needs it; the run cannot be resumed")
    load_epoch_weights(weights, model, beside, device)
    optimizer.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["schedule"])
    rngs = saved.get("rngs") or [saved["rng"]]
    if len(rngs) == group.world:  # the same number of processes: continue every random stream
        torch.set_rng_state(rngs[group.rank])
    if device.type == "cuda" and saved.get("cuda_rngs") and len(saved["cuda_rngs"]) == group.world:
        torch.cuda.set_rng_state(saved["cuda_rngs"][group.rank], device)
    return {"stopped": False, **saved["state"]}


def describe_run(run: Run) -> None:
    """Say what is trained on, and how: windows, tags, epochs, batches, device, precision."""
    config, epochs, batches = run.config, run.config.epochs, run.batches_per_epoch
    if run.start:
        run.say(f"tagtune: {run.start}")
    run.say(f"tagtune: {run.data_line}")
    if config.lora:
        run.say(f"tagtune: {parameter_line(run.model, run.beside, config.lora)}")
    what = (f"{len(run.labels)} labels with a span head of up to {config.max_span_words} words"
            if run.span_head is not None else f"{len(run.labels)} tags" + (" with a CRF" if config.crf else ""))
    run.say(f"tagtune: {len(run.sequences)} windows, {what}" + f", {epochs} epoch{'s' * (epochs > 1)} x "
            f"{batches} batch{'es' * (batches > 1)} "
            + (f"of up to {run.max_tokens} tokens" if run.max_tokens else f"of {run.batch_size} windows")
            + (" (length-bucketed)" if config.bucket else "")
            + f", on {run.device}, {precision_note(config, run.device, run.mode)}"
            + (f", {run.group.world} processes" if run.group.active else ""))
    run.say(f"tagtune: memory: {run.memory}")


# -- the loop: per epoch, train on every batch, then evaluate, keep the best and save -----------


def run_epochs(run: Run) -> None:
    """Train epoch after epoch, from the checkpoint's epoch; each is evaluated on dev and saved.
    An early stop ends the loop (a run resumed after one goes straight to the final save)."""
    state = run.state
    run_start, first_epoch = time.perf_counter(), state["epoch"]
    last_epoch = state["epoch"] if state["stopped"] else run.config.epochs
    for epoch in range(state["epoch"], last_epoch):
        entry = train_epoch(run, epoch)
        line, stop = evaluate_and_save(run, epoch, entry)
        left = run.config.epochs - state["epoch"]
        if left and not stop:
            per_epoch = (time.perf_counter() - run_start) / (state["epoch"] - first_epoch)
            line += f"  ({left} epoch{'s' if left > 1 else ''} left, eta {duration(left * per_epoch)})"
        run.say(line)
        if stop:
            run.say(f"tagtune: no better dev F1 for {run.config.patience} epochs; stopping early")
            break


def train_epoch(run: Run, epoch: int) -> dict:
    """One pass over the batches of ``epoch``; returns the epoch's metrics entry (loss, tokens,
    seconds). Leaves the model's weights in fp32."""
    config, model, state = run.config, run.model, run.state
    model.train()
    if run.mode == "bf16":
        model.use_low_precision(torch.bfloat16)
    batches = batch_indices(run.lengths, run.batch_size, run.max_tokens, config.seed, epoch, config.bucket)
    epoch_start, epoch_tokens, loss_sum, loss_count = time.perf_counter(), 0, 0.0, 0
    bar = Progress(len(batches), f"epoch {epoch + 1}/{config.epochs}", "batches", enabled=run.show)
    for b, indices in enumerate(batches):
        stepping = (b + 1) % config.accumulation == 0 or b + 1 == len(batches)
        loss = forward_backward(run, indices, stepping)
        epoch_tokens += sum(run.lengths[i] for i in indices)
        loss_sum += run.group.sum([loss.item() / run.group.world], run.device)[0] if run.group.active else loss.item()
        loss_count += 1
        if stepping:
            optimizer_step(run)
            loss_now, lr_now = round(loss_sum / loss_count, 5), run.schedule.get_last_lr()[0]
            if state["step"] % 10 == 0:
                run.record({"step": state["step"], "epoch": epoch + 1, "loss": loss_now, "lr": lr_now})
            if state["step"] % config.log_every == 0:
                run.reporters.log({"train/loss": loss_now, "train/lr": lr_now}, state["step"])
        seconds = time.perf_counter() - epoch_start
        bar.update(1, loss=loss_sum / loss_count, **{"tok/s": f"{epoch_tokens / seconds:,.0f}"})
    bar.close()
    train_seconds = time.perf_counter() - epoch_start
    train_loss = loss_sum / max(1, loss_count)
    model.use_low_precision(None)  # evaluate and save the fp32 weights
    return {"epoch": epoch + 1, "step": state["step"], "train_loss": round(train_loss, 5),
            "train_tokens": epoch_tokens, "train_seconds": round(train_seconds, 2),
            "tokens_per_second": round(epoch_tokens / train_seconds, 1)}


CANDIDATE_BUCKET = 1024
"""A training batch's candidates are padded to a multiple of this many (padded_candidates).
Batches hold ever-different numbers of candidates, and on the CPU the holes their tensors left
in the C heap grew the process by a few hundred MB over an epoch: an fp32 MiniLM epoch of
WNUT-2016 with the span head reached 1,436 MB resident, and 1,600 MB at the dev evaluation after
it, against the token head's 1,074 MB. Padded, the sizes repeat and the holes are reused: 1,167
and 1,236 MB, at the same tokens/s (the head's work is a small part of a step)."""


def padded_candidates(found, device: torch.device) -> list[torch.Tensor]:
    """``start_token, end_token, width, labels`` of a batch's candidates on ``device``, padded
    to a multiple of CANDIDATE_BUCKET with candidates that count for nothing (the first token,
    width 0, label IGNORE: no loss and no gradient)."""
    pad = -len(found.labels) % CANDIDATE_BUCKET
    return [torch.as_tensor(np.concatenate([a, np.full(pad, fill, dtype=a.dtype)]), device=device)
            for a, fill in ((found.start_token, 0), (found.end_token, 0), (found.width, 0), (found.labels, IGNORE))]


def forward_backward(run: Run, indices: list[int], stepping: bool) -> torch.Tensor:
    """This process's share of a batch: forward, loss, backward (gradients synchronised across
    processes only on a ``stepping`` batch). Returns the share's loss."""
    group, device = run.group, run.device
    share = indices[group.rank::group.world]
    mine = share or indices[:1]  # a process with no share runs a window with weight 0
    weight = 1.0 if share else 0.0
    span = run.span_windows is not None
    batch = pack([run.sequences[i] for i in mine], None if span else [run.seq_labels[i] for i in mine], mine)
    if run.mode == "bf16":
        batch = fill_batch(batch)
    if span:  # the candidates of the batch's windows (filler sequences have none)
        windows = [run.span_windows[i] for i in mine]
        found = batch_candidates([w.firsts for w in windows], [w.lasts for w in windows],
                                 batch.cu_seqlens[:len(mine)].tolist(), run.span_head.max_width,
                                 [w.entities for w in windows], starts=run.tokenizer.starts)
        candidates = padded_candidates(found, device)
    batch = batch.to(device)
    # The loss of the whole batch is the mean over its labelled tokens (or candidates); each
    # process takes its share, scaled by the number of processes DDP averages over.
    count = sum(run.labelled[i] for i in indices)
    sync = run.ddp.no_sync() if group.active and not stepping else contextlib.nullcontext()
    with sync:
        with torch.autocast(device.type, dtype=run.amp, enabled=run.amp is not None):
            logits = run.ddp(batch.input_ids, batch.cu_seqlens, batch.max_seqlen, *candidates[:3] if span else ())
        if span:  # fp32 logits (C, L + 1)
            total = span_loss(logits, candidates[3], reduction="sum")
        elif run.crf is not None:  # summed over the sequences' chains, in fp32 (filler sequences have none)
            opens, closes = edge_flags([run.edges[i] for i in mine], len(batch.cu_seqlens) - 1, device)
            total = run.crf.nll(logits.float(), batch.labels, batch.cu_seqlens, opens, closes).sum()
        else:
            total = F.cross_entropy(logits.float(), batch.labels, ignore_index=IGNORE, reduction="sum")
        loss = total * (weight * group.world / max(count, 1))
        (loss / run.config.accumulation).backward()
    return loss


def edge_flags(edges: list[tuple[bool, bool]], sequences: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(opens, closes): ``(sequences,)`` bool, whether each sequence of a batch begins / ends its
    text, from the windows' ``edges``; sequences past them (filler) are marked neither."""
    flags = torch.zeros((2, sequences), dtype=torch.bool)
    if edges:
        flags[:, :len(edges)] = torch.tensor(edges, dtype=torch.bool).T
    return flags[0].to(device), flags[1].to(device)


def optimizer_step(run: Run) -> None:
    """Clip, step, schedule: one optimizer step on the summed gradients."""
    if run.crf is not None and run.group.active:  # DDP averages the model's gradients; the CRF's likewise
        for p in run.crf.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= run.group.world
    run.optimizer.step(max_grad_norm=run.config.clip or None)  # clipped as clip_grad_norm_ does
    if run.mode == "bf16":
        run.model.refresh_low_precision()
    run.schedule.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.state["step"] += 1


def evaluate_and_save(run: Run, epoch: int, entry: dict) -> tuple[str, bool]:
    """After an epoch's training: evaluate on dev, record the epoch, keep the best weights and
    save the checkpoint. Returns the epoch's line for the user and whether the run stops early."""
    config, state = run.config, run.state
    line = f"epoch {epoch + 1}: loss {entry['train_loss']:.4f}"
    improved = False
    if run.dev_examples:
        if run.crf is not None:
            run.tagger.transitions = run.crf.transitions()
        dev = evaluate_examples(run.tagger, run.dev_examples, run.group, run.show, f"dev {epoch + 1}/{config.epochs}",
                                with_calibration=True)
        improved = run.choose and dev["f1"] > state["best_f1"]
        entry.update(dev={k: dev[k] for k in ("precision", "recall", "f1", "macro_f1")},
                     dev_per_label=dev["per_label"], dev_calibration=dev["calibration"], best=improved)
        line += (f"  dev P {dev['precision']:.4f} R {dev['recall']:.4f} F1 {dev['f1']:.4f}"
                 + ("  (best so far)" if improved else ""))
    run.record(entry)
    run.reporters.log(epoch_metrics(entry), entry["step"])
    if improved:
        state.update(best_f1=dev["f1"], best_epoch=epoch + 1, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    stop = run.choose and config.patience is not None and state["bad_epochs"] >= config.patience
    state.update(epoch=epoch + 1, stopped=stop)
    if stop or epoch + 1 == config.epochs:
        run.unsaved = True  # the final save follows: no checkpoint unless it fails (save_last_epoch)
    else:
        save_checkpoint(run.work, run.model, run.optimizer, run.schedule, state, run.device, run.group, run.beside,
                        run.keeps_best)
    run.folder.keep()
    return line, stop


# -- the final save ------------------------------------------------------------------------------


def finish(run: Run) -> dict:
    """The final save (rank 0): the kept epoch's weights, the report and the model files, then
    the run marked finished. Returns the kept epoch's train loss and dev scores."""
    state, work = run.state, run.work
    kept = state["best_epoch"] if run.keeps_best else state["epoch"]
    calibrated = None
    if run.group.main:
        if kept != state["epoch"]:  # the model holds the last epoch's weights; the best is an earlier one
            run.unsaved = False  # the last epoch's weights are gone: a failure resumes from the checkpoint
            load_epoch_weights(epoch_weights(work, kept), run.model, run.beside, run.device)
        calibrated = calibrate_scores(run, kept) if run.dev_examples else None
        files = settings_files(run.settings)
        if run.crf is not None:
            files.update(crf_files(run.crf.transitions(), run.labels))

        def write_files(folder: Path) -> None:
            span_words = run.settings.max_span_words if run.span_head is not None else None
            write_report(folder, state["history"], run.labels, kept_epoch=kept, data=run.data_line,
                         note=run.small_dev, span_words=span_words,
                         calibration=calibrated and calibrated["dev_calibration"],
                         temperature=calibrated and calibrated["calibration"])
            kept_readme = write_card(folder, run.config, state["history"], kept, run.train_examples,
                                     run.dev_examples, run.mode, calibrated and calibrated["calibration"])
            if kept_readme:
                warnings.warn(kept_readme, stacklevel=2)
            if run.span_head is not None:  # beside the encoder, before its config.json
                write_safetensors(folder / SPAN_HEAD_FILE, run.span_head.state_dict(), {"format": "pt"})
            if has_adapters(run.model):  # PEFT's adapter folder, naming the base model as given
                write_adapter_files(run.model, run.tokenizer, folder, run.config.model, files)
            else:
                write_model_files(run.model, run.tokenizer, folder, files, run.pooler)

        run.folder.finish(write_files)
    run.group.barrier()  # every process returns once the folder is complete
    epoch_log = next(h for h in state["history"] if h.get("epoch") == kept and "train_loss" in h)
    scores = dict.fromkeys(("precision", "recall", "f1", "macro_f1", "per_label"))
    if "dev" in epoch_log:
        scores.update(epoch_log["dev"], per_label=epoch_log["dev_per_label"])
    return {"out": str(Path(run.config.out)), "epoch": kept, "train_loss": epoch_log["train_loss"],
            "dev_texts": len(run.dev_examples), **scores, "calibration": calibrated and calibrated["calibration"]}


def calibrate_scores(run: Run, kept: int) -> dict:
    """Fit the temperature of the kept model's span scores on dev (rank 0, after the kept weights
    are loaded; tagtune.inference.evaluate.calibrate) and keep it in ``run.settings``, so that
    tagtune.json holds it. Says the before and after, appends them to metrics.jsonl as
    ``{"epoch", "step", "calibration": {"temperature", "before", "after"}}`` (``kept``, the kept
    epoch, and the last step), and returns that ``calibration`` with
    ``dev_calibration``, tagtune.data.metrics.calibration of the dev predictions at the temperature."""
    if run.crf is not None:
        run.tagger.transitions = run.crf.transitions()
    fit = calibrate(run.tagger, run.dev_examples)
    run.settings = replace(run.settings, temperature=fit["temperature"])
    before, after = fit["before"], fit["after"]
    run.say(f"tagtune: span scores calibrated on dev: temperature {fit['temperature']:.3f}; over "
            f"{before['spans']} spans ({before['right']} right), ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
            f"average precision {before['average_precision']:.4f} -> {after['average_precision']:.4f}, "
            f"Brier {before['brier']:.4f} -> {after['brier']:.4f}")
    entry = {"temperature": fit["temperature"], "before": before, "after": after}
    try:
        with open(run.work / "metrics.jsonl", "a", encoding="utf-8") as log:
            log.write(json.dumps({"epoch": kept, "step": run.state["step"], "calibration": entry}) + "\n")
    except OSError as e:
        raise write_error(run.work / "metrics.jsonl", e) from None
    return {"calibration": entry,
            "dev_calibration": calibration([ex.spans for ex in run.dev_examples], fit["predicted"])}


def save_last_epoch(run: Run) -> None:
    """After a failed final save of one process: checkpoint the last epoch where that can be
    done, so that --resume goes straight to the final save; else (the disk full, say) the
    previous checkpoint stays and --resume trains the last epoch again."""
    if run.unsaved and not run.group.active:
        with contextlib.suppress(Exception):
            save_checkpoint(run.work, run.model, run.optimizer, run.schedule, run.state, run.device, run.group,
                            run.beside, run.keeps_best)
