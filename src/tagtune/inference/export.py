"""Export a trained tagger folder to ONNX: a self-contained folder for the ONNX backend.

``export_onnx(DIR, OUT)`` writes OUT/model.onnx with copies of config.json, the tokenizer files,
tagtune.json, README.md (the model card) when there is one and, for a tagger trained with
``--crf``, crf.json (the CRF is decoded in numpy), so ``Tagger.load(OUT)`` runs it on ONNX
Runtime without torch. A token tagger's graph takes padded input, ``input_ids, attention_mask:
(batch, seq)`` int64 -> ``logits: (batch, seq, labels)``, both axes dynamic. Before anything is
written in OUT's place, ONNX Runtime's logits are checked against the PyTorch model's on padded
batches of two shapes.

``int8`` quantises the weights of the matrix products to int8 (onnxruntime's dynamic
quantisation; activations are quantised on the fly) and makes that model OUT/model.onnx; its
graph has the self-attention of BERT-like families as ONNX Runtime's Attention operator, which
quantisation makes QAttention (write_onnx's ``ort_attention``); the fp32 graph keeps standard
operators only;
``eval_file`` scores the PyTorch, fp32 ONNX and int8 ONNX taggers on an annotated file.

A span tagger (``--head span``) exports as one graph with the span scorer inside
(PaddedSpanScorer): ``input_ids, attention_mask: (B, L)`` and each candidate's ``start, end:
(C,)``, the positions of its first and last token in the hidden states flattened to ``(B * L)``
(row b's tokens from ``b * L``), and ``width: (C,)`` -> ``probs: (C, labels + 1)``, the head's
widths in the graph's metadata. The SpanTagger runs it through the same loop over windows as
PyTorch (tagtune.inference.spantagger.score_windows), and tagtune.json keeps the head, its width
and labels. The other design, the encoder's graph giving the hidden states ``(B, L, H)`` and the
head in numpy from span_head.safetensors, was measured and left: on 512 WNUT tweets (11,474
tokens) through ``SpanTagger.candidates``, a MiniLM span tagger (``--max-span-words 8``), 2
shared Intel Xeon cores, three runs each, the graph with the head took 9.2-9.6 s in fp32
against 14.1-14.4 s, and 3.4-4.5 s in int8 against 7.2-9.4 s (both within 1.3e-6 of PyTorch in
fp32); and numpy has no erf for the head's exact GELU (scipy's was used), which ONNX's ``Gelu``
has. The export checks the probabilities against PyTorch's (``TOLERANCE``) on candidates of
the probe batches, every token a unit; the int8 graph's too, against ``INT8_TOLERANCE``: on that
MiniLM its largest difference was 0.16 (F1 0.262 against fp32's 0.274 on 150 other tweets),
where a graph reading every candidate one token off differs by 0.56.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tagtune.data.formats import read_examples
from tagtune.errors import TagtuneError, first_line
from tagtune.files import new_folder_beside, replace_folder
from tagtune.inference.evaluate import evaluate_examples
from tagtune.inference.load import head_of, locate, open_folder
from tagtune.inference.onnx_backend import (
    INPUT_NAMES,
    MAX_WIDTH_KEY,
    OUTPUT_NAME,
    SPAN_INPUT_NAMES,
    SPAN_OUTPUT_NAME,
    OnnxModel,
    OnnxSpanModel,
    OnnxSpanScorer,
)
from tagtune.inference.runtime import BATCH_TOKENS
from tagtune.inference.spantagger import PackedSpanScorer, SpanTagger, score_windows
from tagtune.inference.tagger import ONNX_BATCH_TOKENS, Tagger
from tagtune.models.bert import fused_attention_weights
from tagtune.models.packed import Packing
from tagtune.models.spanhead import span_probabilities
from tagtune.store.layout import CONFIG_FILE, ONNX_FILE, write_crf, write_settings

TOLERANCE = 1e-4  # largest |ONNX - PyTorch| logit (span tagger: probability) difference an export may have
INT8_TOLERANCE = 0.3  # the same for a span tagger's int8 graph (see the module docstring)
README = "README.md"
OPSET = 20
"""ONNX opset of the exported graph: from 20, GELU is one standard ``Gelu`` node instead of five
element-wise ones (erf and its arithmetic), about 8% faster through ONNX Runtime in fp32 and
int8 on MiniLM (onnxruntime 1.17 and later run it)."""


class PaddedTagger(nn.Module):
    """A TokenClassifier on padded input, for export: ``input_ids, attention_mask: (B, L)`` ->
    ``logits (B, L, labels)`` (TokenClassifier.forward_export: the graph has no data-dependent
    shapes; logits at padding positions are not meaningful)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.forward_export(input_ids, attention_mask)


class PaddedSpanScorer(nn.Module):
    """An encoder and its span head on padded input, for export: ``input_ids, attention_mask:
    (B, L)`` and each candidate's ``start, end: (C,)`` (positions in the ``(B * L)`` hidden
    states) and ``width: (C,)`` -> ``probs (C, labels + 1)``. The padded batch is taken whole
    (Packing.of_padded), as TokenClassifier.forward_export takes it."""

    def __init__(self, model, head):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids, attention_mask, start, end, width):
        hidden = self.model.encode(input_ids.reshape(-1), Packing.of_padded(attention_mask))  # (B * L, H)
        return span_probabilities(self.head(hidden, start, end, width))  # (C, labels + 1)


@contextlib.contextmanager
def _quiet():
    """No warnings or log records below ERROR (the exporter's and quantiser's notes) for a while."""
    previous = logging.root.manager.disable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(max(previous, logging.WARNING))
        try:
            yield
        finally:
            logging.disable(previous)


def write_onnx(model, path: Path, max_length: int, ort_attention: bool = False, head=None) -> None:
    """Export ``model`` (a TokenClassifier) to ``path`` with dynamic batch and sequence axes;
    with ``ort_attention``, BERT-like self-attention as ONNX Runtime's Attention operator (see
    fused_attention_weights; the graph then runs on ONNX Runtime only). With ``head`` (a
    SpanHead), the graph is the encoder and the head (PaddedSpanScorer), with a dynamic
    candidate axis and the head's widths in its metadata (MAX_WIDTH_KEY)."""
    example = (torch.full((2, 8), 100, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=max(2, model.config.max_position_embeddings))
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    if head is None:
        wrapper, names, output = PaddedTagger(model).eval(), INPUT_NAMES, OUTPUT_NAME
    else:
        wrapper, names, output = PaddedSpanScorer(model, head).eval(), SPAN_INPUT_NAMES, SPAN_OUTPUT_NAME
        candidates = torch.export.Dim("candidates")
        example += (torch.tensor([1, 2, 9, 10]), torch.tensor([2, 2, 10, 12]), torch.tensor([1, 0, 1, 2]))
        shapes |= {name: {0: candidates} for name in ("start", "end", "width")}
    # torch.onnx.export's default exporter (torch.export + onnxscript, ``dynamo=True``): it is the
    # supported path in torch 2.x, gives named dynamic axes from ``dynamic_shapes``, and its graph
    # matches PyTorch to ~1e-6. The older TorchScript exporter (``dynamo=False``) also works on
    # this module but is deprecated. The exporter's progress lines are kept off the terminal.
    chatter = io.StringIO()
    try:
        fused = fused_attention_weights(model) if ort_attention else contextlib.nullcontext()
        with contextlib.redirect_stdout(chatter), _quiet(), fused:
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, example, None if head is not None else str(path), input_names=list(names),
                output_names=[output], dynamic_shapes=shapes, opset_version=OPSET, dynamo=True,
                external_data=False, optimize=True, verbose=False,
            )
            if head is not None:
                program.model.metadata_props[MAX_WIDTH_KEY] = str(head.max_width)
                program.save(str(path), external_data=False)
    except ImportError as e:
        raise TagtuneError(f"exporting to ONNX needs onnx and onnxscript ({first_line(e)}); "
                           "pip install 'tagtune[dev]' or onnx onnxscript") from None
    except Exception as e:  # the exporter's own error types
        raise TagtuneError(f"the ONNX export failed: {first_line(e)}") from None


def _probe_batches(vocab_size: int, cls_id: int | None, sep_id: int | None, max_length: int, seed: int = 0):
    """Padded batches of random token ids of two shapes, rows of different lengths
    (``[CLS] ... [SEP]`` then padding; no [CLS] or [SEP] where its id is None):
    (input_ids, attention_mask), both (B, L) int64."""
    rng = np.random.default_rng(seed)
    shapes = [(5, min(max_length, 37)), (2, max_length)]
    for rows, length in shapes:
        lengths = rng.integers(3, length + 1, rows)
        lengths[0] = length
        ids = np.zeros((rows, length), dtype=np.int64)
        mask = np.zeros((rows, length), dtype=np.int64)
        for r, n in enumerate(lengths):
            ids[r, :n] = rng.integers(0, vocab_size, n)
            if cls_id is not None:
                ids[r, 0] = cls_id
            if sep_id is not None:
                ids[r, n - 1] = sep_id
            mask[r, :n] = 1
        yield ids, mask


def max_logit_difference(model, onnx_model: OnnxModel, tokenizer, max_length: int) -> float:
    """Largest |ONNX - PyTorch| logit over the real positions of the probe batches; PyTorch
    runs its own packed forward on the same sequences."""
    worst = 0.0
    for ids, mask in _probe_batches(model.config.vocab_size, tokenizer.cls_id, tokenizer.sep_id, max_length):
        ours = onnx_model(ids, mask)  # (B, L, labels)
        with torch.inference_mode():
            reference = model.forward_padded(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        real = mask.astype(bool)
        worst = max(worst, float(np.abs(ours[real] - reference[real]).max()))
    return worst


def max_probability_difference(model, head, onnx_model: OnnxSpanModel, tokenizer, max_length: int) -> float:
    """Largest |ONNX - PyTorch| probability of a span tagger over the candidates of the probe
    batches, each token taken as a unit (every stretch of up to the head's widths): PyTorch
    scores them in its packed batches, ONNX Runtime in its padded ones, both through
    score_windows, so the candidates' positions are placed as the SpanTagger places them."""
    torch_scorer = PackedSpanScorer(model, head, torch.device("cpu"), BATCH_TOKENS)
    onnx_scorer = OnnxSpanScorer(onnx_model, tokenizer.pad_id, ONNX_BATCH_TOKENS)
    worst = 0.0
    for ids, mask in _probe_batches(model.config.vocab_size, tokenizer.cls_id, tokenizer.sep_id, max_length):
        sequences = [row[:n].tolist() for row, n in zip(ids, mask.sum(1))]
        units = [range(len(x) - tokenizer.specials) for x in sequences]  # the tokens between [CLS] and [SEP]
        ours, theirs = (score_windows(scorer, sequences, units, units, head.max_width, head.num_labels,
                                      starts=tokenizer.starts)
                        for scorer in (onnx_scorer, torch_scorer))
        worst = max(worst, *(float(np.abs(a[2] - b[2]).max()) for a, b in zip(ours, theirs)))
    return worst


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of ``source`` into ``target``: QInt8 weights, one scale per
    output channel (per-tensor scales lost more F1 on WNUT tweets with MiniLM: 0.17 vs 0.21,
    fp32 0.24), activations quantised at run time."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise TagtuneError(f"int8 quantisation needs onnxruntime ({first_line(e)})") from None
    with _quiet():
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True)


def _f1(tagger: Tagger, examples, progress: bool = False, desc: str = "evaluating") -> float:
    return float(evaluate_examples(tagger, examples, progress=progress, desc=desc)["f1"])


def _check_output(source: Path, out: Path, overwrite: bool) -> None:
    if out.resolve() == source.resolve():
        raise TagtuneError(f"{out}: is the tagger folder itself; give another output folder")
    if not out.exists():
        return
    if not overwrite:
        raise TagtuneError(f"{out}: already exists (pass --overwrite to replace it)")
    if not out.is_dir() or not (out / ONNX_FILE).is_file():
        raise TagtuneError(f"{out}: exists and is not an earlier ONNX export (no {ONNX_FILE}); not replacing it")


def export_onnx(model_dir, out, overwrite: bool = False, int8: bool = False, eval_file: str | None = None,
                eval_format: str | None = None, progress: bool = True) -> dict:
    """Write ``out`` as an ONNX tagger folder; returns what was done and measured. With
    ``progress``, each stage is announced on stderr once the input is checked."""
    say = (lambda msg: print(f"tagtune: {msg}", file=sys.stderr)) if progress else (lambda msg: None)
    source = locate(model_dir)
    span = head_of(source) == "span"
    out = Path(out)
    _check_output(source, out, overwrite)
    examples = None
    if eval_file is not None:
        examples = read_examples(eval_file, eval_format, overlaps=span)
        if not examples:
            raise TagtuneError(f"{eval_file}: no annotated texts")
    opened = open_folder(source, "torch", check_window=False, located=True)
    model, tokenizer, settings = opened.model.float().eval(), opened.tokenizer, opened.settings
    transitions, head = opened.transitions, opened.span_head

    def tagger_of(scorer, on_torch: bool = False) -> Tagger | SpanTagger:
        if span:
            return SpanTagger(scorer, head if on_torch else None, tokenizer, opened.labels, settings.max_span_words,
                              settings.max_length, settings.stride)
        return Tagger(scorer, tokenizer, settings, "cpu" if on_torch else None, transitions=transitions)

    def difference(onnx_model) -> float:
        if span:
            return max_probability_difference(model, head, onnx_model, tokenizer, settings.max_length)
        return max_logit_difference(model, onnx_model, tokenizer, settings.max_length)

    what, key = ("probabilities", "probability") if span else ("logits", "logit")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_folder_beside(out)
    try:
        fp32 = tmp / ONNX_FILE
        say(f"exporting {source} to ONNX...")
        write_onnx(model, fp32, settings.max_length, ort_attention=int8, head=head)  # int8 runs on ONNX Runtime only
        shutil.copyfile(source / CONFIG_FILE, tmp / CONFIG_FILE)
        tokenizer.save(tmp)
        write_settings(tmp, settings)
        if transitions is not None:
            write_crf(tmp, transitions, opened.labels)
        if (source / README).is_file():  # the model card tagtune train writes, or the user's
            shutil.copyfile(source / README, tmp / README)
        onnx_class = OnnxSpanModel if span else OnnxModel
        onnx_model = onnx_class.load(tmp)
        say("checking ONNX Runtime against PyTorch...")
        worst = difference(onnx_model)
        if not worst <= TOLERANCE:  # also catches NaN
            raise TagtuneError(f"the ONNX model's {what} differ from PyTorch's by up to {worst:.2e} "
                               f"(more than {TOLERANCE:g}); nothing written")
        report = {"onnx": str(out / ONNX_FILE), f"max_abs_{key}_difference": worst,
                  "fp32_bytes": fp32.stat().st_size}
        taggers = {}
        if examples is not None:
            taggers["pytorch"] = tagger_of(model, on_torch=True)
            taggers["onnx_fp32"] = tagger_of(onnx_model)
        if int8:
            quantized = tmp / "model.int8.onnx"
            say("quantising the weights to int8...")
            quantize_int8(fp32, quantized)
            report["int8_bytes"] = quantized.stat().st_size
            int8_model = onnx_class(quantized, onnx_model.config) if span or examples is not None else None
            if span:  # a span tagger's int8 probabilities are checked too, more loosely
                worst = difference(int8_model)
                report[f"int8_max_abs_{key}_difference"] = worst
                if not worst <= INT8_TOLERANCE:
                    raise TagtuneError(f"the int8 ONNX model's {what} differ from PyTorch's by up to {worst:.2e} "
                                       f"(more than {INT8_TOLERANCE:g}); nothing written (export without --int8)")
            if examples is not None:
                taggers["onnx_int8"] = tagger_of(int8_model)
        if examples is not None:
            say(f"evaluating on {eval_file} ({len(examples)} texts)...")
            scores = {name: _f1(tagger, examples, progress, f"scoring {name}") for name, tagger in taggers.items()}
            report["eval"] = {"file": str(eval_file), "texts": len(examples), "f1": scores}
            if int8:
                report["eval"]["int8_f1_change"] = scores["onnx_int8"] - scores["onnx_fp32"]
        taggers.clear()
        if int8:
            os.replace(tmp / "model.int8.onnx", fp32)
        report["int8"] = int8
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return report


def summary(report: dict) -> str:
    """A few lines for people: sizes, the logit (or probability) check, F1 before and after int8."""
    mb = 1024 * 1024
    if report.get("int8"):
        size = f"int8, {report['int8_bytes'] / mb:.1f} MB; fp32 would be {report['fp32_bytes'] / mb:.1f} MB"
    else:
        size = f"fp32, {report['fp32_bytes'] / mb:.1f} MB"
    key = "probability" if "max_abs_probability_difference" in report else "logit"  # a span tagger's: probability
    lines = [f"wrote {report['onnx']} ({size})",
             f"max |ONNX - PyTorch| {key} difference: {report[f'max_abs_{key}_difference']:.2e}"]
    if f"int8_max_abs_{key}_difference" in report:
        lines[-1] += f" (fp32), {report[f'int8_max_abs_{key}_difference']:.2e} (int8)"
    if "eval" in report:
        f1 = report["eval"]["f1"]
        line = f"entity F1 on {report['eval']['file']}: " + ", ".join(f"{k} {v:.4f}" for k, v in f1.items())
        if "int8_f1_change" in report["eval"]:
            line += f" (int8 change {report['eval']['int8_f1_change']:+.4f})"
        lines.append(line)
    return "\n".join(lines)
