"""Tokenisation with character offsets into the original text, for every supported checkpoint.

Three kinds of checkpoint folder are read:

* ``tokenizer.json`` (any model the `tokenizers` library describes): loaded as it is, with its
  truncation and padding switched off (tagtune windows long texts itself, it never truncates).
* ``vocab.txt`` only (older BERT checkpoints): the BERT WordPiece pipeline is rebuilt from
  ``tokenizer_config.json`` (lowercasing, accent stripping, CJK splitting).
* ``tokenizer_config.json`` naming ``BertJapaneseTokenizer`` (cl-tohoku and similar): MeCab word
  splitting then WordPiece or character subwords, see :mod:`tagtune.japanese`.

Whatever normalisation runs (lowercasing, accent stripping, NFKC), ``Encoding.offsets`` are
character positions in the text the caller passed: ``text[start:end]`` is the token's source.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers

from tagtune import safejson
from tagtune.errors import TagtuneError
from tagtune.postprocess import bert_post_processor

# Files that make up a tokenizer in an HF checkpoint folder; saving copies those present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
)


@dataclass
class Encoding:
    """One text, tokenised. Offsets are ``(start, end)`` character positions in the original
    text; special tokens ([CLS], [SEP], <s>, </s>) have ``(0, 0)`` and ``special`` set.
    ``words`` numbers the pre-tokenizer word each token belongs to (None for special tokens)."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    tokens: list[str]
    special: list[bool]
    words: list[int | None]

    def __len__(self) -> int:
        return len(self.ids)


def _read_json(path: Path) -> dict:
    return safejson.read_object(path)


def read_vocab(path: Path) -> dict[str, int]:
    """A WordPiece ``vocab.txt``: one token per line, the line number is its id. Read as
    transformers reads it: lines end at newlines only, and a repeated token keeps its last id."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TagtuneError(f"{path}: not UTF-8 text") from None
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    vocab = {token: i for i, token in enumerate(lines)}
    if not text:
        raise TagtuneError(f"{path}: the vocabulary is empty")
    return vocab


def _wordpiece_backend(vocab: dict[str, int], config: dict) -> Backend:
    """The BERT WordPiece pipeline for a checkpoint that ships only ``vocab.txt``."""
    unk = config.get("unk_token", "[UNK]")
    if unk not in vocab:
        raise TagtuneError(f"the vocabulary has no unknown token {unk!r}")
    backend = Backend(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = bert_post_processor(
        vocab, config.get("cls_token", "[CLS]"), config.get("sep_token", "[SEP]")
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _special(config: dict, name: str, default: str) -> str:
    """A special token's text from tokenizer_config.json, which holds a string or an AddedToken dict."""
    value = config.get(name, default)
    if isinstance(value, dict):
        value = value.get("content", default)
    return value if isinstance(value, str) else default


class Tokenizer:
    """A checkpoint's tokenizer, giving ids and original-text character offsets.

    Load with :func:`load_tokenizer`; :meth:`save` writes files that both tagtune and
    transformers' ``AutoTokenizer`` read back.
    """

    def __init__(self, backend: Backend, source: Path, kind: str):
        self.backend = backend
        self.source = source
        self.kind = kind  # "tokenizer.json", "wordpiece" or "japanese"
        self.backend.no_truncation()
        self.backend.no_padding()
        specials = self.backend.encode("", add_special_tokens=True)
        if len(specials.ids) != 2:
            raise TagtuneError(
                f"{source}: the tokenizer does not wrap a text in one start and one end token "
                f"(got {specials.tokens}); tagtune needs a BERT-style [CLS] ... [SEP] template"
            )
        self.cls_id, self.sep_id = specials.ids
        self.cls_token, self.sep_token = specials.tokens
        self.pad_id = self._pad_id()

    def _pad_id(self) -> int:
        for token in ("[PAD]", "<pad>"):
            i = self.backend.token_to_id(token)
            if i is not None:
                return i
        return 0

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce (added tokens included)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def max_id(self) -> int:
        return max(self.backend.get_vocab(with_added_tokens=True).values())

    def _to_encoding(self, enc) -> Encoding:
        special = [bool(s) for s in enc.special_tokens_mask]
        offsets = [(0, 0) if s else (int(a), int(b)) for (a, b), s in zip(enc.offsets, special)]
        words = [None if s else w for w, s in zip(enc.word_ids, special)]
        return Encoding(ids=list(enc.ids), offsets=offsets, tokens=list(enc.tokens), special=special, words=words)

    def encode(self, text: str, add_special_tokens: bool = False) -> Encoding:
        """Tokenise one text. Without special tokens by default: windows add them."""
        return self._to_encoding(self.backend.encode(text, add_special_tokens=add_special_tokens))

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[Encoding]:
        """Tokenise many texts (in parallel where the backend allows it)."""
        encs = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [self._to_encoding(e) for e in encs]

    def save(self, directory: Path) -> None:
        """Copy the tokenizer files of the source checkpoint into ``directory``."""
        directory = Path(directory)
        for name in TOKENIZER_FILES:
            src = self.source / name
            if src.is_file():
                shutil.copyfile(src, directory / name)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint folder (see the module docstring for what is read)."""
    directory = Path(directory)
    config_path = directory / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    tokenizer_class = config.get("tokenizer_class") or ""
    if tokenizer_class.startswith("BertJapaneseTokenizer"):
        from tagtune import japanese

        vocab_path = directory / config.get("vocab_file", "vocab.txt")
        if not vocab_path.is_file():
            raise TagtuneError(f"{directory}: BertJapaneseTokenizer needs {vocab_path.name}, which is missing")
        backend = japanese.build_backend(read_vocab(vocab_path), config)
        return Tokenizer(backend, directory, "japanese")
    if (directory / "tokenizer.json").is_file():
        path = directory / "tokenizer.json"
        try:
            backend = Backend.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on bad files
            raise TagtuneError(f"{path}: not a readable tokenizer file ({e})") from None
        return Tokenizer(backend, directory, "tokenizer.json")
    if (directory / "vocab.txt").is_file():
        vocab = read_vocab(directory / "vocab.txt")
        settings = {
            "unk_token": _special(config, "unk_token", "[UNK]"),
            "cls_token": _special(config, "cls_token", "[CLS]"),
            "sep_token": _special(config, "sep_token", "[SEP]"),
            "do_lower_case": config.get("do_lower_case", True),
            "strip_accents": config.get("strip_accents"),
            "tokenize_chinese_chars": config.get("tokenize_chinese_chars", True),
        }
        return Tokenizer(_wordpiece_backend(vocab, settings), directory, "wordpiece")
    raise TagtuneError(
        f"{directory}: no tokenizer found (looked for tokenizer.json, vocab.txt, "
        "or tokenizer_config.json naming BertJapaneseTokenizer)"
    )
