"""The command line: each subcommand calls one library function and prints its result.

Errors a user can fix (tagtune.TagtuneError) print one line, ``tagtune: error: ...``, and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except TagtuneError as e:
        print(f"tagtune: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tagtune: interrupted", file=sys.stderr)
        return 130
