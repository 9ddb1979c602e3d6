"""The post-processor every BERT-style tokenizer pipeline ends with: special tokens around the text.

Shared by :mod:`tagtune.text.tokenizer` and :mod:`tagtune.text.japanese`, so that neither imports the other
for it.
"""

from __future__ import annotations

from tokenizers import processors

from tagtune.errors import TagtuneError


def bert_post_processor(vocab: dict[str, int], cls: str, sep: str) -> processors.TemplateProcessing:
    """``[CLS] A [SEP]`` (and ``[CLS] A [SEP] B [SEP]`` for pairs), as BERT was trained."""
    for token in (cls, sep):
        if token not in vocab:
            raise TagtuneError(f"the vocabulary has no {token} token")
    return processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
