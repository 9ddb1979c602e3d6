"""``tagtune info``: a checkpoint or tagger folder loaded, checked and summarised."""

from __future__ import annotations

import os

from tagtune.inference.load import check_vocab
from tagtune.models.checkpoint import load_model
from tagtune.store.layout import SETTINGS_FILE, TaggerSettings, read_crf
from tagtune.text.tokenizer import load_tokenizer


def describe(source: str | os.PathLike) -> dict:
    """Load a checkpoint with its tokenizer, check they fit together, and summarise it. A tagger
    folder's tagtune.json (and crf.json, where it names a CRF) are read and checked too, as
    loading the tagger would."""
    model, report = load_model(source)
    tokenizer = load_tokenizer(report.directory)
    check_vocab(tokenizer, model.config, report.directory)
    c = model.config
    tagger = {}
    if (report.directory / SETTINGS_FILE).is_file():
        settings = TaggerSettings.read(report.directory, c.labels, c)
        if settings.crf:
            read_crf(report.directory, c.labels, settings.scheme)
        tagger = {"tagger": {"scheme": settings.scheme, "all_subwords": settings.all_subwords,
                             "max_length": settings.max_length, "stride": settings.stride, "crf": settings.crf}}
    return {
        "directory": str(report.directory),
        "architecture": c.model_type,
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "heads": c.num_attention_heads,
        "parameters": model.num_parameters(),
        "labels": c.labels,
        "tokenizer": tokenizer.kind,
        "vocab_size": tokenizer.vocab_size,
        "dropped_weights": report.dropped,
        **tagger,
    }
