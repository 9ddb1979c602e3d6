"""TrainConfig: every setting of a training run, checked before anything is read or written."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tagtune.data.align import windows_of
from tagtune.data.schemes import SCHEMES
from tagtune.errors import TagtuneError
from tagtune.models.precision import check_bf16
from tagtune.store.layout import TaggerSettings


CHECKPOINT = "checkpoint/state.pt"
MIN_DEV_SPANS = 20
"""A dev set with fewer entity spans is scored but does not pick the best epoch or stop the run:
with under 20 spans one span more or less moves F1 by several points, so epochs would be
compared by noise."""


@dataclass
class TrainConfig:
    """Everything a training run depends on; saved as train_config.json."""

    model: str
    """Base checkpoint: a folder, or a Hub repo id org/name[@revision] (downloaded when not cached)."""
    train: str
    """Annotated training file (CoNLL, JSONL spans or keywords, Label Studio, Doccano)."""
    out: str
    """Output folder for the trained tagger."""
    dev: str | None = None
    """Dev file; None trains on all of train, unless dev_fraction holds a share of it out."""
    epochs: int = 3
    """Passes over the training data."""
    lr: float = 5e-5
    """Peak learning rate of AdamW."""
    batch_size: int | None = 32
    """Windows per batch; None when max_tokens is used."""
    max_tokens: int | None = None
    """Real tokens per batch instead of a window count."""
    bucket: bool = True
    """Group windows of similar length into batches (within pools of 50 batches, in a seeded
    random order), so attention pads less. With ``batch_size``, a batch then holds the tokens of
    ``batch_size`` windows of the mean length (a token budget), so that batches of long windows
    are no larger than the others."""
    max_length: int = 128
    """Window length in tokens, start and end tokens included; longer texts are windowed."""
    stride: int = 32
    """Tokens shared by consecutive windows of a long text."""
    warmup: float = 0.1
    """Linear warm-up: a fraction of all steps when < 1, else a number of steps."""
    weight_decay: float = 0.01
    """AdamW decay on weight matrices (never on biases and norms)."""
    clip: float = 1.0
    """Gradient norm clipping; 0 turns it off."""
    accumulation: int = 1
    """Batches whose gradients are summed before one optimizer step."""
    seed: int = 42
    """Seeds the head's initialisation, dropout, the data order and the dev split."""
    scheme: str = "BIO"
    """Tagging scheme: BIO, BIOES or IO."""
    all_subwords: bool = False
    """Label every subword, not just the first of each word."""
    patience: int | None = 3
    """Stop after this many epochs without a better dev F1; None never stops early. Only with a
    dev set of at least MIN_DEV_SPANS entity spans."""
    head_prior: bool = True
    """Start a new head's bias at the log frequencies of the training labels (see label_prior)."""
    save: str = "best"
    """Which model the output folder keeps: "best" (by dev entity F1) or "last" epoch's. Without
    a dev set of at least MIN_DEV_SPANS spans, the last epoch's either way."""
    dev_fraction: float | None = None
    """Share of train held out (seeded) as dev when no dev file is given, for the dev curve, the
    best epoch and early stopping; None trains on all of train, without a dev set."""
    format: str | None = None
    """Input format; None detects it from the file."""
    keyword_label: str = "KEY"
    """Label of spans read from keyword lists."""
    bf16: str = "auto"
    """bf16 mixed precision: "auto" (on where the hardware multiplies bf16 natively and faster:
    CUDA with bf16 support, CPUs with AVX512-BF16 or AMX whose bf16 matrix products measure
    faster than fp32, see cpu_bf16_pays), "on" or "off" (fp32 throughout)."""
    device: str | None = None
    """"cpu", "cuda", ...; None picks CUDA when available."""
    overwrite: bool = False
    """Replace an earlier tagtune run (or an empty folder) in ``out``: the new run is trained beside
    it and swapped in once finished; a folder that is not a tagtune run is never replaced."""
    resume: bool = False
    """Continue the unfinished run for ``out`` from its last checkpoint: the replacement being
    trained beside ``out`` when there is one, else the run in ``out``."""
    progress: bool = True
    """Show progress bars on stderr."""
    crf: bool = False
    """Put a linear-chain CRF on the classifier (tagtune.models.crf): learned start, transition and end
    scores where the scheme allows the step, trained with the sequence negative log-likelihood
    (per labelled token, as the cross-entropy it replaces), decoded by Viterbi with them, spans
    scored by the CRF's marginals. Kept in crf.json beside the weights."""

    RUN_FIELDS = ("overwrite", "resume", "progress", "device")  # may differ when resuming

    def normalised(self) -> TrainConfig:
        """The config as trained and saved: with a token budget (``max_tokens``), no window count."""
        return replace(self, batch_size=None) if self.max_tokens is not None else self

    def check(self) -> None:
        """Raise TagtuneError on an option out of range; changes nothing."""
        if self.scheme not in SCHEMES:
            raise TagtuneError(f"scheme {self.scheme!r} is not one of {', '.join(SCHEMES)}")
        if self.save not in ("best", "last"):
            raise TagtuneError(f"save must be best or last, got {self.save!r}")
        check_bf16(self.bf16)
        for name in ("epochs", "accumulation"):
            if getattr(self, name) < 1:
                raise TagtuneError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise TagtuneError(f"the learning rate must be positive, got {self.lr}")
        if self.max_length < 3:
            raise TagtuneError(f"max length must be at least 3 (start, end and one token), got {self.max_length}")
        if self.max_tokens is not None and self.max_tokens < self.max_length:
            raise TagtuneError(f"the token budget {self.max_tokens} is smaller than one window ({self.max_length})")
        if self.dev_fraction is not None:
            fraction = self.dev_fraction
            if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
                raise TagtuneError(f"--dev-fraction must be between 0 and 1 (exclusive), e.g. 0.1; got {fraction!r}")
            if self.dev:
                raise TagtuneError("pass --dev FILE or --dev-fraction, not both")
        windows_of(0, self.max_length, self.stride)  # checks the stride

    def settings(self) -> TaggerSettings:
        return TaggerSettings(self.scheme, self.all_subwords, self.max_length, self.stride, self.crf)
