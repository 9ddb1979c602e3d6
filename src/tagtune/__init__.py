"""tagtune: fine-tune BERT-family encoders into token taggers that return character spans.

``train()`` fine-tunes a Hugging Face encoder (a local folder or a Hub id) on an annotated file
(CoNLL, JSONL spans or keywords, Label Studio, doccano) and writes a tagger folder;
``Tagger.load()`` opens that folder and the tagger turns texts into ``Span``s: the characters
``text[start:end]``, a label and a score, the probability that exactly those characters form one
entity of that label. ``evaluate()`` scores a trained tagger on another annotated file.
``label()`` has a teacher language model (any OpenAI-compatible server) label texts into a file
``train()`` reads, and ``score_files()`` scores one annotated file against another, no model
needed (a teacher, a student, two labellers on one gold file). Problems a user can fix (a bad
file, a bad option) raise ``TagtuneError`` with a one-line message.

Example:
    ```python
    import tagtune

    result = tagtune.train(model="bert-base-cased", train="train.conll", out="my-tagger",
                           dev_fraction=0.1)
    print(result["epoch"], result["f1"])  # the kept epoch and its dev F1
    tagger = tagtune.Tagger.load("my-tagger")
    for span in tagger("Angela Merkel visited Lisbon."):
        print(span.start, span.end, span.label, span.score)
    print(tagtune.evaluate("my-tagger", "test.conll")["f1"])
    ```

The public API is what ``__all__`` names. Tagger and TrainConfig, and the modules behind
train() and evaluate(), are imported on first use (torch, the model), so ``import tagtune`` is
quick.
"""

from __future__ import annotations

from tagtune.errors import TagtuneError
from tagtune.spans import Example, Span
from tagtune.version import __version__

__all__ = ["Example", "Span", "TagtuneError", "Tagger", "TrainConfig", "train", "evaluate", "read", "label",
           "score_files", "__version__"]

TYPE_CHECKING = False
if TYPE_CHECKING:  # for type checkers and the annotations only: ``import tagtune`` loads none of these
    import os
    from typing import Any

    from tagtune.apps.label import Tally
    from tagtune.inference.tagger import Tagger
    from tagtune.training.config import TrainConfig


def train(config: TrainConfig | None = None, /, **settings: Any) -> dict:
    """Fine-tune an encoder into a tagger and save it as a model folder.

    Pass a TrainConfig, or its fields as keyword arguments: ``model``, ``train`` and ``out`` are
    required, every other setting has the default TrainConfig gives it. The options, the data,
    the labels, the model and the output folder are all checked before anything is written.
    What the run does (data, device, precision, a progress bar, each epoch's loss and dev
    scores) is said on stderr, unless ``progress=False``.

    Without a dev set (``dev`` or ``dev_fraction``) every epoch runs and the last one is kept.
    With one, every epoch is scored on it, the best by dev entity F1 is kept (``save="best"``)
    and the run stops early after ``patience`` epochs without a better F1; a dev set of fewer
    than 20 entity spans is scored but chooses nothing.

    The folder ``out`` then holds a Hugging Face token-classification model (config.json,
    model.safetensors, the tokenizer files) with tagtune.json, train_config.json, metrics.jsonl
    and report.html; ``Tagger.load(out)`` opens it.

    Args:
        config: Every setting of the run; leave it out to pass the settings as keywords.
        **settings: TrainConfig's fields by name, when no ``config`` is given.

    Returns:
        The kept epoch's result: ``out`` (the folder), ``epoch`` (counted from 1),
            ``train_loss``, ``dev_texts`` (0 without a dev set) and the dev entity scores
            ``precision``, ``recall``, ``f1``, ``macro_f1`` and ``per_label`` (label ->
            ``precision``, ``recall``, ``f1``, ``support``), each None without a dev set.

    Raises:
        TagtuneError: When a file cannot be read or is malformed (the message names the file
            and line), a setting is out of range, the model or its tokenizer cannot be loaded,
            ``out`` exists (without ``overwrite``, or holding something other than a tagtune
            run) or cannot be written. A run that fails before its first epoch is saved
            removes the folder it made; a later failure leaves it resumable with
            ``resume=True``, and the message says so.
        TypeError: When both a config and keyword settings are given, or a keyword is not a
            TrainConfig field, or a required one is missing.
        KeyboardInterrupt: On Ctrl-C; once the first checkpoint is written the run stays
            resumable.

    Example:
        ```python
        import tagtune

        result = tagtune.train(model="sentence-transformers/all-MiniLM-L6-v2",
                               train="train.conll", dev="dev.conll", out="my-tagger", epochs=5)
        print(result["epoch"], result["f1"])

        config = tagtune.TrainConfig(model="bert-base-cased", train="train.jsonl", out="other",
                                     scheme="BIOES", crf=True)
        tagtune.train(config)
        ```
    """
    from tagtune.training.config import TrainConfig
    from tagtune.training.loop import train as run  # lazy, as all of these: the loop imports torch

    if config is None:
        config = TrainConfig(**settings)
    elif settings:
        raise TypeError("pass a TrainConfig or keyword settings, not both")
    return run(config)


def evaluate(directory: str | os.PathLike, path: str | os.PathLike, **options: Any) -> dict:
    """Entity scores of a trained tagger on an annotated file.

    A predicted span counts as found only where the file has a span with exactly its start, end
    and label. Labels in the file that the tagger does not know are warned about (a
    ``UserWarning``): their spans count as missed.

    Args:
        directory: The tagger: a folder that ``train()`` or ``tagtune export`` wrote (or any
            Hugging Face token-classification folder), or a Hub repo id
            ``org/name[@revision]``.
        path: The annotated file, in any format ``train()`` reads.
        **options: ``format`` (None: told from the file name and content; else "conll",
            "jsonl", "keywords", "label-studio" or "doccano"), ``keyword_label`` (the label of
            keyword spans, "KEY"), ``device`` (None: CUDA when available), ``progress``
            (True: say what is done on stderr, with a progress bar) and ``bf16`` ("auto",
            "on" or "off", as for ``Tagger.load``).

    Returns:
        Micro ``precision``, ``recall`` and ``f1``; ``macro_precision``, ``macro_recall`` and
            ``macro_f1`` (means over the labels); ``support`` (the file's spans) and
            ``per_label`` (label -> ``precision``, ``recall``, ``f1``, ``support``).

    Raises:
        TagtuneError: When the file cannot be read or is malformed, or the tagger cannot be
            loaded (see ``Tagger.load``).

    Example:
        ```python
        scores = tagtune.evaluate("my-tagger", "test.conll", progress=False)
        print(f"F1 {scores['f1']:.3f}", {label: s["f1"] for label, s in scores["per_label"].items()})
        ```
    """
    from tagtune.inference.evaluate import evaluate as run  # lazy: numpy, tokenizers and the tagger on first use

    return run(directory, path, **options)


def read(path: str | os.PathLike, format: str | None = None, keyword_label: str = "KEY",
         overlaps: bool = False) -> list[Example]:
    """The annotated texts of a file, as ``train()`` and ``evaluate()`` read them.

    Args:
        path: The file: CoNLL, JSONL with spans or keywords, a Label Studio export or a doccano
            export.
        format: None to tell it from the file name and content, else "conll", "jsonl",
            "keywords", "label-studio" or "doccano".
        keyword_label: The label of the spans the ``keywords`` format marks.
        overlaps: Keep overlapping and nested spans; without it they are an error (a tagger
            that tags each word once cannot learn them).

    Returns:
        One Example per text, its spans sorted; records a file marks as skipped are left out.

    Raises:
        TagtuneError: When the file cannot be read or a record is malformed: the message names
            the file and line.

    Example:
        ```python
        gold = tagtune.read("dev.conll")
        print(len(gold), sum(len(example.spans) for example in gold))
        ```
    """
    from tagtune.data.formats import read_examples  # lazy: the readers are needed only when reading

    return read_examples(path, format, keyword_label, overlaps=overlaps)


def label(texts: str | os.PathLike, out: str | os.PathLike, labels: str | None = None, llm: str | None = None,
          llm_model: str | None = None, **options: Any) -> Tally:
    """Label texts with a teacher language model, into a file to review and train on.

    Each distinct text of ``texts`` is sent to the chat-completions API of ``llm`` (Ollama,
    vLLM, llama.cpp's server, LM Studio, OpenAI) through the ``openai`` client (the ``llm``
    extra); the entities of each reply are placed into character spans by tagtune, every
    occurrence on whole words (any substring in Japanese or Chinese), and written to ``out``
    with the text's id and ``"source": "llm:MODEL"``. Each reply is cached beside ``out``
    (``OUT.llm-cache``) and fsynced as it arrives, so a run stopped at any moment and started
    again asks only what was not answered. Requests that fail are retried with backoff; one
    that still fails stops the run with what was answered kept. Set ``OPENAI_API_KEY`` for a
    server that needs a key.

    Args:
        texts: The texts: a text per line, JSON Lines with a ``"text"`` (and an optional
            ``"id"``), or CoNLL sentences.
        out: The file the labels go to; an earlier run's is continued.
        labels: The labels to ask for, ``"PER,ORG,LOC"``; without it, those of ``guide``.
        llm: The server's base URL, e.g. ``http://localhost:11434/v1`` (None: the
            ``OPENAI_BASE_URL`` environment variable).
        llm_model: The model as the server names it, e.g. ``qwen2.5:7b``.
        **options: ``guide`` (a file of ``LABEL: description`` lines told to the model),
            ``examples`` (an annotated file whose texts are shown as worked examples, ``k`` of
            them, 5; ``examples_format``), ``format`` ("jsonl", tagtune's spans, which
            ``train()`` reads; "doccano"; "label-studio", its JSON import with the spans as
            predictions), ``head`` ("token": of overlapping spans the longer is kept; "span":
            both), ``concurrency`` (8 requests at once), ``max_requests`` (None: no limit),
            ``timeout`` (120 seconds a request), ``retries`` (4), ``temperature`` (0),
            ``cache`` (another cache file, e.g. an earlier run's in another format: nothing
            asked again), ``overwrite`` (start ``out`` again), ``input_format`` (None: told
            from the file), ``dry_run`` (print the first request, send nothing) and
            ``progress`` (True: a progress bar and a summary on stderr).

    Returns:
        What the run did (attributes): ``asked`` (requests sent), ``cached`` (texts answered
            from the cache), ``written`` (records written), ``spans``, ``retries``,
            ``prompt_tokens`` and ``completion_tokens`` (as the server reports them),
            ``unreadable`` (replies without the entities JSON: their texts are asked again by
            the next run), ``left`` (texts not asked because of ``max_requests``) and
            ``dropped`` (entities not placed, by cause: ``absent`` from the text, ``unasked``
            labels, ``malformed`` items, ``overlapping`` spans).

    Raises:
        TagtuneError: When an option or a file is wrong, the ``openai`` client is not
            installed, ``out`` is written by another run or another model, or a request fails
            after its retries (the message names the server and the cause; what was answered
            is kept, and the same call goes on from there).

    Example:
        ```python
        tally = tagtune.label("texts.txt", "teacher.jsonl", labels="PER,ORG,LOC",
                              llm="http://localhost:11434/v1", llm_model="qwen2.5:7b", progress=False)
        print(tally.written, tally.spans, tally.asked)
        examples = tagtune.read("teacher.jsonl")  # as train() reads it
        ```
    """
    from tagtune.apps.label import label as run  # lazy: the teacher's prompts, the client on first use

    return run(texts, out, labels=labels, llm=llm, model=llm_model, **options)


def score_files(gold: str | os.PathLike, pred: str | os.PathLike, gold_format: str | None = None,
                pred_format: str | None = None, missing: str = "error") -> dict:
    """Entity scores of one annotated file against another, without a model.

    Both files are read as ``train()`` reads them (overlapping spans kept) and their texts are
    paired by text, whatever order each file has (the n-th occurrence of a text in ``gold`` with
    its n-th in ``pred``). A span of ``pred`` counts as found only where ``gold`` has one with
    the same start, end and label: for flat spans, seqeval's numbers in its default mode.

    Args:
        gold: The gold annotated file, in any format ``train()`` reads.
        pred: The file to score: a teacher's labels, a tagger's predictions, another
            labeller's answers.
        gold_format: The format of ``gold`` (None: told from the file name and content; else
            "conll", "jsonl", "keywords", "label-studio" or "doccano").
        pred_format: The format of ``pred``, as ``gold_format``.
        missing: What a ``gold`` text that ``pred`` lacks does: "error" (stop, naming it),
            "empty" (scored as predicted without spans, its entities missed) or "skip" (left
            out). A ``pred`` text that ``gold`` lacks is left out and counted.

    Returns:
        Micro ``precision``, ``recall`` and ``f1``; ``macro_precision``, ``macro_recall`` and
            ``macro_f1``; ``support`` (the gold spans scored) and ``per_label`` (label ->
            ``precision``, ``recall``, ``f1``, ``support``), as ``evaluate()`` returns them;
            and ``texts`` (pairs scored), ``missing`` (gold texts ``pred`` lacks) and
            ``unscored`` (``pred`` texts ``gold`` lacks).

    Raises:
        TagtuneError: When a file cannot be read or is malformed, ``missing`` is none of its
            values, a gold text is missing with ``missing="error"``, or no text is in both.

    Example:
        ```python
        teacher = tagtune.score_files("test.conll", "teacher-test.jsonl")
        print(f"teacher F1 {teacher['f1']:.3f} on {teacher['texts']} texts")
        ```
    """
    from tagtune.apps.score import score_files as run  # lazy: the readers and metrics on first use

    return run(gold, pred, gold_format=gold_format, pred_format=pred_format, missing=missing)


def __getattr__(name):
    # Tagger and TrainConfig on first use, so that ``import tagtune`` stays light.
    if name == "Tagger":
        from tagtune.inference.tagger import Tagger

        return Tagger
    if name == "TrainConfig":
        from tagtune.training.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'tagtune' has no attribute {name!r}")
