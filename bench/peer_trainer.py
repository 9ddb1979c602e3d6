"""The peer: fine-tuning with the transformers Trainer, the way the HF token-classification
guide does it (first-subword labels, DataCollatorForTokenClassification's dynamic padding,
seqeval metrics, evaluation each epoch, best checkpoint by F1).

    python bench/peer_trainer.py DATA_DIR OUT_DIR --model M --labels O,B-x,... [--epochs ...]

DATA_DIR holds train.conll, dev.conll, test.conll (token TAB tag). Writes OUT_DIR/test_tags.jsonl
(the predicted word tags of each test sentence) and OUT_DIR/stats.json (training tokens, time,
the seconds of each epoch without its evaluation and checkpoint, and on CUDA the peak GPU memory).
"""

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback


def read_conll(path):
    sentences, tokens, tags = [], [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        token, tag = line.rsplit("\t", 1)
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    return sentences


class EpochTimer(TrainerCallback):
    """Seconds of each epoch's training steps: from the epoch's start to its last step, before
    the evaluation and checkpoint that follow (with CUDA's queued work finished at both ends)."""

    def __init__(self):
        self.seconds, self.start = [], 0.0

    def on_epoch_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_epoch_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds.append(time.perf_counter() - self.start)


def warmup_arguments(warmup: float, fields: set[str]) -> dict:
    """TrainingArguments' warm-up of ``warmup`` (below 1: a fraction of all steps, else steps) for
    the installed transformers, whose TrainingArguments has ``fields``: transformers 4 takes a
    fraction as ``warmup_ratio`` (its ``warmup_steps`` is a count, and 0.1 would mean almost no
    warm-up); transformers 5 has no ``warmup_ratio`` and reads a ``warmup_steps`` below 1 as one."""
    if warmup < 1 and "warmup_ratio" in fields:
        return {"warmup_ratio": warmup}
    return {"warmup_steps": warmup if warmup < 1 else int(warmup)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--model", required=True)
    parser.add_argument("--labels", required=True, help="comma-separated tags, O first")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--random-init", action="store_true", help="random weights of the model's shape")
    parser.add_argument("--attn", help="attn_implementation of the model (sdpa, eager, ...); "
                                       "default: transformers' choice")
    args = parser.parse_args()

    from seqeval.metrics import f1_score
    from transformers import (AutoConfig, AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification, Trainer, TrainingArguments, set_seed)

    set_seed(args.seed)
    labels = args.labels.split(",")
    label2id = {label: i for i, label in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    data = {split: read_conll(Path(args.data) / f"{split}.conll") for split in ("train", "dev", "test")}

    def encode(sentences):
        enc = tokenizer([t for t, _ in sentences], is_split_into_words=True, truncation=True,
                        max_length=args.max_length)
        rows = []
        for i, (_, tags) in enumerate(sentences):
            word_ids = enc.word_ids(i)
            previous, row_labels = None, []
            for w in word_ids:
                row_labels.append(-100 if w is None or w == previous else label2id[tags[w]])
                previous = w
            rows.append({"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
                         "labels": row_labels})
        return rows

    train, dev, test = (encode(data[s]) for s in ("train", "dev", "test"))
    kwargs = {"num_labels": len(labels), "id2label": dict(enumerate(labels)), "label2id": label2id}
    if args.attn:
        kwargs["attn_implementation"] = args.attn
    if args.random_init:
        config = AutoConfig.from_pretrained(args.model, **kwargs)
        model = AutoModelForTokenClassification.from_config(config)
    else:
        model = AutoModelForTokenClassification.from_pretrained(args.model, **kwargs)

    def compute_metrics(prediction):
        logits, gold = prediction
        pred = logits.argmax(-1)
        pred_tags = [[labels[p] for p, g in zip(pr, go) if g != -100] for pr, go in zip(pred, gold)]
        gold_tags = [[labels[g] for g in go if g != -100] for go in gold]
        return {"f1": f1_score(gold_tags, pred_tags)}

    training_args = TrainingArguments(
        output_dir=str(Path(args.out) / "trainer"),
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        weight_decay=args.weight_decay,
        **warmup_arguments(args.warmup, {f.name for f in dataclasses.fields(TrainingArguments)}),
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        save_total_limit=1,
        seed=args.seed,
        bf16=args.bf16,
        report_to=[],
        disable_tqdm=True,
        logging_strategy="no",
    )
    timer = EpochTimer()
    trainer = Trainer(model=model, args=training_args, train_dataset=train, eval_dataset=dev,
                      data_collator=DataCollatorForTokenClassification(tokenizer), compute_metrics=compute_metrics,
                      callbacks=[timer])
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    gpu = {}
    if torch.cuda.is_available():
        gpu = {"cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated(),
               "cuda_peak_reserved_bytes": torch.cuda.max_memory_reserved()}

    start = time.perf_counter()
    output = trainer.predict(test)
    predict_seconds = time.perf_counter() - start
    pred = output.predictions.argmax(-1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "test_tags.jsonl", "w", encoding="utf-8") as f:
        for row, (pr, go) in enumerate(zip(pred, output.label_ids)):
            tags = [labels[p] for p, g in zip(pr, go) if g != -100]
            words = len(data["test"][row][0])
            tags += ["O"] * (words - len(tags))  # words cut off by truncation get no prediction
            f.write(json.dumps(tags) + "\n")
    real_tokens = sum(len(r["input_ids"]) for r in train)
    stats = {"train_seconds": train_seconds, "predict_seconds": predict_seconds,
             "real_train_tokens": real_tokens * args.epochs, "threads": torch.get_num_threads(),
             "epoch_seconds": timer.seconds, "attn_implementation": model.config._attn_implementation, **gpu}
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


if __name__ == "__main__":
    np.set_printoptions(linewidth=200)
    main()
