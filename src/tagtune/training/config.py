"""TrainConfig: every setting of a training run, checked before anything is read or written."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tagtune.data.align import windows_of
from tagtune.data.schemes import SCHEMES
from tagtune.errors import TagtuneError
from tagtune.models.precision import check_bf16
from tagtune.store.layout import ATTENTIONS, HEADS, MAX_SPAN_WORDS, TaggerSettings


CHECKPOINT = "checkpoint/state.pt"
TRACKERS = ("tensorboard", "mlflow", "wandb")
"""The experiment trackers a run can report to (``report_to``, ``--report-to``)."""
MIN_DEV_SPANS = 20
"""A dev set with fewer entity spans is scored but does not pick the best epoch or stop the run:
with under 20 spans one span more or less moves F1 by several points, so epochs would be
compared by noise."""


@dataclass
class TrainConfig:
    """Every setting of a training run; saved in the tagger folder as train_config.json.

    Only ``model``, ``train`` and ``out`` must be given; the other fields have the defaults of
    ``tagtune train``, whose options carry the same names (``batch_size`` is ``--batch-size``,
    ``bucket=False`` is ``--no-bucket``, ``head_prior=False`` is ``--no-head-prior``,
    ``progress=False`` is ``--quiet``). Making a config checks nothing: ``tagtune.train()``
    checks it (``check``) before it reads or writes anything.

    Example:
        ```python
        config = TrainConfig(model="sentence-transformers/all-MiniLM-L6-v2", train="train.conll",
                             out="my-tagger", dev_fraction=0.1, epochs=5, crf=True)
        tagtune.train(config)
        ```
    """

    model: str
    """Base checkpoint: a folder, or a Hub repo id org/name[@revision] (downloaded when not cached).
    A trained tagger continues from its weights, and from its head when this run's tags are its
    tags (else a new head is trained on its encoder)."""
    train: str
    """Annotated training file (CoNLL, JSONL spans or keywords, Label Studio, Doccano; see ``format``)."""
    out: str
    """Output folder for the trained tagger."""
    dev: str | None = None
    """Dev file, read as ``train`` is; None trains on all of train, unless dev_fraction holds a
    share of it out."""
    epochs: int = 3
    """Passes over the training data (at least 1)."""
    lr: float = 5e-5
    """Peak learning rate of AdamW (positive), reached after the warm-up and decayed linearly to 0."""
    batch_size: int | None = 32
    """Windows per batch (with ``bucket``, the token budget of that many windows of the mean
    length); None only with ``max_tokens``, which replaces it when given."""
    max_tokens: int | None = None
    """Real tokens per batch instead of a window count (at least ``max_length``); None: batches
    by ``batch_size``."""
    bucket: bool = True
    """Group windows of similar length into batches (within pools of 50 batches, in a seeded
    random order), so attention pads less. With ``batch_size``, a batch then holds the tokens of
    ``batch_size`` windows of the mean length (a token budget), so that batches of long windows
    are no larger than the others."""
    max_length: int = 128
    """Window length in tokens, start and end tokens included (at least 3, at most the model's
    positions); longer texts are windowed, never truncated."""
    stride: int = 32
    """Tokens shared by consecutive windows of a long text, from 0 to ``max_length`` - 3."""
    warmup: float = 0.1
    """Linear warm-up: a fraction of all steps when < 1, else a number of steps."""
    weight_decay: float = 0.01
    """AdamW decay on weight matrices (never on biases and norms)."""
    clip: float = 1.0
    """Gradient norm clipping; 0 turns it off."""
    accumulation: int = 1
    """Batches whose gradients are summed before one optimizer step (at least 1)."""
    seed: int = 42
    """Seeds the head's initialisation, dropout, the data order and the dev split."""
    scheme: str = "BIO"
    """Tagging scheme: BIO, BIOES or IO."""
    all_subwords: bool = False
    """Label every subword, not just the first of each word."""
    patience: int | None = 3
    """Stop after this many epochs without a better dev F1; None never stops early. Only with a
    dev set of at least MIN_DEV_SPANS (20) entity spans."""
    head_prior: bool = True
    """Start a new head's bias at the log frequencies of the training labels (see label_prior)."""
    save: str = "best"
    """Which model the output folder keeps: "best" (by dev entity F1) or "last" epoch's. Without
    a dev set of at least MIN_DEV_SPANS (20) spans, the last epoch's either way ("last" also
    silences the warning that the dev set is too small to choose by)."""
    dev_fraction: float | None = None
    """Share of train (between 0 and 1, exclusive) held out as dev, chosen by ``seed``, for the
    dev curve, the best epoch and early stopping; not with ``dev``. None trains on all of train,
    without a dev set unless ``dev`` names one."""
    format: str | None = None
    """Format of the train and dev files: "conll", "jsonl", "keywords", "label-studio" or
    "doccano"; None tells it from each file's name and content."""
    keyword_label: str = "KEY"
    """Label of the spans that the "keywords" format marks (each occurrence of a keyword)."""
    bf16: str = "auto"
    """bf16 mixed precision: "auto" (on where the hardware multiplies bf16 natively and faster:
    CUDA with bf16 support, CPUs with AVX512-BF16 or AMX whose bf16 matrix products measure
    faster than fp32, see cpu_bf16_pays), "on" or "off" (fp32 throughout)."""
    device: str | None = None
    """"cpu", "cuda", "cuda:1", ...; None picks CUDA when available."""
    overwrite: bool = False
    """Replace an earlier tagtune run (or an empty folder) in ``out``: the new run is trained beside
    it and swapped in once finished; a folder that is not a tagtune run is never replaced."""
    resume: bool = False
    """Continue the unfinished run for ``out`` from its last checkpoint: the replacement being
    trained beside ``out`` when there is one, else the run in ``out``. The run's saved settings
    are used; one given with another value than the run's (and than the default) is an error,
    except ``overwrite``, ``resume``, ``progress`` and ``device``."""
    progress: bool = True
    """Say what the run does on stderr (the data, device, precision, each epoch's scores) with
    progress bars; False leaves them out."""
    crf: bool = False
    """Put a linear-chain CRF on the classifier (tagtune.models.crf): learned start, transition and end
    scores where the scheme allows the step, trained with the sequence negative log-likelihood
    (per labelled token, as the cross-entropy it replaces), decoded by Viterbi with them, spans
    scored by the CRF's marginals. Kept in crf.json beside the weights."""
    head: str = "token"
    """What the tagger predicts: "token", a tag per word (flat spans, with ``scheme``); or "span",
    a label (or none) for every stretch of up to ``max_span_words`` words (tagtune.models.spanhead),
    so overlapping and nested spans are learnt and predicted."""
    max_span_words: int = 8
    """With ``head="span"``: the widest span, in words (1 to 64); wider entities are warned about
    and not learnt."""
    attention: str | None = None
    """"causal" (each token sees itself and the tokens before it) or "bidirectional" (every token
    of its window); None: the family's, causal for the decoders (llama, mistral, qwen2, qwen3,
    gemma, gemma2), bidirectional for the encoders, which cannot be causal. Kept in tagtune.json,
    so the trained tagger runs with it wherever tagtune opens it; transformers' token classifier
    runs the family's attention whatever tagtune.json says."""
    checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of storing them
    (activation checkpointing): training needs less memory for about a third more compute, with
    the same loss and gradients."""

    lora: int | None = None
    """Train LoRA adapters of this rank (at least 1) on the encoder's linear layers, with the base
    weights frozen, and save a PEFT adapter folder that names ``model`` as its base
    (tagtune.models.lora); None trains every weight."""
    lora_alpha: float | None = None
    """With ``lora``: the adapters' scale is lora_alpha / lora (positive); None is 2 * lora."""
    lora_dropout: float = 0.0
    """With ``lora``: dropout on the adapters' input, from 0 to 1 (exclusive); 0 (PEFT's default)
    draws no mask. The layers that read one input (query, key, value) share its mask."""
    lora_targets: list[str] | None = None
    """With ``lora``: the layers adapted, by transformers' names in a layer, as PEFT matches them
    ("query", "dense", "q_proj", "attention.output.dense"); None adapts the family's attention and
    MLP projections."""

    report_to: list[str] = field(default_factory=list)
    """Experiment trackers to report the run to, of "tensorboard", "mlflow" and "wandb" (each
    needs its extra, e.g. ``pip install 'tagtune[mlflow]'``): the settings at the start, the
    training loss and learning rate every ``log_every`` steps, the dev scores and tokens/s of each
    epoch, the final metrics (see tagtune.training.trackers)."""
    log_every: int = 50
    """With ``report_to``: log the loss and learning rate every this many optimizer steps (at
    least 1)."""

    RUN_FIELDS = ("overwrite", "resume", "progress", "device", "report_to", "log_every")  # may differ when resuming
    """The fields a resumed run takes as given rather than from the run's saved config."""

    def normalised(self) -> TrainConfig:
        """The config as trained and saved: with a token budget (``max_tokens``), no window count.

        Returns:
            This config, or a copy with ``batch_size`` None when ``max_tokens`` is set.
        """
        return replace(self, batch_size=None) if self.max_tokens is not None else self

    def check(self) -> None:
        """Check that every option is in range; changes nothing.

        Raises:
            TagtuneError: When one is not, with a message that names it: an unknown scheme,
                bf16 or save value, epochs or accumulation below 1, a learning rate that is not
                positive, a window, token budget, stride or dev fraction out of range, or both
                ``dev`` and ``dev_fraction``, an unknown head, a span width out of range, or
                ``crf``, a scheme other than BIO or ``all_subwords`` with the span head, an unknown
                tracker in ``report_to`` or ``log_every`` below 1, a LoRA rank below 1, alpha that is
                not positive, dropout outside [0, 1), or a LoRA option without ``lora``.
        """
        self.check_head()
        self.check_reporting()
        self.check_lora()
        if self.attention is not None and self.attention not in ATTENTIONS:
            raise TagtuneError(f"--attention must be causal or bidirectional, got {self.attention!r}")
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

    def check_reporting(self) -> None:
        """Check ``report_to`` (known tracker names, each once) and ``log_every``."""
        names = self.report_to
        if (isinstance(names, str) or not isinstance(names, (list, tuple))
                or any(not isinstance(name, str) or name not in TRACKERS for name in names)
                or len(set(names)) != len(names)):
            raise TagtuneError(f"report_to must list trackers from {', '.join(TRACKERS)}, each once "
                               f"(e.g. [\"tensorboard\"]), got {names!r}")
        every = self.log_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise TagtuneError(f"--log-every must be a whole number of steps, at least 1, got {every!r}")

    def check_lora(self) -> None:
        """Check the LoRA options: a rank of at least 1, a positive alpha, a dropout in [0, 1), target
        names as a list of strings; none of them without ``lora``."""
        rank = self.lora
        if rank is None:
            given = [option for option, value in (("--lora-alpha", self.lora_alpha), ("--lora-targets", self.lora_targets))
                     if value is not None]
            if given:
                raise TagtuneError(f"{given[0]} is an option of LoRA training; add --lora R (a rank such as 16)")
            return
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise TagtuneError(f"--lora must be a whole rank of at least 1 (such as 16), got {rank!r}")
        alpha = self.lora_alpha
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0):
            raise TagtuneError(f"--lora-alpha must be a positive number (default 2 x the rank), got {alpha!r}")
        p = self.lora_dropout
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise TagtuneError(f"--lora-dropout must be from 0 to 1 (exclusive), got {p!r}")
        names = self.lora_targets
        if names is not None and (isinstance(names, str) or not isinstance(names, (list, tuple)) or not names
                                  or any(not isinstance(n, str) or not n for n in names)):
            raise TagtuneError(f"--lora-targets must name layers, such as query,value; got {names!r}")

    @property
    def lora_scale_alpha(self) -> float:
        """The LoRA alpha trained with: ``lora_alpha``, or twice the rank."""
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora

    def check_head(self) -> None:
        """Check ``head`` and ``max_span_words``, and that the span head comes without the token
        head's options (a CRF, a scheme, every subword labelled)."""
        if self.head not in HEADS:
            raise TagtuneError(f"head must be token or span, got {self.head!r}")
        words = self.max_span_words
        if isinstance(words, bool) or not isinstance(words, int) or not 1 <= words <= MAX_SPAN_WORDS:
            raise TagtuneError(f"--max-span-words must be an integer from 1 to {MAX_SPAN_WORDS}, got {words!r}")
        if self.head != "span":
            return
        for given, option in ((self.crf, "--crf"), (self.scheme != "BIO", f"--scheme {self.scheme}"),
                              (self.all_subwords, "--all-subwords")):
            if given:
                raise TagtuneError(f"{option} is an option of the token head; --head span labels whole spans "
                                   f"(drop {option.split()[0]}, or drop --head span)")

    def settings(self) -> TaggerSettings:
        """The settings the trained tagger keeps in tagtune.json: scheme, subwords, window, CRF
        and head (the span head's labels are added once the data is read)."""
        return TaggerSettings(self.scheme, self.all_subwords, self.max_length, self.stride, self.crf,
                              head=self.head, max_span_words=self.max_span_words)
