"""Tagger: a trained model folder -> character spans for texts.

texts -> tokens with offsets -> units (label positions) -> windows of at most ``max_length``
tokens -> batches sorted by length -> logits -> windows merged per text -> constrained
decoding over units (with the learned transition scores of crf.json for a tagger trained with
``--crf``) -> spans whose ``text[start:end]`` is the entity, each scored with the probability
that exactly its units form one entity of its label (tagtune.data.decode).

Two backends compute the logits: PyTorch (packed batches through tagtune.models) and ONNX
Runtime (padded batches through a ``model.onnx`` that ``tagtune export`` wrote). Everything
else runs on numpy, and this module imports torch only when the PyTorch backend is used, so
an exported folder is served where torch is not installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from tagtune.data.align import Units, merge_windows, units_of, windows_of, with_specials
from tagtune.data.batching import batch_indices, pad
from tagtune.data.decode import (
    Transitions,
    as_array,
    check_min_score,
    decode_spans,
    spans_and_uncertainty,
    uncertainty,
)
from tagtune.errors import TagtuneError
from tagtune.inference.load import open_folder
from tagtune.inference.onnx_backend import check_onnx_options
from tagtune.inference.runtime import BATCH_TOKENS, evaluating, packed_batches
from tagtune.models.precision import check_bf16, describe, use_bf16
from tagtune.spans import Span
from tagtune.store.layout import TaggerSettings

if TYPE_CHECKING:  # for the annotations only: torch is imported where the PyTorch backend needs it
    import os

    import torch

    from tagtune.inference.onnx_backend import OnnxModel
    from tagtune.inference.spantagger import SpanTagger
    from tagtune.models.packed import TokenClassifier
    from tagtune.progress import Progress
    from tagtune.text.tokenizer import Tokenizer


def default_device():
    """CUDA when available, else the CPU (a torch.device)."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


ONNX_BATCH_TOKENS = 512
"""The same for the ONNX backend. Tagging 2,048 WNUT tweets on 2 Intel Xeon cores, alternating
budgets in one process: int8 took 11.6 s with 512 against 14.1 s with 2,048 (its activations stay
in cache), fp32 25.9 against 26.9 s."""


class Tagger:
    """Character spans for texts, from a trained token classifier: ``Tagger.load(DIR)(texts)``.

    Each text is tokenised with character offsets and cut into windows of the tagger's
    ``max_length`` tokens, overlapping by ``stride``; the windows go through the model in
    batches of about ``batch_tokens`` tokens, and their logits are merged back per text at its
    units (the first subword of each word, or every subword for a tagger trained with
    ``all_subwords``). Decoding picks the best tag sequence the scheme allows (Viterbi, with a
    CRF's learned scores for a tagger trained with one), or each unit's argmax when not
    ``constrained``, and scores each span with the probability that exactly its characters
    form one entity of its label.

    Two backends compute the logits: PyTorch, or ONNX Runtime for a folder that
    ``tagtune export`` wrote, which runs without torch.

    Attributes:
        model: The token classifier: a TokenClassifier (PyTorch) or an OnnxModel (ONNX); both
            carry the ``config`` with the labels.
        tokenizer: The model's tokenizer, with character offsets.
        settings: The scheme, subword labelling, window and CRF flag, from tagtune.json.
        backend: "torch" or "onnx".
        device: Where the PyTorch model runs, a torch.device; "cpu" for the ONNX backend.
        labels: The model's tags in the order of its logits, e.g. ``["O", "B-PER", "I-PER"]``.
        constrained: Decode the best tag sequence the scheme allows; False: each unit's argmax.
        min_score: Spans scoring below it are dropped, unless a call passes its own.
        batch_tokens: Real tokens per forward pass.
        transitions: The CRF's scores that constrained decoding adds to the scheme's, or None.
        precision: What the encoder runs in: "bf16", "fp32", or "onnx" (as exported).
        precision_note: Why, in words.

    Example:
        ```python
        tagger = Tagger.load("my-tagger", min_score=0.5)
        for span in tagger("Angela Merkel visited Lisbon."):
            print(span.label, span.score)
        spans_per_text = tagger.predict(["First text.", "Second text."])
        ```
    """

    def __init__(self, model: TokenClassifier | OnnxModel, tokenizer: Tokenizer, settings: TaggerSettings,
                 device: str | torch.device | None = None, constrained: bool = True,
                 batch_tokens: int | None = None, min_score: float = 0.0, transitions: Transitions | None = None,
                 bf16: str = "off"):
        """A tagger from a model, tokenizer and settings already loaded; ``Tagger.load`` opens a folder.

        Args:
            model: The token classifier, a TokenClassifier or an OnnxModel.
            tokenizer: The model's tokenizer.
            settings: The scheme, subword labelling, window and CRF flag of the labels.
            device: Where the PyTorch model runs; None: where its parameters are. The ONNX
                backend runs on the CPU only.
            constrained: Decode the best tag sequence the scheme allows; False: each unit's
                argmax.
            batch_tokens: Real tokens per forward pass; None: 2,048 with PyTorch, 512 with ONNX
                Runtime.
            min_score: Spans scoring below it (0 to 1) are dropped, unless a call passes its own.
            transitions: A CRF's scores that constrained decoding adds to the scheme's, or None.
            bf16: "on" runs the encoder's matrix products and activations in bf16 (the linear
                layers get bf16 copies of their weights; the classifier and the decoding stay
                fp32), "off" keeps the model as it is, "auto" chooses bf16 where the hardware
                multiplies it natively and faster than fp32.

        Raises:
            TagtuneError: When ``bf16`` or ``min_score`` is out of range, the model has no
                labels, or the ONNX backend is given a device other than the CPU or
                ``bf16="on"``.
        """
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.backend = getattr(model, "backend", "torch")
        check_bf16(bf16)
        if self.backend == "torch":
            import torch  # lazy, as the torch backend's code here: the ONNX backend runs without it

            self.device = torch.device(device) if device is not None else next(model.parameters()).device
            chosen = use_bf16(bf16, self.device)
            if chosen:
                model.use_low_precision(torch.bfloat16)
            self.precision, self.precision_note = ("bf16" if chosen else "fp32"), describe(bf16, self.device, chosen)
        else:
            check_onnx_options(device, bf16)
            self.device = "cpu"
            self.precision, self.precision_note = "onnx", "ONNX Runtime, as exported"
        self.constrained = constrained
        self.min_score = check_min_score(min_score)
        self.batch_tokens = batch_tokens or (ONNX_BATCH_TOKENS if self.backend == "onnx" else BATCH_TOKENS)
        self.transitions = transitions
        config = model.config
        self.labels = config.labels
        if not self.labels:
            raise TagtuneError("the model has no labels: it is not a token classifier")

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device | None = None, constrained: bool = True,
             backend: str = "auto", min_score: float | str = "auto", bf16: str = "auto",
             overlap: str = "nested") -> Tagger | SpanTagger:
        """Load a tagger from a folder, or from the Hugging Face Hub.

        The folder is one that ``tagtune train`` or ``tagtune export`` wrote, or any Hugging
        Face token-classification folder (its scheme then told from its label names). A Hub
        repo id is downloaded into the Hugging Face cache first, unless it is there already.

        Args:
            directory: The folder, or a Hub repo id ``org/name[@revision]``.
            device: Where the PyTorch model runs, e.g. "cpu" or "cuda:1"; None: CUDA when
                available, else the CPU. The ONNX backend runs on the CPU only.
            constrained: Decode the best tag sequence the scheme allows (Viterbi); False: each
                unit's argmax (``tagtune predict --argmax``).
            backend: "torch", "onnx", or "auto": ONNX when the folder has model.onnx and no
                PyTorch weights (or both, and torch cannot be imported), else PyTorch.
            min_score: Spans scoring below it (0 to 1) are dropped, unless a call passes its own;
                "auto": 0 for a token tagger, 0.5 for a span tagger.
            bf16: "auto" runs the encoder in bf16 where the hardware multiplies bf16 natively and
                faster than fp32 (CUDA GPUs with bf16; CPUs with AVX512-BF16 or AMX whose bf16
                matrix products measure faster), else in fp32; "on" in bf16, "off" in fp32. The
                classifier and the decoding stay fp32; the ONNX backend runs as exported.
            overlap: For a span tagger, which of its spans are kept: "nested", "flat" or "any"
                (tagtune.inference.spantagger.SpanTagger.predict); a token tagger's never overlap.

        Returns:
            The tagger, its model in eval mode on ``device``: a SpanTagger for a folder trained
            with ``--head span`` (or exported from one).

        Raises:
            TagtuneError: When ``directory`` is neither a folder nor a Hub repo id that can be
                downloaded, is an unfinished training run, holds no token classifier or a
                tokenizer that does not fit the model; when ``backend``, ``min_score`` or
                ``bf16`` is out of range; when the PyTorch backend is asked for and torch cannot
                be imported, or the ONNX backend with a device other than the CPU or
                ``bf16="on"``.

        Example:
            ```python
            tagger = Tagger.load("my-tagger", device="cpu", bf16="off")
            onnx = Tagger.load("my-tagger-onnx", backend="onnx")
            hub = Tagger.load("org/name@v1.0")
            ```
        """
        auto = isinstance(min_score, str) and min_score == "auto"
        if not auto:
            min_score = check_min_score(min_score)  # before the model is loaded
        check_bf16(bf16)
        opened = open_folder(directory, backend)
        if opened.span:
            return _span_tagger(opened, device, overlap, 0.5 if auto else min_score, bf16)
        min_score = 0.0 if auto else min_score
        if opened.backend == "onnx":
            return cls(opened.model, opened.tokenizer, opened.settings, device, constrained, min_score=min_score,
                       transitions=opened.transitions, bf16="off" if bf16 == "auto" else bf16)
        device = _torch_device(device) if device is not None else default_device()
        return cls(opened.model.to(device).eval(), opened.tokenizer, opened.settings, device, constrained,
                   min_score=min_score, transitions=opened.transitions, bf16=bf16)

    def __call__(self, texts: str | list[str], progress: Progress | None = None,
                 min_score: float | None = None) -> list[Span] | list[list[Span]]:
        """Spans of one text, or of each text of a list.

        Args:
            texts: A text, or a list of texts.
            progress: Told of the work as it is done: ``update(n)`` after each batch of n
                windows.
            min_score: Spans scoring below it (0 to 1) are dropped; None: the tagger's.

        Returns:
            For a text, its spans in the order of the text; for a list, one such list per
                text, in order.

        Raises:
            TagtuneError: When a text is not a string, or ``min_score`` not a number from 0 to 1.

        Example:
            ```python
            spans = tagger("Angela Merkel visited Lisbon.")
            [[s.label for s in spans] for spans in tagger(["Ann met Bob.", "Nothing here."])]
            ```
        """
        if isinstance(texts, str):
            return self.predict([texts], progress, min_score)[0]
        return self.predict(list(texts), progress, min_score)

    def predict(self, texts: list[str], progress: Progress | None = None,
                min_score: float | None = None) -> list[list[Span]]:
        """Spans of each text.

        Args:
            texts: The texts; an empty one has no spans.
            progress: Told of the work as it is done: ``update(n)`` after each batch of n
                windows.
            min_score: Spans scoring below it (0 to 1) are dropped; None: the tagger's.

        Returns:
            One list of spans per text, in order, each in the order of its text.

        Raises:
            TagtuneError: When a text is not a string, or ``min_score`` not a number from 0 to 1.
        """
        if min_score is not None:
            min_score = check_min_score(min_score)
        _check_texts(texts)
        unit_logits, units = self.unit_logits(texts, progress)
        return self.spans(unit_logits, units, min_score=min_score)

    def predict_chunks(self, chunks: Iterable[list[str]], progress: Progress | None = None,
                       min_score: float | None = None) -> Iterator[list[list[Span]]]:
        """Spans of each text of each chunk, a list per chunk, in order: what ``predict`` gives
        for each chunk, with the work around the model overlapped with it.

        While the model runs on a chunk, a second thread tokenises and windows the next chunk
        and decodes the one before (the tokenizer releases the GIL; numpy does in part), so
        only the model's forward passes and the writing of results stay in turn. The next
        chunk is taken from ``chunks`` before the spans of the current one are given; an error
        raised in taking it is raised after those spans, where ``predict`` chunk by chunk would
        raise it.

        Args:
            chunks: Lists of texts, e.g. 512 lines of a file at a time.
            progress: Told of the work as it is done: ``update(n)`` after each batch of n
                windows.
            min_score: Spans scoring below it (0 to 1) are dropped; None: the tagger's.

        Yields:
            Per chunk, one list of spans per text, each in the order of its text.

        Raises:
            TagtuneError: When a text is not a string, or ``min_score`` not a number from 0 to 1.
        """
        from concurrent.futures import ThreadPoolExecutor

        if min_score is not None:
            min_score = check_min_score(min_score)
        chunks = iter(chunks)
        helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tagtune-predict")
        try:
            cut, error = self._cut_next(chunks, helper)
            decoded = None  # the spans of the chunk before, being decoded
            while cut is not None:
                try:
                    windows = cut.result()
                except BaseException:
                    if decoded is not None:  # the chunk before comes first, as chunk by chunk
                        yield decoded.result()
                    raise
                cut, error = self._cut_next(chunks, helper)
                outputs = self._logits(windows.sequences, progress)  # while the helper cuts the next chunk
                if decoded is not None:
                    yield decoded.result()
                decoded = helper.submit(self._decode, windows, outputs, min_score)
            if decoded is not None:
                yield decoded.result()
            if error is not None:
                raise error
        finally:
            helper.shutdown(wait=True, cancel_futures=True)

    def _cut_next(self, chunks: Iterator[list[str]], helper) -> tuple:
        """``(future of the next chunk's _Windows or None at the end, the error taking it raised or None)``."""
        try:
            texts = next(chunks, None)
            if texts is None:
                return None, None
            _check_texts(texts)
        except Exception as e:  # raised where predict chunk by chunk would raise it
            return None, e
        return helper.submit(self._cut, texts), None

    def _decode(self, windows: _Windows, outputs: list[np.ndarray], min_score: float | None) -> list[list[Span]]:
        return self.spans(self._merge(windows, outputs), windows.units, min_score=min_score)

    def unit_logits(self, texts: list[str], progress: Progress | None = None) -> tuple[list[np.ndarray], list[Units]]:
        """The model's logits for each text at its units, the positions that carry a label.

        A unit is the first subword of a word, or every subword for a tagger trained with
        ``all_subwords``. Where windows overlap, each token's logits come from the window where
        it is farthest from an edge. ``spans`` decodes the result.

        Args:
            texts: The texts.
            progress: Told of the work as it is done: ``update(n)`` after each batch of n
                windows.

        Returns:
            Per text its logits, ``(units, labels)`` float32, and its Units (each unit's token
                and characters).
        """
        windows = self._cut(texts)
        return self._merge(windows, self._logits(windows.sequences, progress)), windows.units

    def _cut(self, texts: list[str]) -> _Windows:
        """Tokenise ``texts`` and cut them into windows of at most ``max_length`` tokens."""
        s = self.settings
        encodings = self.tokenizer.encode_batch(texts)
        units = [units_of(enc, s.all_subwords) for enc in encodings]
        windows = []  # (text index, start, end)
        for t, enc in enumerate(encodings):
            if len(enc):
                windows += [(t, a, b) for a, b in windows_of(len(enc), s.max_length, s.stride, self.tokenizer.specials)]
        sequences = [with_specials(encodings[t].ids[a:b], self.tokenizer.cls_id, self.tokenizer.sep_id)
                     for t, a, b in windows]
        return _Windows(len(texts), units, windows, sequences)

    def _logits(self, sequences: list[list[int]], progress=None) -> list[np.ndarray]:
        """Per window: the logits without the start and end tokens, from the backend."""
        if self.backend == "torch":
            return self._torch_logits(sequences, progress)
        return self._onnx_logits(sequences, progress)

    def _merge(self, windows: _Windows, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """Per text: its windows' logits merged, at its units."""
        per_text: list[list[int]] = [[] for _ in range(windows.texts)]
        for w, (t, _, _) in enumerate(windows.windows):
            per_text[t].append(w)
        result = []
        for t, ws in enumerate(per_text):
            if not ws:
                result.append(np.zeros((0, len(self.labels)), dtype=np.float32))
                continue
            merged = merge_windows([windows.windows[w][1:] for w in ws], [outputs[w] for w in ws])
            result.append(merged[windows.units[t].first])
        return result

    def _torch_logits(self, sequences: list[list[int]], progress=None) -> list[np.ndarray]:
        """Per sequence: logits (length - specials, labels) without the start and end tokens."""
        outputs: list[np.ndarray | None] = [None] * len(sequences)
        starts, ends = self.tokenizer.starts, self.tokenizer.ends
        with evaluating([self.model], self.device):
            for batch, packed in packed_batches(sequences, self.batch_tokens, self.device):
                logits = self.model(packed.input_ids, packed.cu_seqlens, packed.max_seqlen).float().cpu().numpy()
                cu = packed.cu_seqlens.tolist()
                for k, i in enumerate(batch):
                    outputs[i] = logits[cu[k] + starts:cu[k + 1] - ends]  # drop the start and end tokens
                if progress is not None:
                    progress.update(len(batch))
        return outputs

    def _onnx_logits(self, sequences: list[list[int]], progress=None) -> list[np.ndarray]:
        """As _torch_logits, through ONNX Runtime on padded batches (sorted by length, so little padding)."""
        outputs: list[np.ndarray | None] = [None] * len(sequences)
        starts, ends = self.tokenizer.starts, self.tokenizer.ends
        for batch in batch_indices([len(x) for x in sequences], max_tokens=self.batch_tokens):
            rows = [sequences[i] for i in batch]
            input_ids, attention_mask = pad(rows, self.tokenizer.pad_id)  # (B, L)
            logits = self.model(input_ids, attention_mask)  # (B, L, labels)
            for k, i in enumerate(batch):
                outputs[i] = logits[k, starts:len(rows[k]) - ends]  # drop the start and end tokens
            if progress is not None:
                progress.update(len(batch))
        return outputs

    def spans(self, unit_logits: list, units: list[Units], chunk: int = 256,
              min_score: float | None = None) -> list[list[Span]]:
        """Decode unit logits into spans, each scored with its probability.

        Args:
            unit_logits: Per text, its logits ``(units, labels)`` as ``unit_logits`` gives them
                (numpy arrays or torch tensors).
            units: Per text, its Units as ``unit_logits`` gives them.
            chunk: Texts decoded together.
            min_score: Spans scoring below it (0 to 1) are dropped; None: the tagger's.

        Returns:
            One list of spans per text, each in the order of its text.

        Raises:
            TagtuneError: When ``min_score`` is not a number from 0 to 1.
        """
        min_score = self.min_score if min_score is None else check_min_score(min_score)
        out: list[list[Span]] = []
        for lo, padded, mask in self._padded(unit_logits, chunk):
            ranges = [u.ranges for u in units[lo:lo + len(padded)]]
            out += _above(decode_spans(padded, self.labels, ranges, self.settings.scheme, self.constrained, mask,
                                       self.transitions, self.settings.temperature), min_score)
        return out

    def spans_and_uncertainty(self, unit_logits: list, units: list[Units], chunk: int = 256,
                              min_score: float | None = None) -> tuple[list[list[Span]], list[float]]:
        """What ``spans`` and ``uncertainty`` give, from one decode of each chunk (``tagtune select``).

        Args:
            unit_logits: Per text, its logits as ``unit_logits`` gives them.
            units: Per text, its Units as ``unit_logits`` gives them.
            chunk: Texts decoded together.
            min_score: Spans scoring below it (0 to 1) are dropped; None: the tagger's.

        Returns:
            The spans of each text and the uncertainty of each text.

        Raises:
            TagtuneError: When ``min_score`` is not a number from 0 to 1.
        """
        min_score = self.min_score if min_score is None else check_min_score(min_score)
        spans: list[list[Span]] = []
        unsure: list[float] = []
        for lo, padded, mask in self._padded(unit_logits, chunk):
            ranges = [u.ranges for u in units[lo:lo + len(padded)]]
            found, wrong = spans_and_uncertainty(padded, self.labels, ranges, self.settings.scheme, self.constrained,
                                                 mask, self.transitions, self.settings.temperature)
            spans += _above(found, min_score)
            unsure += wrong.tolist()
        return spans, unsure

    def uncertainty(self, unit_logits: list, chunk: int = 256) -> list[float]:
        """How unsure the tagger is of each text: the expected share of its units tagged wrong.

        That is the mean over the text's units of 1 minus the probability of the tag decoded
        there, under the distribution the spans' scores come from (a CRF's included); 0 for a
        text without units. ``tagtune select`` ranks texts by it.

        Args:
            unit_logits: Per text, its logits as ``unit_logits`` gives them.
            chunk: Texts decoded together.

        Returns:
            One number from 0 to 1 per text.
        """
        out: list[float] = []
        for _, padded, mask in self._padded(unit_logits, chunk):
            out += uncertainty(padded, self.labels, self.settings.scheme, self.constrained, mask,
                               self.transitions, self.settings.temperature).tolist()
        return out

    def _padded(self, unit_logits: list, chunk: int):
        """``(first index, logits (B, N, labels) float32, mask (B, N))`` for each ``chunk`` texts of
        ``unit_logits``, zero-padded to the longest (at least one position)."""
        for lo in range(0, len(unit_logits), chunk):
            group = [as_array(x) for x in unit_logits[lo:lo + chunk]]
            longest = max((x.shape[0] for x in group), default=0)
            padded = np.zeros((len(group), max(longest, 1), len(self.labels)), dtype=np.float32)
            mask = np.zeros((len(group), max(longest, 1)), dtype=bool)
            for k, x in enumerate(group):
                padded[k, :x.shape[0]] = x
                mask[k, :x.shape[0]] = True
            yield lo, padded, mask


@dataclass
class _Windows:
    """Texts tokenised and cut into windows, ready for the model."""

    texts: int
    """How many texts."""
    units: list[Units]
    """Per text, its units."""
    windows: list[tuple[int, int, int]]
    """Per window: (text index, first token, end token)."""
    sequences: list[list[int]]
    """Per window: its token ids with the start and end tokens."""


def _check_texts(texts: list) -> None:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TagtuneError(f"text {i} is a {type(text).__name__}, not a string")


def _above(spans: list[list[Span]], min_score: float) -> list[list[Span]]:
    """Each text's spans scored at least ``min_score``."""
    return [[s for s in found if s.score >= min_score] for found in spans] if min_score > 0 else spans


def _span_tagger(opened, device, overlap: str, min_score: float, bf16: str) -> SpanTagger:
    """The SpanTagger of an opened span tagger folder. On PyTorch, on ``device`` (None: CUDA
    when available), its encoder in bf16 where ``bf16`` chooses it (the span head stays fp32);
    on ONNX Runtime, on the CPU as exported, in batches of ONNX_BATCH_TOKENS."""
    from tagtune.inference.spantagger import SpanTagger

    settings = opened.settings
    window = (opened.tokenizer, opened.labels, settings.max_span_words, settings.max_length, settings.stride)
    if opened.backend == "onnx":
        check_onnx_options(device, bf16)
        return SpanTagger(opened.model, None, *window, batch_tokens=ONNX_BATCH_TOKENS, overlap=overlap,
                          min_score=min_score, temperature=settings.temperature)
    import torch

    device = _torch_device(device) if device is not None else default_device()
    tagger = SpanTagger(opened.model.eval(), opened.span_head, *window, device, overlap=overlap, min_score=min_score,
                        temperature=settings.temperature)
    if use_bf16(bf16, device):
        opened.model.use_low_precision(torch.bfloat16)
    return tagger


def _torch_device(device):
    import torch

    return torch.device(device)


def token_tagger_only(tagger, source, what: str) -> None:
    """A one-line error when ``tagger`` (from ``source``) is a span tagger, for ``what`` works
    with token taggers only."""
    if not isinstance(tagger, Tagger):
        raise TagtuneError(f"{source}: a span tagger (--head span); {what} works with token taggers only")
