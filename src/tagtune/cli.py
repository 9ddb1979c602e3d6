"""The command line: each subcommand calls one library function and prints its result.

Errors a user can fix (tagtune.TagtuneError) print one line, ``tagtune: error: ...``, and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from tagtune.data import FORMATS
from tagtune.errors import TagtuneError


def cmd_info(args) -> int:
    from tagtune.checkpoint import describe

    print(json.dumps(describe(args.model), indent=2, ensure_ascii=False))
    return 0


def cmd_tokenize(args) -> int:
    from tagtune.checkpoint import resolve
    from tagtune.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(resolve(args.model))
    texts = args.text or (line.rstrip("\n") for line in sys.stdin)
    for text in texts:
        enc = tokenizer.encode(text, add_special_tokens=args.special)
        tokens = [{"token": t, "id": i, "start": s, "end": e}
                  for t, i, (s, e) in zip(enc.tokens, enc.ids, enc.offsets)]
        print(json.dumps({"text": text, "tokens": tokens}, ensure_ascii=False))
    return 0


def cmd_train(args) -> int:
    from dataclasses import fields

    from tagtune.training import TrainConfig, train

    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if getattr(args, f.name, None) is not None}
    if not args.resume:
        missing = [f"--{name}" for name in ("model", "train") if name not in given]
        if missing:
            raise TagtuneError(f"train needs {' and '.join(missing)} (or --resume to continue a run in --out)")
    given.setdefault("model", None)
    given.setdefault("train", None)
    given["progress"] = not args.quiet
    result = train(TrainConfig(**given))
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def cmd_evaluate(args) -> int:
    from tagtune.training import evaluate

    print(json.dumps(evaluate(args.model_dir, args.file, args.format, device=args.device), indent=2))
    return 0


def cmd_predict(args) -> int:
    from tagtune.predict import predict_file

    predict_file(args.model_dir, args.input, args.output, device=args.device, batch_texts=args.batch_texts,
                 progress=not args.quiet, argmax=args.argmax, overwrite=args.overwrite, backend=args.backend)
    return 0


def cmd_serve(args) -> int:
    from tagtune.serve import Limits, serve

    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, max_total_chars=args.max_total_chars,
                    max_body=args.max_body)
    serve(args.model_dir, host=args.host, port=args.port, limits=limits, device=args.device,
          batch_texts=args.batch_texts, batch_wait=args.batch_wait_ms / 1000, access_log=args.access_log)
    return 0


def cmd_export(args) -> int:
    from tagtune.export import export_onnx, summary

    report = export_onnx(args.model_dir, args.onnx, overwrite=args.overwrite, int8=args.int8,
                         eval_file=args.eval, eval_format=args.format)
    print(json.dumps(report, indent=2))
    if not args.quiet:
        print(summary(report), file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tagtune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="load a model folder or cached hub id and describe it")
    p.add_argument("model", help="model folder, or org/name[@revision] in the local Hugging Face cache")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("tokenize", help="print tokens with character offsets into the text, as JSON lines")
    p.add_argument("model", help="model folder, or org/name[@revision] in the local Hugging Face cache")
    p.add_argument("text", nargs="*", help="texts to tokenise (default: one per line from stdin)")
    p.add_argument("--special", action="store_true", help="include the start and end tokens")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("train", help="fine-tune a model on annotated text; writes a tagger folder")
    p.add_argument("--model", help="base model folder or cached hub id (e.g. cl-tohoku/bert-base-japanese-v3)")
    p.add_argument("--train", help="annotated training file (CoNLL, JSONL spans or keywords, Label Studio, Doccano)")
    p.add_argument("--dev", help="dev file for per-epoch evaluation (default: 10%% of --train, seeded)")
    p.add_argument("--out", required=True, help="output folder for the trained tagger")
    p.add_argument("--epochs", type=int, help="passes over the data (default 3)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 5e-5)")
    p.add_argument("--batch-size", type=int, help="windows per batch, as a token budget of that many mean-length "
                   "windows unless --no-bucket (default 32)")
    p.add_argument("--max-tokens", type=int, help="real tokens per batch, instead of --batch-size")
    p.add_argument("--no-bucket", dest="bucket", action="store_const", const=False,
                   help="batches in plain seeded random order, not grouped by length; with --batch-size, "
                        "that many windows per batch (default: grouped by length, and --batch-size N means "
                        "the tokens of N windows of the mean length)")
    p.add_argument("--bucket", dest="bucket", action="store_const", const=True, help=argparse.SUPPRESS)
    p.add_argument("--max-length", type=int, help="window length in tokens; longer texts are windowed (default 128)")
    p.add_argument("--stride", type=int, help="tokens shared by consecutive windows (default 32)")
    p.add_argument("--warmup", type=float, help="warm-up: fraction of steps if < 1, else steps (default 0.1)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay on matrices (default 0.01)")
    p.add_argument("--clip", type=float, help="gradient norm clipping, 0 for none (default 1.0)")
    p.add_argument("--accumulation", type=int, help="batches per optimizer step (default 1)")
    p.add_argument("--seed", type=int, help="random seed (default 42)")
    p.add_argument("--scheme", choices=["BIO", "BIOES", "IO"], help="tagging scheme (default BIO)")
    p.add_argument("--all-subwords", action="store_const", const=True, help="label every subword, not only the first")
    p.add_argument("--patience", type=int, help="stop after N epochs without a better dev F1 (default 3)")
    p.add_argument("--no-head-prior", dest="head_prior", action="store_const", const=False,
                   help="keep HF's zero bias on a new head instead of the training labels' log frequencies")
    p.add_argument("--save", choices=["best", "last"], help="keep the best epoch's model by dev F1 (default) or the last")
    p.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--keyword-label", help="label of spans from keyword lists (default KEY)")
    p.add_argument("--bf16", choices=["auto", "on", "off"], help="bf16 autocast (default auto: CUDA with bf16)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when available)")
    p.add_argument("--overwrite", action="store_const", const=True, help="replace --out if it holds an earlier run")
    p.add_argument("--resume", action="store_const", const=True, help="continue the interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained tagger on an annotated file; prints JSON")
    p.add_argument("model_dir", help="trained tagger folder")
    p.add_argument("file", help="annotated file")
    p.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="spans for texts, as JSON lines {text, spans}")
    p.add_argument("model_dir", help="trained tagger folder")
    p.add_argument("input", nargs="?", default="-",
                   help="text file (one text per line) or JSONL with a text field; - or nothing for stdin")
    p.add_argument("-o", "--output", default="-", help="output JSONL file (default stdout)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--batch-texts", type=int, default=512, help="texts read and tagged at a time (default 512)")
    p.add_argument("--argmax", action="store_true", help="per-token argmax instead of constrained decoding")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="PyTorch or ONNX Runtime (default auto: ONNX for a folder with model.onnx and no weights)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="serve a tagger over HTTP: POST /v1/extract, a page to try it at /")
    p.add_argument("model_dir", help="trained tagger folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--max-texts", type=int, default=128, help="texts per request (default 128)")
    p.add_argument("--max-chars", type=int, default=10_000, help="characters per text (default 10000)")
    p.add_argument("--max-total-chars", type=int, default=100_000,
                   help="characters in all texts of a request (default 100000)")
    p.add_argument("--max-body", type=int, default=1_048_576, help="request body bytes (default 1048576)")
    p.add_argument("--batch-texts", type=int, default=256,
                   help="texts of concurrent requests tagged together at most (default 256)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default 5 ms)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="write an ONNX tagger folder (model.onnx, config, tokenizer) from a trained one")
    p.add_argument("model_dir", help="trained tagger folder")
    p.add_argument("--onnx", required=True, metavar="OUT_DIR",
                   help="output folder: model.onnx plus the config and tokenizer files, for the ONNX backend")
    p.add_argument("--int8", action="store_true", help="quantise the weights to int8 (ONNX Runtime dynamic quantisation)")
    p.add_argument("--eval", metavar="FILE", help="annotated file: report entity F1 of PyTorch, fp32 ONNX (and int8)")
    p.add_argument("--format", choices=FORMATS, help="format of --eval (default: detected)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds an earlier export")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    p.set_defaults(func=cmd_export)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for users (alignment, keywords) as one plain line, not a source listing."""
    print(f"tagtune: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except TagtuneError as e:
        print(f"tagtune: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tagtune: interrupted", file=sys.stderr)
        return 130
