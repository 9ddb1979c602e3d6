"""Tokenisation with character offsets into the original text, for every supported checkpoint.

Four kinds of checkpoint folder are read:

* ``tokenizer.json`` (any model the `tokenizers` library describes): loaded as it is, with its
  truncation and padding switched off (tagtune windows long texts itself, it never truncates).
* ``vocab.txt`` only (older BERT checkpoints): the BERT WordPiece pipeline is rebuilt from
  ``tokenizer_config.json`` (lowercasing, accent stripping, CJK splitting).
* ``tokenizer_config.json`` naming ``BertJapaneseTokenizer`` (cl-tohoku and similar): MeCab word
  splitting then WordPiece or character subwords, see :mod:`tagtune.text.japanese`.
* ``spm.model`` without tokenizer.json, of a DeBERTa-v2/v3 tokenizer (``tokenizer_class``
  DebertaV2Tokenizer, or none and config.json's ``model_type`` "deberta-v2"): the SentencePiece
  model is converted to the pipeline transformers builds, see :mod:`tagtune.text.sentencepiece`.

``tokenizer.json`` covers byte-level BPE (RoBERTa, ModernBERT, mmBERT, Llama 3, Qwen, EuroBERT)
and SentencePiece-style pipelines (XLM-R, the Japanese ModernBERTs, Llama 2, Mistral, Gemma:
``▁`` for spaces, Unigram or BPE, byte fallback).

The special tokens around a window are those the file's template adds, as transformers'
``AutoTokenizer`` reads the folder (which, since transformers 5, keeps tokenizer.json's template
whatever ``add_bos_token`` / ``add_eos_token`` say). For the Llama layout (:data:`TEMPLATE_AS_IS`:
config.json's ``model_type``) that is all: Llama and Gemma add a start token only, Qwen nothing,
EuroBERT both, and a window holds 0, 1 or 2 special tokens (``Tokenizer.specials``). Every other
encoder was pretrained with a start and an end token around each text: where its template lacks
one, it is taken from ``tokenizer_config.json`` (``bos_token`` / ``eos_token`` when
``add_bos_token`` / ``add_eos_token`` are set, else ``cls_token`` / ``sep_token``).

Whatever normalisation runs (lowercasing, accent stripping, NFKC), ``Encoding.offsets`` are
character positions in the text the caller passed: ``text[start:end]`` is the token's source,
with no whitespace at either end (a leading-space token such as ``Ġword`` or ``▁word`` starts at
the ``w``). A token that stands for whitespace only (``▁``, ``Ġ``, a run of spaces) has an empty
range at its position and never carries a label. The pieces of one character (byte-level BPE
splitting an emoji or a kanji, ``<0xE3>`` byte-fallback tokens, ``㍿`` normalised to four
letters) are given that character: the first piece owns it and the later pieces share its range,
so that a character belongs to exactly one label position (see :func:`tagtune.data.align.units_of`).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from tagtune import safejson
from tagtune.errors import TagtuneError
from tagtune.files import atomic_write
from tagtune.text import japanese, sentencepiece
from tagtune.text.offsets import repair_offsets
from tagtune.text.postprocess import bert_post_processor

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
    "spm.model",
)

# Tokenizers whose pipeline is made of the `tokenizers` library's own pre-tokenizers and models
# (a tokenizer.json, or one converted from a DeBERTa spm.model): their offsets are repaired.
LIBRARY_PIPELINES = ("tokenizer.json", "spm.model")

DEBERTA_V2_CLASSES = ("DebertaV2Tokenizer", "DebertaV2TokenizerFast")

# config.json model types whose windows get exactly the special tokens tokenizer.json's template
# adds (the Llama layout, tagtune.models.llama): the decoders were pretrained without an end
# token (Qwen without a start token either), so none is made up for them.
TEMPLATE_AS_IS = frozenset({"eurobert", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"})

# What a token string uses for whitespace: SentencePiece's "▁", and the byte-level BPE images of
# the ASCII whitespace bytes (tab, newline, vertical tab, form feed, carriage return, space).
SPACE_MARKS = frozenset("\u2581" + "".join(chr(0x100 + b) for b in (9, 10, 11, 12, 13, 32)))

# A SentencePiece byte-fallback token: one byte of a character the vocabulary lacks.
BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@dataclass
class Encoding:
    """One text, tokenised. Offsets are ``(start, end)`` character positions in the original
    text, without surrounding whitespace; a token that stands for whitespace only has an empty
    range; the later pieces of one character share its range. Special tokens ([CLS], [SEP], <s>,
    </s>) have ``(0, 0)`` and ``special`` set. ``words`` numbers the pre-tokenizer word each
    token belongs to (None for special tokens); where the tokenizer does not split words (a
    SentencePiece pipeline without a splitting pre-tokenizer, whose "word" would be the whole
    text), each token is a word of its own, the pieces of one character staying together."""

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


def _special(config: dict, name: str, default: str | None) -> str | None:
    """A special token's text from tokenizer_config.json, which holds a string or an AddedToken dict."""
    value = config.get(name, default)
    if isinstance(value, dict):
        value = value.get("content", default)
    return value if isinstance(value, str) else default


def _splits_words(backend: Backend) -> bool:
    """Whether the pipeline's pre-tokenizer cuts a text into words (at spaces at least), after
    the normaliser (Gemma's splits at " ", which its normaliser has already made ``▁``)."""
    pre_tokenizer, normalizer = backend.pre_tokenizer, backend.normalizer
    text = "a b" if normalizer is None else normalizer.normalize_str("a b")
    return pre_tokenizer is not None and len(pre_tokenizer.pre_tokenize_str(text)) > 1


def _inserted_mark(token: str, source: str) -> bool:
    """Whether a token aligned with the same character as the next token is only a space mark
    (``▁``, ``Ġ``) that a normaliser or pre-tokenizer put before a word (SentencePiece's dummy
    prefix): `tokenizers` aligns such a mark with the word's first character."""
    return all(c in SPACE_MARKS for c in token) and not any(c in SPACE_MARKS for c in source)


def _byte(token: str) -> int | None:
    """The byte a byte-fallback token (``<0xE3>``) stands for, or None."""
    match = BYTE_TOKEN.fullmatch(token) if token.startswith("<0x") else None
    return int(match.group(1), 16) if match else None


def _split_byte_runs(text: str, tokens: list[str], offsets: list[tuple[int, int]],
                     special: list[bool]) -> list[tuple[int, int]]:
    """Byte-fallback tokens each get the range of their own character.

    `tokenizers` gives every byte token of an unknown stretch the whole stretch (the 12 byte
    tokens of ``ﾊﾞﾝｸ`` all get its four characters). Where the bytes are those of the source
    characters (no normaliser changed them), each byte goes to the character it encodes.
    """
    out = list(offsets)
    t = 0
    while t < len(tokens):
        if special[t] or _byte(tokens[t]) is None:
            t += 1
            continue
        u = t + 1
        while u < len(tokens) and not special[u] and _byte(tokens[u]) is not None and offsets[u] == offsets[t]:
            u += 1
        start, end = offsets[t]
        data = bytes(_byte(token) for token in tokens[t:u])
        source = text[start:end]
        if end - start > 1 and data in (source.encode("utf-8"), source.replace(" ", "\u2581").encode("utf-8")):
            k = t
            for position, char in enumerate(source, start):
                width = len(char.replace(" ", "\u2581").encode("utf-8"))
                out[k:k + width] = [(position, position + 1)] * width
                k += width
        t = u
    return out


def source_offsets(text: str, tokens: list[str], offsets: list[tuple[int, int]],
                   special: list[bool]) -> list[tuple[int, int]]:
    """The offsets `tokenizers` gives (character positions, possibly with the space a ``▁word``
    token stands for, overlapping where byte-level pieces split a character), made into ranges
    of the original text as :class:`Encoding` describes them. Special tokens get ``(0, 0)``."""
    raw = _split_byte_runs(text, tokens, offsets, special)
    next_starts: list[int | None] = []  # start of the next token that is not special
    following = None
    for (start, _), is_special in zip(reversed(raw), reversed(special)):
        next_starts.append(following)
        following = following if is_special else start
    next_starts.reverse()
    out: list[tuple[int, int]] = []
    owned = 0  # end of the characters earlier tokens own
    for t, (token, (start, end)) in enumerate(zip(tokens, raw)):
        if special[t]:
            out.append((0, 0))
            continue
        first = start
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start == end or (next_starts[t] == first and _inserted_mark(token, text[start:end])):
            out.append((first, first))  # whitespace only: no character to label
            continue
        if start < owned < end:  # a byte-level piece ending a character an earlier token began
            start = owned
        out.append((start, end))
        owned = max(owned, end)
    return repair_offsets(text, out, special)


def own_words(offsets: list[tuple[int, int]], special: list[bool]) -> list[int | None]:
    """Word numbers for a tokenizer that does not split words: each token with characters is a
    word, except a token sharing the previous token's characters (a later piece of one
    character). A token without characters joins the word before it (those leading the text
    make a word of their own), so that it never carries a label."""
    words: list[int | None] = []
    word, owned = 0, 0
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            words.append(None)
            continue
        if end > start and start >= owned:
            word += 1
        owned = max(owned, end)
        words.append(word)
    return words


class Tokenizer:
    """A checkpoint's tokenizer, giving ids and original-text character offsets.

    Load with :func:`load_tokenizer`; :meth:`save` writes files that both tagtune and
    transformers' ``AutoTokenizer`` read back. ``config`` is the folder's tokenizer_config.json
    (with special_tokens_map.json under it), where a template's missing start or end token and
    the padding token are looked up; ``completed_template`` says whether one was. With
    ``as_is`` the template is kept as it is: ``cls_token``/``cls_id`` and
    ``sep_token``/``sep_id`` are None where it adds no start or no end token. ``starts`` and
    ``ends`` count the special tokens before and after a window's text (0 or 1 each),
    ``specials`` both. ``splits_words``: whether ``Encoding.words`` are the pre-tokenizer's words
    (else each token is a word, see :class:`Encoding`).
    """

    def __init__(self, backend: Backend, source: Path, kind: str, config: dict | None = None,
                 model_file: str | None = None, as_is: bool = False):
        self.backend = backend
        self.source = source
        self.kind = kind  # "tokenizer.json", "spm.model", "wordpiece" or "japanese"
        self.config = config or {}
        self.model_file = model_file  # the SentencePiece model of an "spm.model" tokenizer
        self.backend.no_truncation()
        self.backend.no_padding()
        self.as_is = as_is
        (self.cls_token, self.cls_id), (self.sep_token, self.sep_id) = self._wrapping()
        self.starts, self.ends = int(self.cls_id is not None), int(self.sep_id is not None)
        self.pad_id = self._pad_id()
        self.splits_words = kind not in LIBRARY_PIPELINES or _splits_words(backend)
        # The WordPiece and Japanese pipelines tagtune builds, and WordPiece in any pipeline (which
        # splits at whitespace and never cuts a character), give offsets that need no repair.
        self.exact_offsets = kind not in LIBRARY_PIPELINES or isinstance(backend.model, models.WordPiece)

    def _wrapping(self) -> tuple[tuple[str | None, int | None], tuple[str | None, int | None]]:
        """The start and end token around every window, as (token, id).

        Those the backend's template puts before and after a text. Where the template adds only
        one of them or none, the missing one comes from the config (unless ``as_is``: then it is
        (None, None)), and the template is replaced so that ``encode(..., add_special_tokens=True)``
        shows what the model is given.
        """
        template = self.backend.encode("", add_special_tokens=True).tokens
        start, end = self._template_sides(template)
        sides = (start is not None) + (end is not None)
        if len(template) > 2 or ((len(template) == 2 or self.as_is) and sides != len(template)):
            wanted = "at most one start and one end token" if self.as_is else "one start and one end token"
            forms = "<s> $A </s>, <s> $A or $A" if self.as_is else "[CLS] $A [SEP] or <s> $A </s>"
            raise TagtuneError(
                f"{self.source}: the tokenizer does not wrap a text in {wanted} (got {template}); "
                f"tagtune needs a {forms} template"
            )
        self.completed_template = len(template) < 2 and not self.as_is
        if self.as_is:
            return (start, self._id(start)), (end, self._id(end))
        if self.completed_template:
            start = start or self._configured("bos_token", "add_bos_token", "cls_token")
            end = end or self._configured("eos_token", "add_eos_token", "sep_token")
            self.backend.post_processor = processors.TemplateProcessing(
                single=[start, "$A", end], pair=[start, "$A", end, "$B:1", f"{end}:1"],
                special_tokens=[(start, self.backend.token_to_id(start)), (end, self.backend.token_to_id(end))],
            )
        return (start, self.backend.token_to_id(start)), (end, self.backend.token_to_id(end))

    def _template_sides(self, template: list[str]) -> tuple[str | None, str | None]:
        """(start, end) of the template tokens ``template``: which come before a text and which
        after, seen on the text "a"; None for a side the template leaves empty."""
        if not template:
            return None, None
        probe = self.backend.encode("a", add_special_tokens=True)
        mask = list(probe.special_tokens_mask)
        body = [i for i, m in enumerate(mask) if not m]
        if not body:  # "a" gives no token: a lone template token is taken for what its name says
            if len(template) == 2:
                return template[0], template[1]
            starts = {_special(self.config, key, None) for key in ("bos_token", "cls_token")}
            return (template[0], None) if template[0] in starts else (None, template[0])
        before, after = probe.tokens[:body[0]], probe.tokens[body[-1] + 1:]
        if len(before) > 1 or len(after) > 1 or len(before) + len(after) + len(body) != len(mask):
            return None, None
        return (before[0] if before else None), (after[0] if after else None)

    def _configured(self, name: str, flag: str, fallback: str) -> str:
        """A start or end token the template does not add: ``name`` (bos/eos) when the config's
        ``flag`` asks for it, else ``fallback`` (cls/sep), else ``name``; it must be in the vocabulary."""
        order = (name, fallback) if self.config.get(flag) else (fallback, name)
        for key in order:
            token = _special(self.config, key, None)
            if token is not None and self.backend.token_to_id(token) is not None:
                return token
        raise TagtuneError(
            f"{self.source}: the tokenizer's template adds no {'start' if flag == 'add_bos_token' else 'end'} "
            f"token and tokenizer_config.json names none in the vocabulary ({name}, {fallback}); "
            "tagtune wraps every window in one start and one end token"
        )

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def specials(self) -> int:
        """Special tokens around every window: 0, 1 or 2."""
        return self.starts + self.ends

    def _pad_id(self) -> int:
        for token in (_special(self.config, "pad_token", None), "[PAD]", "<pad>"):
            i = None if token is None else self.backend.token_to_id(token)
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

    def _to_encoding(self, enc, text: str) -> Encoding:
        special = [bool(s) for s in enc.special_tokens_mask]
        tokens = list(enc.tokens)
        offsets = [(0, 0) if s else (int(a), int(b)) for (a, b), s in zip(enc.offsets, special)]
        if not self.exact_offsets:
            offsets = source_offsets(text, tokens, offsets, special)
        if self.splits_words:
            words = [None if s else w for w, s in zip(enc.word_ids, special)]
        else:
            words = own_words(offsets, special)
        return Encoding(ids=list(enc.ids), offsets=offsets, tokens=tokens, special=special, words=words)

    def encode(self, text: str, add_special_tokens: bool = False) -> Encoding:
        """Tokenise one text. Without special tokens by default: windows add them."""
        return self._to_encoding(self.backend.encode(text, add_special_tokens=add_special_tokens), text)

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[Encoding]:
        """Tokenise many texts (in parallel where the backend allows it)."""
        texts = list(texts)
        encs = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        return [self._to_encoding(e, text) for e, text in zip(encs, texts)]

    def save(self, directory: Path) -> None:
        """Copy the tokenizer files of the source checkpoint into ``directory``. Where tagtune
        completed the template with a start or end token, tokenizer.json is written with the
        completed template, so that transformers wraps a text as the model was trained. A
        tokenizer converted from ``spm.model`` is written as tokenizer.json too, beside the
        model file, so that the folder loads without converting it again."""
        directory = Path(directory)
        names = TOKENIZER_FILES
        if self.model_file is not None and self.model_file not in names:
            names = names + (self.model_file,)
        for name in names:
            src = self.source / name
            if not src.is_file():
                continue
            if name == "tokenizer.json" and self.completed_template:
                data = json.loads(src.read_text(encoding="utf-8"))
                data["post_processor"] = json.loads(self.backend.post_processor.__getstate__())
                atomic_write(directory / name, json.dumps(data, ensure_ascii=False))
            else:
                shutil.copyfile(src, directory / name)
        if self.kind == "spm.model":
            atomic_write(directory / "tokenizer.json", self.backend.to_str())


def _special_tokens(directory: Path, config: dict) -> dict:
    """tokenizer_config.json's settings over special_tokens_map.json's (older checkpoints name
    their special tokens only in the latter)."""
    path = directory / "special_tokens_map.json"
    named = _read_json(path) if path.is_file() else {}
    return {**named, **config}


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint folder (see the module docstring for what is read)."""
    directory = Path(directory)
    config_path = directory / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    tokenizer_class = config.get("tokenizer_class") or ""
    if tokenizer_class.startswith("BertJapaneseTokenizer"):
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
        return Tokenizer(backend, directory, "tokenizer.json", _special_tokens(directory, config),
                         as_is=_model_type(directory) in TEMPLATE_AS_IS)
    model_file = _sentencepiece_file(directory, config)
    if model_file is not None and _is_deberta_v2(directory, tokenizer_class):
        backend = sentencepiece.deberta_v2_backend(directory, model_file, config)
        return Tokenizer(backend, directory, "spm.model", _special_tokens(directory, config), model_file.name)
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
    if model_file is not None:
        raise TagtuneError(
            f"{directory}: {model_file.name} is a SentencePiece model of a {tokenizer_class or 'non-DeBERTa'} "
            "tokenizer; tagtune converts those of DebertaV2Tokenizer only (other tokenizers need a tokenizer.json)"
        )
    raise TagtuneError(
        f"{directory}: no tokenizer found (looked for tokenizer.json, vocab.txt, spm.model of a "
        "DebertaV2Tokenizer, or tokenizer_config.json naming BertJapaneseTokenizer)"
    )


def _sentencepiece_file(directory: Path, config: dict) -> Path | None:
    """The folder's SentencePiece model: ``spm.model``, else the file tokenizer_config.json's
    ``vocab_file`` names (by its name alone: older transformers saved a full path there) when
    that is in the folder and ends in ``.model``; None if neither is."""
    path = directory / "spm.model"
    if path.is_file():
        return path
    named = config.get("vocab_file")
    if isinstance(named, str) and named.strip():
        path = directory / Path(named.replace("\\", "/")).name
        if path.name.endswith(".model") and path.is_file():
            return path
    return None


def _model_type(directory: Path) -> str | None:
    """config.json's ``model_type``, or None where the folder has no config.json."""
    path = directory / "config.json"
    return _read_json(path).get("model_type") if path.is_file() else None


def _is_deberta_v2(directory: Path, tokenizer_class: str) -> bool:
    """Whether the folder's tokenizer is DebertaV2Tokenizer: tokenizer_config.json names it, or
    names no class and config.json's model_type is "deberta-v2" (as transformers picks it)."""
    if tokenizer_class:
        return tokenizer_class in DEBERTA_V2_CLASSES
    return _model_type(directory) == "deberta-v2"
