"""Export a trained tagger folder to ONNX: a self-contained folder for the ONNX backend.

``export_onnx(DIR, OUT)`` writes OUT/model.onnx with copies of config.json, the tokenizer files,
tagtune.json and, for a tagger trained with ``--crf``, crf.json (the CRF is decoded in numpy), so ``Tagger.load(OUT)`` runs it on ONNX Runtime without torch. The graph takes
padded input, ``input_ids, attention_mask: (batch, seq)`` int64 -> ``logits: (batch, seq,
labels)``, both axes dynamic. Before anything is written in OUT's place, ONNX Runtime's logits
are checked against the PyTorch model's on padded batches of two shapes.

``int8`` quantises the weights of the matrix products to int8 (onnxruntime's dynamic
quantisation; activations are quantised on the fly) and makes that model OUT/model.onnx; its
graph has the self-attention of BERT-like families as ONNX Runtime's Attention operator, which
quantisation makes QAttention (write_onnx's ``ort_attention``); the fp32 graph keeps standard
operators only;
``eval_file`` scores the PyTorch, fp32 ONNX and int8 ONNX taggers on an annotated file.
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
from tagtune.errors import TagtuneError
from tagtune.files import new_folder_beside, replace_folder
from tagtune.inference.evaluate import evaluate_examples
from tagtune.inference.load import head_of, locate, open_folder
from tagtune.inference.onnx_backend import INPUT_NAMES, OUTPUT_NAME, OnnxModel
from tagtune.inference.tagger import Tagger
from tagtune.models.bert import fused_attention_weights
from tagtune.store.layout import CONFIG_FILE, ONNX_FILE, write_crf, write_settings

TOLERANCE = 1e-4  # largest |ONNX - PyTorch| logit difference an export may have
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_onnx(model, path: Path, max_length: int, ort_attention: bool = False) -> None:
    """Export ``model`` (a TokenClassifier) to ``path`` with dynamic batch and sequence axes;
    with ``ort_attention``, BERT-like self-attention as ONNX Runtime's Attention operator (see
    fused_attention_weights; the graph then runs on ONNX Runtime only)."""
    wrapper = PaddedTagger(model).eval()
    example = (torch.full((2, 8), 100, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    batch = torch.export.Dim("batch")
    seq = torch.export.Dim("seq", max=max(2, model.config.max_position_embeddings))
    # torch.onnx.export's default exporter (torch.export + onnxscript, ``dynamo=True``): it is the
    # supported path in torch 2.x, gives named dynamic axes from ``dynamic_shapes``, and its graph
    # matches PyTorch to ~1e-6. The older TorchScript exporter (``dynamo=False``) also works on
    # this module but is deprecated. The exporter's progress lines are kept off the terminal.
    chatter = io.StringIO()
    try:
        fused = fused_attention_weights(model) if ort_attention else contextlib.nullcontext()
        with contextlib.redirect_stdout(chatter), _quiet(), fused:
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper, example, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                opset_version=OPSET, dynamo=True, external_data=False, optimize=True, verbose=False,
            )
    except ImportError as e:
        raise TagtuneError(f"exporting to ONNX needs onnx and onnxscript ({_first_line(e)}); "
                           "pip install 'tagtune[dev]' or onnx onnxscript") from None
    except Exception as e:  # the exporter's own error types
        raise TagtuneError(f"the ONNX export failed: {_first_line(e)}") from None


def _probe_batches(vocab_size: int, cls_id: int, sep_id: int, max_length: int, seed: int = 0):
    """Padded batches of random token ids of two shapes, rows of different lengths
    (``[CLS] ... [SEP]`` then padding): (input_ids, attention_mask), both (B, L) int64."""
    rng = np.random.default_rng(seed)
    shapes = [(5, min(max_length, 37)), (2, max_length)]
    for rows, length in shapes:
        lengths = rng.integers(3, length + 1, rows)
        lengths[0] = length
        ids = np.zeros((rows, length), dtype=np.int64)
        mask = np.zeros((rows, length), dtype=np.int64)
        for r, n in enumerate(lengths):
            ids[r, :n] = rng.integers(0, vocab_size, n)
            ids[r, 0], ids[r, n - 1] = cls_id, sep_id
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


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of ``source`` into ``target``: QInt8 weights, one scale per
    output channel (per-tensor scales lost more F1 on WNUT tweets with MiniLM: 0.17 vs 0.21,
    fp32 0.24), activations quantised at run time."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise TagtuneError(f"int8 quantisation needs onnxruntime ({_first_line(e)})") from None
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
    if head_of(source) == "span":
        raise TagtuneError(f"{source}: a span tagger (--head span) cannot be exported to ONNX; it runs on the "
                           "PyTorch backend")
    out = Path(out)
    _check_output(source, out, overwrite)
    examples = None
    if eval_file is not None:
        examples = read_examples(eval_file, eval_format)
        if not examples:
            raise TagtuneError(f"{eval_file}: no annotated texts")
    opened = open_folder(source, "torch", check_window=False, located=True)
    model, tokenizer, settings = opened.model.float().eval(), opened.tokenizer, opened.settings
    transitions = opened.transitions

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_folder_beside(out)
    try:
        fp32 = tmp / ONNX_FILE
        say(f"exporting {source} to ONNX...")
        write_onnx(model, fp32, settings.max_length, ort_attention=int8)  # int8 runs on ONNX Runtime only
        shutil.copyfile(source / CONFIG_FILE, tmp / CONFIG_FILE)
        tokenizer.save(tmp)
        write_settings(tmp, settings)
        if transitions is not None:
            write_crf(tmp, transitions, opened.labels)
        onnx_model = OnnxModel.load(tmp)
        say("checking ONNX Runtime against PyTorch...")
        difference = max_logit_difference(model, onnx_model, tokenizer, settings.max_length)
        if not difference <= TOLERANCE:  # also catches NaN
            raise TagtuneError(f"the ONNX model's logits differ from PyTorch's by up to {difference:.2e} "
                               f"(more than {TOLERANCE:g}); nothing written")
        report = {"onnx": str(out / ONNX_FILE), "max_abs_logit_difference": difference,
                  "fp32_bytes": fp32.stat().st_size}
        taggers = {}
        if examples is not None:
            taggers["pytorch"] = Tagger(model, tokenizer, settings, "cpu", transitions=transitions)
            taggers["onnx_fp32"] = Tagger(onnx_model, tokenizer, settings, transitions=transitions)
        if int8:
            quantized = tmp / "model.int8.onnx"
            say("quantising the weights to int8...")
            quantize_int8(fp32, quantized)
            report["int8_bytes"] = quantized.stat().st_size
            if examples is not None:
                taggers["onnx_int8"] = Tagger(OnnxModel(quantized, onnx_model.config), tokenizer, settings,
                                              transitions=transitions)
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
    """A few lines for people: sizes, the logit check, F1 before and after int8."""
    mb = 1024 * 1024
    if report.get("int8"):
        size = f"int8, {report['int8_bytes'] / mb:.1f} MB; fp32 would be {report['fp32_bytes'] / mb:.1f} MB"
    else:
        size = f"fp32, {report['fp32_bytes'] / mb:.1f} MB"
    lines = [f"wrote {report['onnx']} ({size})",
             f"max |ONNX - PyTorch| logit difference: {report['max_abs_logit_difference']:.2e}"]
    if "eval" in report:
        f1 = report["eval"]["f1"]
        line = f"entity F1 on {report['eval']['file']}: " + ", ".join(f"{k} {v:.4f}" for k, v in f1.items())
        if "int8_f1_change" in report["eval"]:
            line += f" (int8 change {report['eval']['int8_f1_change']:+.4f})"
        lines.append(line)
    return "\n".join(lines)
