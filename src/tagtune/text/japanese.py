"""Japanese BERT tokenisation (``BertJapaneseTokenizer`` checkpoints) on top of `tokenizers`.

transformers' ``BertJapaneseTokenizer`` is a pure-Python tokenizer that returns no offsets. This
module rebuilds the same pipeline with `tokenizers`, so that token ids are the ones transformers
gives and every token carries character offsets into the original text.

What transformers does to a text, and where each step lives here:

1. The text is cut at special and added tokens (``[MASK]`` written in the text, ...), matched in
   the raw text. Here: added tokens with ``normalized=False``.
2. Each remaining piece is NFKC-normalised (``mecab_kwargs.normalize_text``, default true). Here:
   a normalizer that keeps the alignment to the original characters (half-width ``ﾃﾞ`` composed
   into ``デ`` points back at the source), patched where `tokenizers`' Unicode tables are older
   than Python's (``㋿`` -> ``令和``).
3. Word splitting: MeCab (``word_tokenizer_type="mecab"``) on the normalised piece, each surface
   lowercased with ``str.lower`` when ``do_lower_case``; or BERT's basic splitting (whitespace,
   then punctuation); or none (``do_word_tokenize=false``). Here: a Python pre-tokenizer that
   slices the ``NormalizedString`` at the word surfaces, so the alignments survive.
4. Subwords: WordPiece (greedy longest match, ``##`` continuation, a word over 100 characters or
   with no match is one unknown token) after splitting each word on whitespace; or characters
   (each word NFKC-normalised again, then one token per character, unknown where the vocabulary
   lacks it). Here: the ``WordPiece`` model, or per-character pieces and a ``WordLevel`` model.
5. ``[CLS] A [SEP]``.

`tokenizers` aligns a composed character with the first character it came from only, so a token
ending in ``ガ`` made from ``ｶﾞ`` would end before the ``ﾞ``; :class:`JapaneseBackend` wraps the
`tokenizers` pipeline and extends such offsets (tagtune.text.offsets.repair_offsets).

fugashi and the MeCab dictionary packages are imported only when a checkpoint needs them.
"""

from __future__ import annotations

import functools
import os
import re
import unicodedata
from collections.abc import Callable

from tokenizers import AddedToken, NormalizedString, PreTokenizedString
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers

from tagtune.errors import TagtuneError
from tagtune.text.offsets import repair_offsets
from tagtune.text.postprocess import bert_post_processor

INSTALL_HINT = "pip install 'tagtune[ja]'"

WORD_TOKENIZERS = ("mecab", "basic")
SUBWORD_TOKENIZERS = ("wordpiece", "character")
MECAB_DICTIONARIES = ("unidic_lite", "unidic", "ipadic")
MECAB_KWARGS = ("mecab_dic", "mecab_option", "normalize_text")

# BertJapaneseTokenizer's named special tokens, in the order transformers registers them.
NAMED_SPECIALS = (
    ("bos_token", None),
    ("eos_token", None),
    ("unk_token", "[UNK]"),
    ("sep_token", "[SEP]"),
    ("pad_token", "[PAD]"),
    ("cls_token", "[CLS]"),
    ("mask_token", "[MASK]"),
)

MAX_WORD_CHARS = 100  # WordpieceTokenizer's max_input_chars_per_word

# Whitespace as str.split() sees it (re's \s is str.isspace()).
_WHITESPACE = re.compile(r"\s")
_NON_WHITESPACE = re.compile(r"\S+")

# A function from a (normalised) text to the (start, end) character spans of its words.
WordSplitter = Callable[[str], "list[tuple[int, int]]"]


# --------------------------------------------------------------------------- configuration


def _bool(config: dict, key: str, default: bool, where: str = "tokenizer_config.json") -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise TagtuneError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _choice(
    config: dict, key: str, default: str, allowed: tuple[str, ...], unsupported: dict[str, str]
) -> str:
    value = config.get(key, default)
    if value is None:
        value = default
    if value in unsupported:
        raise TagtuneError(
            f"tokenizer_config.json: {key} {value!r} is not supported by tagtune ({unsupported[value]})"
        )
    if value not in allowed:
        raise TagtuneError(
            f"tokenizer_config.json: unknown {key} {value!r} (expected one of: {', '.join(allowed)})"
        )
    return value


def _token_text(value, key: str) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise TagtuneError(f"tokenizer_config.json: {key} must be a non-empty string, got {value!r}")
    return value


def _special_tokens(config: dict) -> tuple[dict[str, str], list[str]]:
    """The named special tokens (``unk_token`` -> ``[UNK]``, ...) and every special token, in the
    order transformers registers them (named ones, extra ones, then other ``*_token`` keys)."""
    named: dict[str, str] = {}
    for key, default in NAMED_SPECIALS:
        text = _token_text(config.get(key, default), key)
        if text is not None:
            named[key] = text
    ordered = list(named.values())
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    if isinstance(extra, dict):
        extra = list(extra.values())
    if not isinstance(extra, (list, tuple)):
        raise TagtuneError("tokenizer_config.json: extra_special_tokens must be a list of tokens")
    ordered += [_token_text(t, "extra_special_tokens") for t in extra]
    # transformers 5 also treats any other string-valued "*_token" key as a special token.
    standard = dict(NAMED_SPECIALS)
    for key, value in config.items():
        if key.endswith("_token") and key not in standard and isinstance(value, str):
            ordered.append(_token_text(value, key))
    seen: set[str] = set()
    ordered = [t for t in ordered if not (t in seen or seen.add(t))]
    return named, ordered


def _added_tokens(config: dict) -> list[tuple[int, AddedToken]]:
    """``added_tokens_decoder`` from tokenizer_config.json, as (id, token) pairs."""
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise TagtuneError("tokenizer_config.json: added_tokens_decoder must be an object of id -> token")
    out = []
    for key, value in decoder.items():
        try:
            index = int(key)
        except ValueError:
            raise TagtuneError(
                f"tokenizer_config.json: added_tokens_decoder key {key!r} is not a token id"
            ) from None
        if isinstance(value, str):
            value = {"content": value}
        if not isinstance(value, dict) or not isinstance(value.get("content"), str) or not value["content"]:
            raise TagtuneError(f"tokenizer_config.json: added_tokens_decoder[{key}] has no content")
        token = AddedToken(
            value["content"],
            single_word=bool(value.get("single_word", False)),
            lstrip=bool(value.get("lstrip", False)),
            rstrip=bool(value.get("rstrip", False)),
            # transformers' slow tokenizers match every added token in the raw text.
            normalized=False,
            special=bool(value.get("special", False)),
        )
        out.append((index, token))
    return out


# --------------------------------------------------------------------------- MeCab


def _mecab_splitter(mecab_kwargs: dict) -> WordSplitter:
    """MeCab (through fugashi) as a function from text to word spans, set up as transformers'
    ``MecabTokenizer`` sets it up: ``-d DICDIR -r DICDIR/mecabrc`` for a named dictionary, then
    ``mecab_option``."""
    dic = mecab_kwargs.get("mecab_dic", "unidic_lite")
    option = mecab_kwargs.get("mecab_option") or ""
    if dic is not None and dic not in MECAB_DICTIONARIES:
        raise TagtuneError(
            f"tokenizer_config.json: unknown mecab_kwargs.mecab_dic {dic!r} "
            f"(expected one of: {', '.join(MECAB_DICTIONARIES)}, or null with a mecab_option)"
        )
    if not isinstance(option, str):
        raise TagtuneError(
            f"tokenizer_config.json: mecab_kwargs.mecab_option must be a string, got {option!r}"
        )
    try:
        import fugashi
    except ImportError:
        raise TagtuneError(
            "this checkpoint splits Japanese words with MeCab, which needs the fugashi package: "
            f"{INSTALL_HINT} (or pip install fugashi unidic-lite)"
        ) from None
    if dic is not None:
        dic_dir = _dictionary_dir(dic)
        option = f'-d "{dic_dir}" -r "{os.path.join(dic_dir, "mecabrc")}" ' + option
    try:
        tagger = fugashi.GenericTagger(option)
    except RuntimeError as e:
        raise TagtuneError(f"MeCab could not start with options {option.strip()!r}: {e}") from None

    def split(text: str) -> list[tuple[int, int]]:
        spans = []
        pos = 0
        for node in tagger(text):
            surface = node.surface
            if not surface:
                continue
            # MeCab skips whitespace between words and reports each surface verbatim.
            start = text.find(surface, pos)
            if start < 0:
                raise TagtuneError(f"MeCab returned a word {surface!r} that is not in the text {text!r}")
            spans.append((start, start + len(surface)))
            pos = start + len(surface)
        return spans

    return split


def _dictionary_dir(dic: str) -> str:
    hints = {
        "unidic_lite": f"{INSTALL_HINT} (or pip install unidic-lite)",
        "unidic": "pip install unidic && python -m unidic download",
        "ipadic": "pip install ipadic",
    }
    try:
        if dic == "unidic_lite":
            import unidic_lite as module
        elif dic == "unidic":
            import unidic as module
        else:
            import ipadic as module
    except ImportError:
        raise TagtuneError(
            f"this checkpoint uses the MeCab dictionary {dic!r}, which is not installed: {hints[dic]}"
        ) from None
    dic_dir = module.DICDIR
    if not os.path.isdir(dic_dir):
        raise TagtuneError(f"the MeCab dictionary {dic!r} has no files at {dic_dir}: {hints[dic]}")
    return dic_dir


# --------------------------------------------------------------------------- Unicode normalisation


@functools.lru_cache(maxsize=None)
def _lagging_characters(form: str) -> dict[str, str]:
    """Characters that Python's ``unicodedata`` (which transformers uses) normalises under
    ``form`` but `tokenizers` does not, mapped to Python's full decomposition of them.

    `tokenizers` carries older Unicode tables (it leaves U+32FF ``㋿``, the Reiwa era sign, as
    it is where Python gives ``令和``); a character that only Python decomposes is replaced by
    that decomposition first, and `tokenizers`' normalisation then composes it as Python would.
    """
    decompose = "NFKD" if form == "NFKC" else "NFD"
    # Every character with a decomposition lies below U+30000 (planes 0-2).
    candidates = [
        chr(cp) for cp in range(0x30000) if not 0xD800 <= cp <= 0xDFFF and unicodedata.decomposition(chr(cp))
    ]
    ours = normalizers.NFKC() if form == "NFKC" else normalizers.NFC()
    # One call each; a line feed between the characters keeps them from composing together.
    python_side = unicodedata.normalize(form, "\n".join(candidates)).split("\n")
    rust_side = ours.normalize_str("\n".join(candidates)).split("\n")
    return {
        c: unicodedata.normalize(decompose, c)
        for c, py, rs in zip(candidates, python_side, rust_side, strict=True)
        if py != rs
    }


def _normalize(ns: NormalizedString, form: str) -> None:
    """``form`` ("NFKC" or "NFC") on ``ns``, as Python's ``unicodedata`` would give it."""
    lagging = _lagging_characters(form)
    if lagging:
        for char in set(ns.normalized) & lagging.keys():
            ns.replace(char, lagging[char])
    if form == "NFKC":
        ns.nfkc()
    else:
        ns.nfc()


class _PythonNormalizer:
    """A `tokenizers` custom normalizer applying NFKC or NFC as Python does (see above)."""

    def __init__(self, form: str):
        self.form = form

    def normalize(self, ns: NormalizedString) -> None:
        _normalize(ns, self.form)


# --------------------------------------------------------------------------- pre-tokenizer


def _cut(ns: NormalizedString, length: int, spans: list[tuple[int, int]]) -> list[NormalizedString]:
    """Slices of ``ns`` (``length`` characters) at the sorted, non-overlapping character ``spans``.

    Slicing a ``NormalizedString`` costs time in proportion to where the slice ends (character
    positions are turned into byte positions from the start), so cutting a long text into its
    words one slice at a time would be quadratic; halving it recursively keeps it at n log n.
    """
    out: list[NormalizedString] = []

    def cut(part: NormalizedString, part_length: int, part_spans: list[tuple[int, int]]) -> None:
        if len(part_spans) <= 16 or part_length <= 64:  # short enough to slice directly
            for start, end in part_spans:
                out.append(part if (start, end) == (0, part_length) else part[start:end])
            return
        middle = len(part_spans) // 2
        at = part_spans[middle][0]
        cut(part[0:at], at, part_spans[:middle])
        cut(part[at:part_length], part_length - at, [(a - at, b - at) for a, b in part_spans[middle:]])

    spans = [(a, b) for a, b in spans if a < b]
    if spans:
        cut(ns, length, spans)
    return out


def _lowercase(word: NormalizedString) -> None:
    """Lowercase ``word`` as Python's ``str.lower`` would (transformers lowercases each MeCab
    surface with it), keeping the alignment. `tokenizers` lowercases character by character, so
    context-dependent mappings (final sigma: ``ΟΔΟΣ`` -> ``οδος``) are patched afterwards."""
    surface = word.normalized
    expected = surface.lower()
    if expected == surface:
        return
    word.lowercase()
    got = word.normalized
    if got != expected and len(got) == len(expected):
        replacement = iter(expected)
        word.map(lambda _c: next(replacement))


def _whitespace_pieces(word: NormalizedString) -> list[NormalizedString]:
    """``word`` cut at whitespace as ``str.split()`` cuts it, whitespace dropped."""
    text = word.normalized
    if not _WHITESPACE.search(text):
        return [word] if text else []
    return _cut(word, len(text), [m.span() for m in _NON_WHITESPACE.finditer(text)])


def _strip_accents(word: NormalizedString) -> None:
    """BasicTokenizer's accent stripping: NFD, then drop the nonspacing marks (category Mn)."""
    if all(unicodedata.category(c) != "Mn" for c in unicodedata.normalize("NFD", word.normalized)):
        return
    word.nfd()
    word.filter(lambda c: unicodedata.category(c) != "Mn")


def _is_punctuation(char: str) -> bool:
    """BERT's punctuation: ASCII non-alphanumerics and every Unicode P* character."""
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _punctuation_pieces(word: NormalizedString) -> list[NormalizedString]:
    """``word`` with each punctuation character split off on its own."""
    text = word.normalized
    spans = []
    start = 0
    for i, char in enumerate(text):
        if _is_punctuation(char):
            if start < i:
                spans.append((start, i))
            spans.append((i, i + 1))
            start = i + 1
    if start < len(text):
        spans.append((start, len(text)))
    return _cut(word, len(text), spans)


class _MecabWords:
    """Words as transformers' ``MecabTokenizer`` gives them: MeCab surfaces of the (normalised)
    text, each lowercased when ``do_lower_case`` unless listed in ``never_split``."""

    def __init__(self, split: WordSplitter, lowercase: bool, never_split: frozenset[str]):
        self.split = split
        self.lowercase = lowercase
        self.never_split = never_split

    def __call__(self, chunk: NormalizedString) -> list[NormalizedString]:
        text = chunk.normalized
        words = _cut(chunk, len(text), self.split(text))
        if self.lowercase:
            for word in words:
                if word.normalized not in self.never_split:
                    _lowercase(word)
        return words


class _BasicWords:
    """Words as BERT's ``BasicTokenizer`` gives them once the text is cleaned and NFC-normalised
    (the normalizer's part): whitespace-separated tokens, each lowercased and stripped of accents
    when ``do_lower_case``, then cut at punctuation; ``never_split`` tokens are left whole."""

    def __init__(self, lowercase: bool, never_split: frozenset[str]):
        self.lowercase = lowercase
        self.never_split = never_split

    def __call__(self, chunk: NormalizedString) -> list[NormalizedString]:
        words = []
        for token in _whitespace_pieces(chunk):
            if token.normalized in self.never_split:
                words.append(token)
                continue
            if self.lowercase:
                _lowercase(token)
                _strip_accents(token)
            if token.normalized in self.never_split:
                words.append(token)
            else:
                words.extend(_punctuation_pieces(token))
        return words


def _whole(chunk: NormalizedString) -> list[NormalizedString]:
    """No word splitting (``do_word_tokenize`` false): the text is one word."""
    return [chunk]


class _JapanesePreTokenizer:
    """The word and subword splitting of ``BertJapaneseTokenizer`` as a `tokenizers` custom
    pre-tokenizer. Every piece is a slice of the ``NormalizedString`` it came from, so it keeps
    its alignment to the original text."""

    def __init__(self, words: Callable[[NormalizedString], list[NormalizedString]], subword: str | None):
        self.words = words
        self.subword = subword  # "wordpiece", "character", or None (whole words)

    def pre_tokenize(self, pretok: PreTokenizedString) -> None:
        pretok.split(self._split)

    def _split(self, _index: int, chunk: NormalizedString) -> list[NormalizedString]:
        if not chunk.normalized:
            return []
        out: list[NormalizedString] = []
        for word in self.words(chunk):
            if self.subword == "wordpiece":
                # WordpieceTokenizer splits its input at whitespace (str.split) first.
                out.extend(_whitespace_pieces(word))
            elif self.subword == "character":
                _normalize(word, "NFKC")  # CharacterTokenizer normalises each word again
                length = len(word.normalized)
                out.extend(_cut(word, length, [(i, i + 1) for i in range(length)]))
            elif word.normalized:
                out.append(word)
        return out


class _Encoding:
    """A `tokenizers` ``Encoding`` with repaired ``offsets``; everything else is the original's."""

    def __init__(self, encoding, offsets: list[tuple[int, int]]):
        self._encoding = encoding
        self.offsets = offsets

    def __getattr__(self, name):
        return getattr(self._encoding, name)

    def __len__(self) -> int:
        return len(self._encoding)

    def __repr__(self) -> str:
        return f"Encoding(num_tokens={len(self)}, offsets repaired)"


class JapaneseBackend:
    """The `tokenizers` pipeline of a ``BertJapaneseTokenizer`` checkpoint, whose ``encode`` and
    ``encode_batch`` return offsets repaired by :func:`tagtune.text.offsets.repair_offsets` (a composed character's
    trailing source characters are otherwise lost from the span). Every other attribute and
    method is the wrapped :class:`tokenizers.Tokenizer`'s, available as ``.tokenizer``.
    Pre-tokenized input is passed through unrepaired."""

    def __init__(self, tokenizer: Backend):
        object.__setattr__(self, "tokenizer", tokenizer)

    def __getattr__(self, name):
        if name == "tokenizer":  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __setattr__(self, name, value) -> None:
        setattr(self.tokenizer, name, value)

    def __repr__(self) -> str:
        return f"JapaneseBackend({self.tokenizer!r})"

    def encode(self, sequence, pair=None, is_pretokenized: bool = False, add_special_tokens: bool = True):
        encoding = self.tokenizer.encode(sequence, pair, is_pretokenized, add_special_tokens)
        if is_pretokenized:
            return encoding
        return self._repaired(encoding, sequence, pair)

    def encode_batch(self, inputs, is_pretokenized: bool = False, add_special_tokens: bool = True):
        inputs = list(inputs)
        encodings = self.tokenizer.encode_batch(inputs, is_pretokenized, add_special_tokens)
        if is_pretokenized:
            return encodings
        out = []
        for item, encoding in zip(inputs, encodings, strict=True):
            sequence, pair = (item, None) if isinstance(item, str) else item
            out.append(self._repaired(encoding, sequence, pair))
        return out

    @staticmethod
    def _repaired(encoding, sequence: str, pair: str | None) -> _Encoding:
        offsets = list(encoding.offsets)
        special = [bool(s) for s in encoding.special_tokens_mask]
        sequence_ids = encoding.sequence_ids
        for index, text in ((0, sequence), (1, pair)):
            if text is None:
                continue
            positions = [i for i, s in enumerate(sequence_ids) if s == index]
            fixed = repair_offsets(text, [offsets[i] for i in positions], [special[i] for i in positions])
            for i, span in zip(positions, fixed):
                offsets[i] = span
        return _Encoding(encoding, offsets)


# --------------------------------------------------------------------------- the backend


def build_backend(vocab: dict[str, int], config: dict) -> JapaneseBackend:
    """A `tokenizers` pipeline equal to transformers' ``BertJapaneseTokenizer`` built from
    ``config`` (the checkpoint's tokenizer_config.json) over ``vocab`` (its vocab.txt).

    Supported: ``word_tokenizer_type`` "mecab" (``mecab_kwargs``: ``mecab_dic`` "unidic_lite",
    "unidic", "ipadic" or null, ``mecab_option``, ``normalize_text``) and "basic";
    ``do_word_tokenize``; ``subword_tokenizer_type`` "wordpiece" and "character";
    ``do_subword_tokenize``; ``do_lower_case``. Raises :class:`TagtuneError` for anything else.
    """
    if not isinstance(config, dict):
        raise TagtuneError("tokenizer_config.json: expected a JSON object")
    do_lower_case = _bool(config, "do_lower_case", False)
    do_word_tokenize = _bool(config, "do_word_tokenize", True)
    do_subword_tokenize = _bool(config, "do_subword_tokenize", True)
    word_type = _choice(
        config, "word_tokenizer_type", "basic", WORD_TOKENIZERS,
        {"sudachi": "use a checkpoint split with MeCab", "jumanpp": "use a checkpoint split with MeCab"},
    )
    subword_type = _choice(
        config, "subword_tokenizer_type", "wordpiece", SUBWORD_TOKENIZERS,
        {"sentencepiece": "only WordPiece and character vocabularies are"},
    )
    mecab_kwargs = config.get("mecab_kwargs") or {}
    if not isinstance(mecab_kwargs, dict):
        raise TagtuneError(f"tokenizer_config.json: mecab_kwargs must be an object, got {mecab_kwargs!r}")
    unknown = sorted(set(mecab_kwargs) - set(MECAB_KWARGS))
    if unknown:
        raise TagtuneError(
            f"tokenizer_config.json: unknown mecab_kwargs {', '.join(unknown)} "
            f"(expected: {', '.join(MECAB_KWARGS)})"
        )
    normalize_text = _bool(mecab_kwargs, "normalize_text", True, "tokenizer_config.json mecab_kwargs")

    named, specials = _special_tokens(config)
    for key in ("unk_token", "cls_token", "sep_token"):
        if key not in named:
            raise TagtuneError(f"tokenizer_config.json: {key} must not be null")
        if named[key] not in vocab:
            raise TagtuneError(f"the vocabulary has no {key.removesuffix('_token')} token {named[key]!r}")
    unk = named["unk_token"]

    # Token ids: added_tokens_decoder wins over vocab.txt; special tokens missing from both get
    # ids from the number of tokens known so far on, in transformers' order (as transformers does).
    vocab = dict(vocab)
    added = _added_tokens(config)
    for index, token in added:
        vocab[token.content] = index
    next_id = len(vocab)
    for text in specials:
        if text not in vocab:
            vocab[text] = next_id
            next_id += 1

    # Steps 2-4: normalisation, words, then subwords.
    never_split = config.get("never_split") or []
    if not isinstance(never_split, (list, tuple)) or not all(isinstance(t, str) for t in never_split):
        raise TagtuneError("tokenizer_config.json: never_split must be a list of strings")
    never_split = frozenset(never_split)
    normalizer = None
    if not do_word_tokenize:
        words = _whole
    elif word_type == "mecab":
        words = _MecabWords(_mecab_splitter(mecab_kwargs), do_lower_case, never_split)
        if normalize_text:
            normalizer = normalizers.Normalizer.custom(_PythonNormalizer("NFKC"))
    else:
        # basic: BERT's BasicTokenizer without CJK splitting; the normalizer drops control
        # characters, turns whitespace into spaces, and applies NFC.
        words = _BasicWords(do_lower_case, never_split)
        normalizer = normalizers.Sequence(
            [
                normalizers.BertNormalizer(
                    clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False
                ),
                normalizers.Normalizer.custom(_PythonNormalizer("NFC")),
            ]
        )
    subword = subword_type if do_subword_tokenize else None

    if subword == "wordpiece":
        model = models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=MAX_WORD_CHARS)
    else:
        model = models.WordLevel(vocab, unk_token=unk)
    backend = Backend(model)
    if normalizer is not None:
        backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizers.PreTokenizer.custom(_JapanesePreTokenizer(words, subword))

    # Step 1: special and added tokens, matched in the raw text.
    from_config = {token.content for _, token in added}
    backend.add_tokens([token for _, token in added if not token.special])
    backend.add_special_tokens(
        [token for _, token in added if token.special]
        + [AddedToken(t, special=True, normalized=False) for t in specials if t not in from_config]
    )

    backend.post_processor = bert_post_processor(vocab, named["cls_token"], named["sep_token"])
    backend.decoder = decoders.WordPiece(prefix="##")
    return JapaneseBackend(backend)
