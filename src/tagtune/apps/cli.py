"""The command line: each subcommand calls one library function and prints its result.

Errors a user can fix (tagtune.TagtuneError) print one line, ``tagtune: error: ...``, and exit 1.
A closed stdout (``tagtune predict ... | head``) ends the command quietly with exit status 0, as
the reader chose to stop reading: no traceback, nothing more written.

Each command imports its module when it runs (the imports inside the cmd_ functions), so that
``tagtune --help`` and a mistyped option answer without loading torch, the tokenizers or a model.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import signal
import sys
import warnings

from tagtune.apps._pool import INPUT_FORMATS
from tagtune.data.formats import FORMATS
from tagtune.errors import TagtuneError, Terminated
from tagtune.version import __version__


def cmd_info(args) -> int:
    from tagtune.apps.info import describe

    print(json.dumps(describe(args.model), indent=2, ensure_ascii=False))
    return 0


def cmd_tokenize(args) -> int:
    from tagtune.store.hub import resolve
    from tagtune.text.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(resolve(args.model))
    texts = args.text or (line.rstrip("\n") for line in sys.stdin)
    for text in texts:
        enc = tokenizer.encode(text, add_special_tokens=args.special)
        tokens = [{"token": t, "id": i, "start": s, "end": e}
                  for t, i, (s, e) in zip(enc.tokens, enc.ids, enc.offsets)]
        print(json.dumps({"text": text, "tokens": tokens}, ensure_ascii=False))
    return 0


def keep_freed_memory() -> None:
    """For the batch commands (train, predict): glibc's malloc keeps what a step frees for the
    next step instead of handing it back to the kernel and faulting it in again. By default
    blocks over a moving threshold (at most 32 MB) are mapped and unmapped on every allocation,
    and free memory at the top of the heap is trimmed on free; a training step of MiniLM then
    took some thousands of page faults. Here every block comes from the heap and nothing is
    trimmed on free (the taggers still hand free pages back once per chunk of texts, see
    inference.runtime.release_freed_memory): peak memory is the same (the freed blocks are
    reused), the process's system time fell by a third and an fp32 MiniLM epoch ran 1-2%
    faster. Elsewhere than glibc this does nothing."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    mallopt(M_MMAP_THRESHOLD, 1 << 30)
    mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)


def cmd_train(args) -> int:
    from dataclasses import fields

    from tagtune.training.config import TrainConfig

    from tagtune.training.loop import train

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if not args.resume:
        missing = [f"--{name}" for name in ("model", "train") if name not in given]
        if missing:
            raise TagtuneError(f"train needs {' and '.join(missing)} (or --resume to continue a run in --out)")
    given.setdefault("model", None)
    given.setdefault("train", None)
    given["progress"] = not args.quiet
    keep_freed_memory()
    with _sigterm_as_interrupt():
        result = train(TrainConfig(**given))
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises Terminated (a KeyboardInterrupt) while the block runs, so that a stopped
    run is left as Ctrl-C leaves it."""
    def terminated(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_evaluate(args) -> int:
    from tagtune.inference.evaluate import evaluate

    scores = evaluate(args.model_dir, args.file, args.format, device=args.device, progress=not args.quiet,
                      bf16=args.bf16)
    print(json.dumps(scores, indent=2))
    return 0


def cmd_predict(args) -> int:
    from tagtune.apps.predict import predict_file

    keep_freed_memory()
    predict_file(args.model_dir, args.input, args.output, device=args.device, batch_texts=args.batch_texts,
                 progress=not args.quiet, argmax=args.argmax, overwrite=args.overwrite, backend=args.backend,
                 format=args.format, min_score="auto" if args.min_score is None else args.min_score, bf16=args.bf16,
                 overlap=args.overlap)
    return 0


def cmd_push(args) -> int:
    from tagtune.apps.push import push

    url = push(args.model_dir, args.repo_id, private=args.private, revision=args.revision,
               commit_message=args.commit_message, dry_run=args.dry_run, progress=not args.quiet)
    if url:
        print(url)
    return 0


def tracker_list(value: str) -> list[str]:
    """--report-to's value: tracker names, comma-separated, each one of TRACKERS, none twice."""
    from tagtune.training.config import TRACKERS

    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{value!r}: name trackers from {', '.join(TRACKERS)}, comma-separated, "
                                         "each once")
    return names


def add_bf16_option(p) -> None:
    """--bf16 for the commands that run a tagger (train has its own, for mixed precision)."""
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="run the encoder in bf16; auto: where the hardware multiplies bf16 natively and faster "
                        "than fp32 (CUDA GPUs with bf16, CPUs with AVX512-BF16 or AMX measured faster), fp32 "
                        "elsewhere; on forces it; off: fp32. An ONNX folder runs as exported")


def field_default(cls, name: str):
    """The default of the dataclass ``cls``'s field ``name``."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def parameter_default(function, name: str):
    """The default of ``function``'s parameter ``name``."""
    return inspect.signature(function).parameters[name].default


@functools.lru_cache(maxsize=None)
def train_defaults() -> dict:
    """TrainConfig's defaults by field name, for train's --help; empty without torch, which the
    training module needs (train then says how to install it)."""
    try:
        from tagtune.training.config import TrainConfig
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        return {}
    return {f.name: field_default(TrainConfig, f.name) for f in dataclasses.fields(TrainConfig)
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}


class _ShowDefaults(argparse.HelpFormatter):
    """Help that ends each option with its default, ``(default 128)``, unless the help says
    what its default means itself or the default is None or a flag's."""

    def default_of(self, action):
        return action.default

    def _get_help_string(self, action):
        text = action.help or ""
        value = self.default_of(action)
        if (not action.option_strings or "(default" in text or value is None or value is argparse.SUPPRESS
                or isinstance(value, bool)):
            return text
        return f"{text} (default {value:g})" if isinstance(value, float) else f"{text} (default {value})"


class _TrainConfigDefaults(_ShowDefaults):
    """train's help, with TrainConfig's defaults. The options themselves default to None, "not
    given", which --resume tells apart from a value given again; TrainConfig is looked up only
    when the help is shown."""

    def default_of(self, action):
        return train_defaults().get(action.dest)


def cmd_serve(args) -> int:
    from tagtune.apps.serve import Limits, serve

    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, max_total_chars=args.max_total_chars,
                    max_body=args.max_body)
    serve(args.model_dir, host=args.host, port=args.port, limits=limits, device=args.device,
          batch_texts=args.batch_texts, batch_wait=args.batch_wait_ms / 1000, access_log=args.access_log,
          timeout=args.timeout, max_queue=args.max_queue, min_score=args.min_score, bf16=args.bf16)
    return 0


def score_or_auto(value: str) -> float | str:
    """A --min-score given as a number, or auto: the tagger's head chooses."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, or auto, got {value!r}") from None


def cmd_annotate(args) -> int:
    from tagtune.apps.annotate import annotate

    with _sigterm_as_interrupt():  # OUT is closed (removed if still empty) as on Ctrl-C
        annotate(args.texts, args.out, labels=args.labels, model=args.model, host=args.host, port=args.port,
                 device=args.device, access_log=args.access_log, progress=not args.quiet, bf16=args.bf16,
                 overlaps=args.overlaps, suggestions=args.suggestions)
    return 0


def cmd_select(args) -> int:
    from tagtune.apps.select import select

    select(args.model_dir, args.pool, args.n, args.output, format=args.format, overwrite=args.overwrite,
           max_similarity=args.max_similarity, device=args.device, progress=not args.quiet, bf16=args.bf16)
    return 0


def cmd_export(args) -> int:
    from tagtune.inference.export import export_onnx, summary

    report = export_onnx(args.model_dir, args.onnx, overwrite=args.overwrite, int8=args.int8,
                         eval_file=args.eval, eval_format=args.format, progress=not args.quiet)
    print(json.dumps(report, indent=2))
    if not args.quiet:
        print(summary(report), file=sys.stderr)
    return 0


def cmd_merge(args) -> int:
    from tagtune.models.lora import merge_folder

    out = merge_folder(args.adapter_dir, args.out, overwrite=args.overwrite)
    print(json.dumps({"out": str(out)}))
    return 0


def cmd_label(args) -> int:
    from tagtune.apps.label import label

    label(args.texts, args.output, labels=args.labels, llm=args.llm, model=args.llm_model, guide=args.guide,
          examples=args.examples, k=args.k, examples_format=args.examples_format, format=args.format,
          head=args.head, concurrency=args.concurrency, max_requests=args.max_requests, timeout=args.timeout,
          retries=args.retries, temperature=args.temperature, dry_run=args.dry_run, overwrite=args.overwrite,
          input_format=args.input_format, cache=args.cache, progress=not args.quiet)
    return 0


def cmd_score(args) -> int:
    from tagtune.apps.score import score_files

    scores = score_files(args.gold, args.pred, gold_format=args.gold_format or args.format,
                         pred_format=args.pred_format or args.format, missing=args.missing)
    print(json.dumps(scores, indent=2))
    return 0


DESCRIPTION = "Fine-tune BERT-family encoders into token taggers (entities, keywords, any spans) and run them."
EPILOG = """examples:
  tagtune train --model bert-base-cased --train train.conll --out my-tagger
  echo "Angela Merkel visited Lisbon" | tagtune predict my-tagger
  tagtune serve my-tagger --port 8080
  tagtune annotate texts.txt --labels PER,ORG --out annotations.jsonl
  tagtune select my-tagger pool.txt -n 200 -o tasks.json --format label-studio
  tagtune export my-tagger --onnx my-tagger-onnx --int8
  tagtune label texts.txt -o teacher.jsonl --labels PER,ORG --llm http://localhost:11434/v1 --llm-model qwen2.5:7b
  tagtune score gold.conll teacher.jsonl
  tagtune push my-tagger your-name/my-tagger
  tagtune merge my-lora-tagger my-merged-tagger

Run 'tagtune COMMAND --help' for the options of a command."""


def version() -> str:
    """The installed distribution's version, or the package's own when it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        return installed("tagtune")
    except (ImportError, PackageNotFoundError):
        return __version__


class _Version(argparse.Action):
    """--version, looking the version up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"tagtune {version()}")
        parser.exit()


def _described(add_parser):
    """``sub.add_parser`` that also shows a command's one-line help atop its own --help."""

    def add(name, **kwargs):
        if "help" in kwargs and "description" not in kwargs:
            kwargs["description"] = kwargs["help"][0].upper() + kwargs["help"][1:] + "."
        return add_parser(name, **kwargs)

    return add


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagtune", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, title="commands", metavar="COMMAND")
    sub.add_parser = _described(sub.add_parser)

    p = sub.add_parser("info", help="load a model folder or Hub model and describe it")
    p.add_argument("model", help="model folder, or Hub id org/name[@revision] (downloaded into the Hugging Face "
                   "cache unless already there)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("tokenize", help="print tokens with character offsets into the text, as JSON lines")
    p.add_argument("model", help="model folder, or Hub id org/name[@revision] (downloaded into the Hugging Face "
                   "cache unless already there)")
    p.add_argument("text", nargs="*", help="texts to tokenise (default: one per line from stdin)")
    p.add_argument("--special", action="store_true", help="include the start and end tokens")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("train", help="fine-tune a model on annotated text; writes a tagger folder",
                       formatter_class=_TrainConfigDefaults)
    p.add_argument("--model", help="base model folder or Hub id org/name[@revision], downloaded unless cached "
                   "(e.g. cl-tohoku/bert-base-japanese-v3)")
    p.add_argument("--train", help="annotated training file (CoNLL, JSONL spans or keywords, Label Studio, Doccano)")
    p.add_argument("--dev", help="dev file for per-epoch evaluation, the best epoch and early stopping "
                   "(default: none, train on all of --train)")
    p.add_argument("--dev-fraction", type=float, metavar="F",
                   help="without --dev, hold this share of --train out as the dev set (seeded), e.g. 0.1")
    p.add_argument("--out", required=True, help="output folder for the trained tagger")
    p.add_argument("--epochs", type=int, help="passes over the data")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--batch-size", type=int, help="windows per batch, as a token budget of that many mean-length "
                   "windows unless --no-bucket")
    p.add_argument("--max-tokens", type=int, help="real tokens per batch, instead of --batch-size")
    p.add_argument("--no-bucket", dest="bucket", action="store_const", const=False,
                   help="batches in plain seeded random order, not grouped by length; with --batch-size, "
                        "that many windows per batch (default: grouped by length, and --batch-size N means "
                        "the tokens of N windows of the mean length)")
    p.add_argument("--bucket", dest="bucket", action="store_const", const=True, help=argparse.SUPPRESS)
    p.add_argument("--max-length", type=int, help="window length in tokens; longer texts are windowed")
    p.add_argument("--stride", type=int, help="tokens shared by consecutive windows")
    p.add_argument("--warmup", type=float, help="warm-up: fraction of steps if < 1, else steps")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices")
    p.add_argument("--clip", type=float, help="gradient norm clipping, 0 for none")
    p.add_argument("--accumulation", type=int, help="batches per optimizer step")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--scheme", choices=["BIO", "BIOES", "IO"], help="tagging scheme")
    p.add_argument("--all-subwords", action="store_const", const=True, help="label every subword, not only the first")
    p.add_argument("--crf", action="store_const", const=True,
                   help="a linear-chain CRF on the classifier: learned tag transition scores (within the "
                        "scheme's rules), trained with the sequence likelihood and used in decoding; kept in "
                        "crf.json beside the weights")
    p.add_argument("--head", choices=["token", "span"],
                   help="token: a tag per word (flat spans); span: a label for every stretch of up to "
                        "--max-span-words words, so overlapping and nested spans are learnt")
    p.add_argument("--max-span-words", type=int, metavar="N", help="with --head span, the widest span in words "
                   "(1 to 64)")
    p.add_argument("--attention", choices=["causal", "bidirectional"],
                   help="attention of the model (default: the family's, causal for decoders, bidirectional for "
                        "encoders); kept in tagtune.json, which only tagtune reads")
    p.add_argument("--checkpointing", action="store_const", const=True,
                   help="recompute each layer's activations in the backward pass instead of storing them: "
                        "less memory, about a third more compute")
    p.add_argument("--lora", type=int, metavar="R", help="train LoRA adapters of rank R (such as 16) on the frozen "
                   "base model, and save a PEFT adapter folder that names --model as its base")
    p.add_argument("--lora-alpha", type=float, metavar="A", help="with --lora, the adapters' scale is A / R "
                   "(default: 2R)")
    p.add_argument("--lora-dropout", type=float, metavar="P", help="with --lora, dropout on the adapters' input")
    p.add_argument("--lora-targets", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                   metavar="NAME,...", help="with --lora, the layers adapted, by transformers' names in a layer "
                   "(e.g. query,value or q_proj,v_proj; default: the attention and MLP projections)")
    p.add_argument("--patience", type=int, help="stop after N epochs without a better dev F1; "
                   "only with a dev set of at least 20 entity spans")
    p.add_argument("--no-head-prior", dest="head_prior", action="store_const", const=False,
                   help="keep HF's zero bias on a new head instead of the training labels' log frequencies")
    p.add_argument("--save", choices=["best", "last"], help="keep the best epoch's model by dev F1 or the last "
                   "epoch's; without a dev set of at least 20 entity spans, the last")
    p.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--keyword-label", help="label of spans from keyword lists")
    p.add_argument("--bf16", choices=["auto", "on", "off"],
                   help="bf16 mixed precision; auto: on for CUDA GPUs with bf16 and for CPUs with AVX512-BF16 "
                        "or AMX whose bf16 matrix products measure faster than fp32, fp32 elsewhere; on forces "
                        "it, emulated where not native; off: fp32")
    p.add_argument("--report-to", type=tracker_list, metavar="NAME,...",
                   help="send the run to experiment trackers: tensorboard, mlflow, wandb (comma-separated; "
                        "each needs its extra, e.g. pip install 'tagtune[mlflow]'): the settings, loss and learning "
                        "rate every --log-every steps, dev scores and tokens/s each epoch, the final metrics")
    p.add_argument("--log-every", type=int, metavar="N", help="with --report-to, log loss and learning rate every "
                   "N optimizer steps")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    p.add_argument("--overwrite", action="store_const", const=True, help="replace --out if it holds an earlier run")
    p.add_argument("--resume", action="store_const", const=True, help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained tagger on an annotated file; prints JSON")
    p.add_argument("model_dir", help="trained tagger folder, or Hub id org/name[@revision] (downloaded unless cached)")
    p.add_argument("file", help="annotated file")
    p.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    add_bf16_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress output (warnings and errors only)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="tag texts with a trained tagger; prints JSON lines {text, spans}",
                       formatter_class=_ShowDefaults)
    from tagtune.apps.predict import predict_file

    p.add_argument("model_dir", help="trained tagger folder, or Hub id org/name[@revision] (downloaded unless cached)")
    p.add_argument("input", nargs="?", default="-",
                   help="texts: a text per line, JSONL with a \"text\" field, or CoNLL (a token per line, "
                        "a blank line between sentences); - or nothing for stdin, where a terminal gets each "
                        "line answered as it is entered")
    p.add_argument("--format", choices=INPUT_FORMATS,
                   help="read the input as text, jsonl or conll (default: detected from the file name "
                        "and first lines)")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="output JSONL file (default: stdout)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    add_bf16_option(p)
    p.add_argument("--batch-texts", type=int, default=parameter_default(predict_file, "batch_texts"), metavar="N",
                   help="texts (lines, records or sentences) read and tagged at a time")
    p.add_argument("--argmax", action="store_true", help="per-token argmax instead of constrained decoding")
    p.add_argument("--min-score", type=float, metavar="P",
                   help="leave out spans whose score, the probability that the span is an entity of its label, "
                        "is below P (0 to 1; default 0.5 for a span tagger, 0 for a token tagger)")
    p.add_argument("--overlap", choices=["nested", "flat", "any"], default="nested",
                   help="a span tagger's spans: nested (disjoint or one within another), flat (disjoint) or any "
                        "(every span scoring at least --min-score); a token tagger's never overlap")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="PyTorch or ONNX Runtime (default auto: ONNX for a folder with model.onnx and no weights)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--quiet", action="store_true",
                   help="nothing on stderr but errors and warnings: no progress bar, input format or terminal hint")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="serve a tagger over HTTP (POST /v1/extract), with a page to try it",
                       formatter_class=_ShowDefaults)
    p.add_argument("model_dir", help="trained tagger folder, or Hub id org/name[@revision] (downloaded unless cached)")
    from tagtune.apps.serve import Limits, serve

    def serve_default(name):
        return parameter_default(serve, name)

    p.add_argument("--host", default=serve_default("host"), metavar="ADDRESS",
                   help="address to listen on")
    p.add_argument("--port", type=int, default=serve_default("port"), metavar="N",
                   help="port; 0 picks a free one")
    p.add_argument("--max-texts", type=int, default=field_default(Limits, "max_texts"), metavar="N",
                   help="texts per request")
    p.add_argument("--max-chars", type=int, default=field_default(Limits, "max_chars"), metavar="N",
                   help="characters per text")
    p.add_argument("--max-total-chars", type=int, default=field_default(Limits, "max_total_chars"), metavar="N",
                   help="characters in all texts of a request")
    p.add_argument("--max-body", type=int, default=field_default(Limits, "max_body"), metavar="BYTES",
                   help="request body size")
    p.add_argument("--batch-texts", type=int, default=serve_default("batch_texts"), metavar="N",
                   help="texts of concurrent requests tagged together at most")
    p.add_argument("--batch-wait-ms", type=float, default=serve_default("batch_wait") * 1000, metavar="MS",
                   help="how long a request waits for others to share its batch")
    p.add_argument("--timeout", type=float, default=serve_default("timeout"), metavar="SECONDS",
                   help="answer 503 to a request still waiting for its answer after this long; 0: never")
    p.add_argument("--max-queue", type=int, default=serve_default("max_queue"), metavar="N",
                   help="texts that may wait for the model; beyond, 503 at once with Retry-After")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    add_bf16_option(p)
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--min-score", type=score_or_auto, default=serve_default("min_score"), metavar="P",
                   help="leave out spans whose score (their probability, 0 to 1) is below P, unless a request "
                        "asks otherwise with \"min_score\" (default auto: 0.5 for a span tagger, 0 for a token "
                        "tagger)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("annotate", help="label texts in a browser page, one at a time, into a JSONL file that "
                       "train reads", formatter_class=_ShowDefaults)
    p.add_argument("texts", help="texts to label: a text per line, or JSON Lines with a \"text\" field (and an "
                   "optional \"id\")")
    p.add_argument("--labels", metavar="A,B,...", help="the labels, comma-separated; the first 9 get keys 1-9 "
                   "(default with --model: the tagger's)")
    p.add_argument("--out", required=True, metavar="FILE", help="JSONL file the answers are appended to, each as "
                   "soon as it is given; an existing one is continued")
    p.add_argument("--model", metavar="DIR", help="trained tagger folder: its spans are suggested and the texts "
                   "come most uncertain first (default: none, file order)")
    p.add_argument("--suggestions", metavar="FILE", help="annotated file (tagtune label's output, any format train "
                   "reads) whose spans of each text are suggested, those with --labels' labels only; texts in file "
                   "order (not with --model)")
    p.add_argument("--overlaps", action="store_true",
                   help="let a span lie inside another or across one (University of Tokyo, ORG, over Tokyo, LOC), "
                        "for train --head span; on with a span tagger's --model; needed for --suggestions that "
                        "nest or overlap")
    from tagtune.apps.annotate import annotate

    p.add_argument("--host", default=parameter_default(annotate, "host"), metavar="ADDRESS",
                   help="address to listen on")
    p.add_argument("--port", type=int, default=parameter_default(annotate, "port"), metavar="N",
                   help="port; 0 picks a free one")
    p.add_argument("--device", help="device of --model: cpu, cuda, ... (default: CUDA when available)")
    add_bf16_option(p)
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--quiet", action="store_true", help="no progress bar while --model tags the texts")
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("select", help="choose the texts of a pool the tagger is least sure of, written with its "
                       "spans as pre-annotations to correct", formatter_class=_ShowDefaults)
    from tagtune.apps.select import OUTPUT_FORMATS, select

    p.add_argument("model_dir", help="trained tagger folder, or Hub id org/name[@revision] (downloaded unless cached)")
    p.add_argument("pool", help="unlabelled texts: a text per line, or JSON Lines with a \"text\" field")
    p.add_argument("-n", type=int, required=True, metavar="N", help="how many texts to choose")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="file the chosen texts are written to")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=parameter_default(select, "format"),
                   help="jsonl (tagtune's spans), label-studio (JSON import with predictions) or doccano (JSONL)")
    p.add_argument("--max-similarity", type=float, default=parameter_default(select, "max_similarity"),
                   metavar="J", help="leave out a text whose character 5-grams have a Jaccard similarity of at "
                   "least J with a text already chosen")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    add_bf16_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    p.add_argument("--quiet", action="store_true", help="nothing on stderr but errors and warnings")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("export", help="write an ONNX tagger folder (model.onnx, config, tokenizer) from a trained one")
    p.add_argument("model_dir", help="trained tagger folder, or Hub id org/name[@revision] (downloaded unless cached)")
    p.add_argument("--onnx", required=True, metavar="OUT_DIR",
                   help="output folder: model.onnx plus the config and tokenizer files, for the ONNX backend")
    p.add_argument("--int8", action="store_true", help="quantise the weights to int8 (ONNX Runtime dynamic quantisation)")
    p.add_argument("--eval", metavar="FILE", help="annotated file: report entity F1 of PyTorch, fp32 ONNX (and int8)")
    p.add_argument("--format", choices=FORMATS, help="format of --eval (default: detected)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds an earlier export")
    p.add_argument("--quiet", action="store_true", help="no progress or summary on stderr")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("merge", help="fold a LoRA tagger's adapters into its base model: a plain tagger folder")
    p.add_argument("adapter_dir", help="LoRA tagger folder (tagtune train --lora), or Hub id org/name[@revision]")
    p.add_argument("out", help="output folder for the merged tagger")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("label", help="label texts with a teacher language model behind an OpenAI-compatible API "
                       "(Ollama, vLLM, llama.cpp, OpenAI), into spans to review and train on",
                       formatter_class=_ShowDefaults)
    from tagtune.apps.label import FORMATS as LABEL_FORMATS
    from tagtune.apps.label import label

    def label_default(name):
        return parameter_default(label, name)

    p.add_argument("texts", help="texts to label: a text per line, JSONL with a \"text\" field (and an optional "
                   "\"id\"), or CoNLL (a token per line, a blank line between sentences)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="file the labels go to; an earlier run's is continued (texts it holds are not asked "
                        "again), and OUT.llm-cache beside it keeps every reply, so a rerun sends nothing it has")
    p.add_argument("--labels", metavar="A,B,...", help="the labels to ask for, comma-separated "
                   "(default: those of --guide)")
    p.add_argument("--llm", metavar="URL", help="the server's base URL, e.g. http://localhost:11434/v1 (Ollama), "
                   "http://localhost:8000/v1 (vLLM), https://api.openai.com/v1 (default: OPENAI_BASE_URL); "
                   "OPENAI_API_KEY is sent as the key where set")
    p.add_argument("--llm-model", metavar="NAME", required=True, help="the model as the server names it, "
                   "e.g. qwen2.5:7b; the records' \"source\" is llm:NAME")
    p.add_argument("--guide", metavar="FILE", help="a line 'LABEL: what it covers' for each label, told to the model")
    p.add_argument("--examples", metavar="GOLD", help="annotated file (any format train reads) whose texts are "
                   "shown to the model as worked examples")
    p.add_argument("-k", type=int, default=label_default("k"), metavar="N",
                   help="worked examples from --examples: first texts that show a label not yet shown, then the "
                        "earliest")
    p.add_argument("--examples-format", choices=FORMATS, help="format of --examples (default: detected)")
    p.add_argument("--format", choices=LABEL_FORMATS, default=label_default("format"),
                   help="jsonl (tagtune's spans), label-studio (JSON import with the spans as predictions) or "
                        "doccano (JSONL import)")
    p.add_argument("--input-format", choices=INPUT_FORMATS,
                   help="read TEXTS as text, jsonl or conll (default: detected from the name and first lines)")
    p.add_argument("--head", choices=["token", "span"], default=label_default("head"),
                   help="token: of overlapping spans the longer is kept, as the token head learns; span: all are "
                        "kept, for train --head span")
    p.add_argument("--concurrency", type=int, default=label_default("concurrency"), metavar="N",
                   help="requests in flight at once")
    p.add_argument("--max-requests", type=int, metavar="N", help="send at most N requests in this run (the "
                   "cache answers the rest it has); run again to go on")
    p.add_argument("--timeout", type=float, default=label_default("timeout"), metavar="SECONDS",
                   help="a request without an answer after this long is tried again")
    p.add_argument("--retries", type=int, default=label_default("retries"), metavar="N",
                   help="retries of a request after a timeout, a dropped connection, 429 (after its Retry-After) "
                        "or 5xx, with exponential backoff; then the run stops, its answers kept")
    p.add_argument("--temperature", type=float, default=label_default("temperature"), metavar="T",
                   help="sampling temperature asked for")
    p.add_argument("--dry-run", action="store_true", help="print the first request as JSON and send nothing")
    p.add_argument("--cache", metavar="FILE", help="the replies' cache (default: OUT.llm-cache); name another "
                   "OUT's to write the same answers in another --format without asking again")
    p.add_argument("--overwrite", action="store_true", help="start OUT again from nothing (the cache still answers "
                   "the texts it has)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary on stderr")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("push", help="upload a tagger folder to the Hugging Face Hub (or HF_ENDPOINT) as a model "
                       "repo, in one commit; `tagtune predict REPO_ID` downloads it back")
    p.add_argument("model_dir", help="trained tagger folder (or its ONNX export)")
    p.add_argument("repo_id", help="the repo to create or update, e.g. your-name/wnut-minilm")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its "
                   "visibility)")
    p.add_argument("--revision", metavar="BRANCH", help="commit to this branch, created from main when missing "
                   "(default: main)")
    p.add_argument("--commit-message", metavar="M", help="the commit's message (default: names the tagger)")
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded and send nothing")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("score", help="entity precision, recall and F1 of an annotation file against a gold one, "
                       "per label and micro (no model needed); prints JSON", formatter_class=_ShowDefaults)
    p.add_argument("gold", help="the gold annotated file")
    p.add_argument("pred", help="the annotated file to score (a teacher's labels, a tagger's predictions, another "
                   "labeller's answers); its texts are paired with GOLD's by text")
    p.add_argument("--format", choices=FORMATS, help="format of both files (default: detected)")
    p.add_argument("--gold-format", choices=FORMATS, help="format of GOLD, where it differs")
    p.add_argument("--pred-format", choices=FORMATS, help="format of PRED, where it differs")
    from tagtune.apps.score import MISSING

    p.add_argument("--missing", choices=MISSING, default=MISSING[0],
                   help="a GOLD text that PRED lacks: error, empty (scored as predicted without spans) or skip "
                        "(left out); PRED texts that GOLD lacks are left out and counted")
    p.set_defaults(func=cmd_score)
    for p in sub.choices.values():
        p.set_defaults(command_parser=p)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for users (alignment, keywords) as one plain line, not a source listing."""
    print(f"tagtune: warning: {message}", file=sys.stderr)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that a command's positionals may also come after its options
    (``tagtune predict my-tagger --quiet texts.txt``), which argparse alone refuses."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    command = args.command
    args = args.command_parser.parse_intermixed_args(argv[argv.index(command) + 1:])
    args.command = command
    return args


def _discard_output() -> None:
    """Point a closed stdout (and stderr, if closed too) at /dev/null, so that nothing more is
    written and the interpreter's flush at exit finds no broken pipe to report."""
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        if stream is sys.stderr:
            try:
                stream.flush()
                continue  # stderr still works: keep it
            except OSError:
                pass
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):  # no file descriptor (a stream replaced in Python)
            pass


def main(argv: list[str] | None = None) -> int:
    """Run the command of ``argv`` (default: sys.argv); returns the exit status. Warnings show as
    ``tagtune: warning: ...`` lines while it runs; the previous ``warnings.showwarning`` is back
    when it returns."""
    shown = warnings.showwarning
    try:
        try:
            args = parse(build_parser(), argv)
            warnings.showwarning = _show_warning
            try:
                return args.func(args)
            except TagtuneError as e:
                print(f"tagtune: error: {e}", file=sys.stderr)
                return 1
            except Terminated as e:
                print("tagtune: terminated" + (f"; {e}" if str(e) else ""), file=sys.stderr)
                return 143
            except KeyboardInterrupt as e:
                print("tagtune: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
                return 130
            except ModuleNotFoundError as e:
                if e.name != "torch":
                    raise
                print(f"tagtune: error: {args.command} needs PyTorch, which is not installed: "
                      "pip install 'tagtune[torch]' (or the build for your machine from pytorch.org)",
                      file=sys.stderr)
                return 1
        finally:
            if sys.stdout is not None:
                sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's flush at exit
    except BrokenPipeError:  # the reader stopped reading (| head): stop quietly, like other tools
        _discard_output()
        return 0
    finally:
        warnings.showwarning = shown
