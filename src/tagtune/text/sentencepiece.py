"""DeBERTa-v2/v3 checkpoints that ship a SentencePiece model (``spm.model``) and no tokenizer.json.

microsoft/deberta-v3-* and mdeberta-v3-base hold ``spm.model`` (a SentencePiece ``ModelProto``,
protobuf), ``tokenizer_config.json`` and sometimes ``special_tokens_map.json`` and
``added_tokens.json``. transformers' ``DebertaV2Tokenizer`` builds a `tokenizers` pipeline from
them; :func:`deberta_v2_backend` builds the same one, without the sentencepiece or protobuf
packages:

* the model: Unigram over the pieces of ``spm.model`` in their order, with their scores, byte
  fallback where the model was trained with it; the unknown id is that of the piece named ``unk_token`` with score 0, else the
  model's own ``unk_id``;
* normalisers: lowercasing (``do_lower_case``), then the model's own normaliser as its
  ``normalizer_spec`` sets it (:func:`spec_normalizers`), so that the pieces are those the
  sentencepiece library's ``encode`` gives: the precompiled character map (NFKC folds full-width
  letters and digits, half-width kana, ligatures, circled digits, U+3000, compatibility CJK;
  nmt_nfkc also makes tabs and newlines spaces and drops control characters), and with
  ``remove_extra_whitespaces`` spaces stripped at the ends and runs of them made one;
* pre-tokenizers: punctuation isolated (``split_by_punct``), then Metaspace (spaces become
  ``▁``, words split before each ``▁`` unless the model was trained across spaces
  (``split_by_whitespace`` false), and, where the spec has
  ``add_dummy_prefix``, a ``▁`` put before every word, or before the first only when
  ``add_prefix_space`` is false);
* added tokens, in transformers' order and with its flags: ``added_tokens_decoder`` of
  tokenizer_config.json (else ``added_tokens.json``, special where it names a special token),
  then the named special tokens (``[CLS]``, ``[SEP]``, ``[UNK]``, ``[PAD]``, ``[MASK]`` by
  default; special_tokens_map.json overrides tokenizer_config.json), then the model's control
  pieces (or tokenizer_config.json's ``additional_special_tokens``). A token the vocabulary
  lacks takes the next free id: ``[MASK]`` is 128000 in deberta-v3. User-defined pieces are
  pieces of the model like the others, whose score makes them whole wherever they occur, as in
  SentencePiece (and transformers from 5.25; before, they were added tokens, which take the
  space before them off: ``x <url>`` lost its ``▁``);
* the template ``[CLS] $A [SEP]``.

Only Unigram models are read: DeBERTa's are, and a SentencePiece BPE model would be tokenised
here differently from the way it was trained. The denormaliser a model may hold
(``denormalizer_spec``) only changes text decoded from ids; tagtune takes spans from the offsets
into the original text, so it is not used.

transformers builds other normalisers from the same file (up to 5.24: whitespace rules and NFC
without the character map, so that ``Ｆｕｌｌ`` or ``１２３`` became [UNK]; from 5.25: the map
with trailing spaces stripped); where it and the sentencepiece library disagree, the library,
which the model was trained with, is followed. A tagger saved before keeps the pipeline it was
trained with: its folder holds that pipeline as tokenizer.json, which is loaded before spm.model.

``tokenizers``' Precompiled normaliser applies the map one grapheme at a time, where
SentencePiece takes the longest match in the text: a sequence the map composes that spans a
grapheme of six bytes or more (a half-width kana and its voiced mark ``ｶﾞ``, Hangul jamo) is
left decomposed. NFC after it composes those again for the NFKC rules; a short grapheme whose
first character the map changes keeps only that character's mapping (``Ａ`` and a combining
diaeresis become ``A``), which no step here can undo.

The conversion is cached (:func:`cache_dir`): the tokenizer.json of the pipeline is stored under
the SHA-256 of ``spm.model`` and of the settings used, so a second load reads it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

from tagtune import safejson
from tagtune.errors import TagtuneError
from tagtune.files import atomic_write, read_bytes, read_error

# SentencePiece's piece types (sentencepiece_model.proto) and model types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "Unigram", 2: "BPE", 3: "word", 4: "character"}

# The normalisation rules whose character map is NFKC (with the NMT rules for spaces and control
# characters, with case folding): their output is composed, as NFC leaves it.
NFKC_RULES = frozenset({"nfkc", "nmt_nfkc", "nfkc_cf", "nmt_nfkc_cf"})

# Bounds on a model file, checked before its pieces are read: the largest SentencePiece
# vocabularies of text encoders hold about 260,000 pieces in a few MB.
MAX_MODEL_BYTES = 64 << 20
MAX_PIECES = 1 << 20

# Bump when the pipeline built here changes, so that cached conversions are not reused.
CONVERSION_VERSION = 2

# transformers' named special tokens, in the order it adds them, with DebertaV2Tokenizer's defaults.
DEBERTA_V2_SPECIALS = {
    "bos_token": "[CLS]",
    "eos_token": "[SEP]",
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}

_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


# --------------------------------------------------------------------------- the model file


@dataclass
class Piece:
    text: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class TrainerSpec:
    """The fields of SentencePiece's TrainerSpec read here, with the proto's defaults."""

    model_type: int = 1
    vocab_size: int = 8000
    byte_fallback: bool = False
    split_by_whitespace: bool = True
    treat_whitespace_as_suffix: bool = False
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"
    pad_piece: str = "<pad>"


@dataclass
class NormalizerSpec:
    """SentencePiece's NormalizerSpec, with the proto's defaults."""

    name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True


@dataclass
class SpmModel:
    pieces: list[Piece] = field(default_factory=list)
    trainer: TrainerSpec = field(default_factory=TrainerSpec)
    normalizer: NormalizerSpec = field(default_factory=NormalizerSpec)

    @property
    def kind(self) -> str:
        return MODEL_TYPES.get(self.trainer.model_type, f"type-{self.trainer.model_type}")


class ProtoError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


class TooManyPieces(ProtoError):
    """The model holds more pieces than the limit it was read with."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtoError("the data ends inside a number")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError("a number runs over 10 bytes")


def _fields(data: bytes):
    """(field number, wire type, value) of each field of one message: an int for varints, bytes
    for the rest (8 or 4 bytes for fixed-width fields)."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtoError("a field numbered 0")
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise ProtoError("the data ends inside a field")
            value, pos = data[pos:pos + width], pos + width
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ProtoError("the data ends inside a field")
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ProtoError(f"field {number} has wire type {wire}, which SentencePiece models do not use")
        yield number, wire, value


def _expect(number: int, wire: int, expected: int, message: str) -> None:
    if wire != expected:
        raise ProtoError(f"{message} field {number} has wire type {wire}, expected {expected}")


def _int32(value: int) -> int:
    value = value - (1 << 64) if value >= 1 << 63 else value
    if not -(1 << 31) <= value < 1 << 31:
        raise ProtoError(f"{value} is out of range for a 32-bit integer")
    return value


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoError("a string that is not UTF-8") from None


def _float32(value: bytes) -> float:
    return struct.unpack("<f", value)[0]


# The fields tagtune reads of each message: field number -> (attribute, wire type, conversion).
# Wire types: 0 varint, 2 bytes, 5 fixed 32 bits.
_PIECE = {1: ("text", 2, _text), 2: ("score", 5, _float32), 3: ("type", 0, _int32)}
_TRAINER = {
    3: ("model_type", 0, _int32), 4: ("vocab_size", 0, _int32), 40: ("unk_id", 0, _int32),
    41: ("bos_id", 0, _int32), 42: ("eos_id", 0, _int32), 43: ("pad_id", 0, _int32),
    45: ("unk_piece", 2, _text), 46: ("bos_piece", 2, _text), 47: ("eos_piece", 2, _text),
    48: ("pad_piece", 2, _text), 22: ("split_by_whitespace", 0, bool),
    24: ("treat_whitespace_as_suffix", 0, bool), 35: ("byte_fallback", 0, bool),
}
_NORMALIZER = {
    1: ("name", 2, _text), 2: ("precompiled_charsmap", 2, bytes), 3: ("add_dummy_prefix", 0, bool),
    4: ("remove_extra_whitespaces", 0, bool), 5: ("escape_whitespaces", 0, bool),
}


def _merge(data: bytes, into, fields: dict, message: str):
    """``into`` with the ``fields`` of the message ``data`` set; other fields are passed over (a
    message given twice is merged, as protobuf does)."""
    for number, wire, value in _fields(data):
        if number in fields:
            name, expected, convert = fields[number]
            _expect(number, wire, expected, message)
            setattr(into, name, convert(value))
    return into


def _piece(data: bytes) -> Piece:
    return _merge(data, Piece(""), _PIECE, "piece")


def parse_model(data: bytes, max_pieces: int = MAX_PIECES) -> SpmModel:
    """A SentencePiece ModelProto from its bytes. Raises ProtoError where the bytes are not one
    (cut short, another format); a model without pieces, trainer or normaliser settings is
    taken for a file cut short, as SentencePiece writes all three. The pieces are counted
    before any is read: more than ``max_pieces`` raise TooManyPieces."""
    if not data:
        raise ProtoError("the file is empty")
    model = SpmModel()
    seen = set()
    pieces = []
    for number, wire, value in _fields(data):
        if number in (1, 2, 3):
            _expect(number, wire, 2, "model")
            seen.add(number)
        if number == 1:
            pieces.append(value)
            if len(pieces) > max_pieces:
                raise TooManyPieces(f"more than {max_pieces:,} pieces")
        elif number == 2:
            model.trainer = _merge(value, model.trainer, _TRAINER, "trainer_spec")
        elif number == 3:
            model.normalizer = _merge(value, model.normalizer, _NORMALIZER, "normalizer_spec")
    if 1 not in seen:
        raise ProtoError("no pieces")
    missing = [name for number, name in ((2, "trainer"), (3, "normaliser")) if number not in seen]
    if missing:
        raise ProtoError(f"no {' or '.join(missing)} settings (the file is cut short?)")
    model.pieces = [_piece(value) for value in pieces]
    return model


def _too_many(path: Path, vocab_size: int | None) -> TagtuneError:
    if vocab_size is not None and vocab_size < MAX_PIECES:
        return TagtuneError(f"{path}: more than {vocab_size:,} pieces, the vocab_size of config.json: "
                            "the model has no embedding for the others")
    return TagtuneError(f"{path}: more than {MAX_PIECES:,} pieces, more than tagtune reads from a "
                        "SentencePiece model (is the file damaged?)")


def read_model(path: Path, data: bytes | None = None, vocab_size: int | None = None) -> SpmModel:
    """The SentencePiece model in ``path`` (its bytes ``data`` where already read), of at most
    ``vocab_size`` pieces where the caller knows the model's vocabulary. A file that is not one,
    is over :data:`MAX_MODEL_BYTES` or holds too many pieces is a one-line TagtuneError naming
    it, raised before the pieces are read."""
    path = Path(path)
    if data is None:
        data = read_model_bytes(path)
    limit = MAX_PIECES if vocab_size is None else min(vocab_size, MAX_PIECES)
    try:
        return parse_model(data, limit)
    except TooManyPieces:
        raise _too_many(path, vocab_size) from None
    except ProtoError as e:
        raise TagtuneError(f"{path}: not a readable SentencePiece model ({e})") from None


def read_model_bytes(path: Path) -> bytes:
    """The bytes of the model file ``path``, which must be at most :data:`MAX_MODEL_BYTES`
    (checked before it is read)."""
    try:
        size = Path(path).stat().st_size
    except OSError as e:
        raise read_error(path, e) from None
    if size > MAX_MODEL_BYTES:
        raise TagtuneError(f"{path}: {size:,} bytes is too large for a SentencePiece model "
                           f"(at most {MAX_MODEL_BYTES:,})")
    return read_bytes(path)


# --------------------------------------------------------------------------- settings


def _token_state(value, special: bool | None = None) -> dict:
    """An added token as a plain dict of AddedToken's fields. ``value`` is a string or a dict
    (``content`` and flags); ``special`` overrides the dict's flag. ``normalized`` defaults to
    not special, as AddedToken's does."""
    if isinstance(value, str):
        value = {"content": value}
    is_special = bool(value.get("special", False)) if special is None else special
    state = {"content": value["content"], "single_word": bool(value.get("single_word", False)),
             "lstrip": bool(value.get("lstrip", False)), "rstrip": bool(value.get("rstrip", False)),
             "normalized": bool(value.get("normalized", not is_special)), "special": is_special}
    return state


def _token_value(value, where: str, special: bool | None = None):
    """A special token as written in a JSON file: a string stays a string, an AddedToken object
    becomes a token state (``special`` overriding its flag)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        raw = {k: v for k, v in value.items() if k in _TOKEN_FLAGS or k == "content"}
        return _token_state(raw, special)
    raise TagtuneError(f"{where}: a special token must be a string or an object with \"content\", "
                       f"got {safejson.shown(value)}")


def _content(token) -> str:
    return token if isinstance(token, str) else token["content"]


def _token_list(value, where: str, special: bool | None = None) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TagtuneError(f"{where}: additional_special_tokens must be a list, got {safejson.shown(value)}")
    return [_token_value(token, where, special) for token in value]


def deberta_v2_settings(directory: Path, config: dict) -> dict:
    """What DebertaV2Tokenizer reads from a folder besides the model: case and punctuation
    options, the named special tokens, the added tokens with their ids, the extra special
    tokens (None: the model's control pieces). A JSON-able dict, which
    :func:`build_deberta_v2` takes and the cache key covers. Tokens are strings or dicts of
    AddedToken's fields.

    As in transformers: tokenizer_config.json's ``added_tokens_decoder``, where present, is
    the whole list of added tokens; otherwise special_tokens_map.json's named tokens replace
    tokenizer_config.json's, and ``added_tokens.json`` gives the added tokens (special where
    they are named ones). Special tokens under other names than the seven standard ones are
    not read."""
    directory = Path(directory)
    config_name = str(directory / "tokenizer_config.json")
    init = {k: v for k, v in config.items() if k != "tokenizer_class"}
    extra = init.get("extra_special_tokens")
    if isinstance(extra, dict):  # named tokens of the model's own; the pieces are the extras
        extras = None
    elif "additional_special_tokens" in init and not extra:
        extras = _token_list(init["additional_special_tokens"], config_name)
    elif "extra_special_tokens" in init:
        extras = _token_list(extra, config_name)
    else:
        extras = None
    added: dict[int, dict] = {}
    if "added_tokens_decoder" in init:
        decoder = init["added_tokens_decoder"]
        if not isinstance(decoder, dict):
            raise TagtuneError(f"{config_name}: added_tokens_decoder must be an object")
        for index, token in decoder.items():
            if not (isinstance(token, dict) and isinstance(token.get("content"), str)) or not str(index).isdigit():
                raise TagtuneError(f"{config_name}: added_tokens_decoder entry {safejson.cut(str(index))!r} "
                                   "is not an id with an AddedToken object")
            added[int(index)] = _token_value(token, config_name)
    else:
        map_path = directory / "special_tokens_map.json"
        if map_path.is_file():
            for key, value in safejson.read_object(map_path).items():
                if key == "extra_special_tokens" and isinstance(value, list):
                    merged = list(extras or [])
                    for token in _token_list(value, str(map_path), special=True):
                        if token not in merged:
                            merged.append(token)
                    extras = merged
                elif key in DEBERTA_V2_SPECIALS and value is not None:
                    init[key] = _token_value(value, str(map_path), special=True)
        added_path = directory / "added_tokens.json"
        if added_path.is_file():
            named = {_content(_token_value(init[k], config_name)) for k in DEBERTA_V2_SPECIALS if init.get(k)}
            named.update(_content(token) for token in extras or [])
            for text, index in safejson.read_object(added_path).items():
                if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                    raise TagtuneError(f"{added_path}: the id of {safejson.cut(text)!r} is not a whole number")
                added[index] = _token_state(text, special=text in named)
    by_content = {token["content"]: token for token in added.values()}
    specials = {}
    for key, default in DEBERTA_V2_SPECIALS.items():
        value = init.get(key, default)
        if value is not None:
            value = _token_value(value, config_name)
            if key in init:  # a token the files name takes the flags of the added token of that text
                value = by_content.get(_content(value), value)
        specials[key] = value
    return {
        "do_lower_case": bool(init.get("do_lower_case", False)),
        "split_by_punct": bool(init.get("split_by_punct", False)),
        "add_prefix_space": bool(init.get("add_prefix_space", True)),
        "specials": specials,
        "added": [[index, added[index]] for index in sorted(added)],
        "extras": extras,
    }


# --------------------------------------------------------------------------- the pipeline


def _added_tokens(model: SpmModel, settings: dict) -> list[AddedToken]:
    """The tokens transformers adds to the backend, in its order: added tokens by id, named
    special tokens not among them, extra special tokens not among them."""
    extras = settings["extras"]
    if extras is None:  # the model's control pieces
        extras = [{"content": p.text, "single_word": False, "lstrip": False, "rstrip": False,
                   "normalized": False, "special": True}
                  for p in model.pieces if p.type == CONTROL]
    to_add = [token for _, token in settings["added"]]
    present = {token["content"] for token in to_add}
    for token in settings["specials"].values():
        if token is not None and _content(token) not in present and token not in to_add:
            to_add.append(token)
    for token in extras:
        if _content(token) not in present and token not in to_add:
            to_add.append(token)
    named = {_content(token) for token in settings["specials"].values() if token}
    out = []
    for token in to_add:
        state = _token_state(token, special=True) if isinstance(token, str) else dict(token)
        if not state["special"] and state["content"] in named:
            state["special"] = True
        out.append(AddedToken(**state))
    return out


def spec_normalizers(spec: NormalizerSpec) -> list:
    """The `tokenizers` normalisers that do what SentencePiece's normaliser does with ``spec``
    before spaces become ``▁`` and the dummy prefix is added (the Metaspace pre-tokenizer's
    work, see :func:`spaces`).

    The character map (none under the identity rule) is the Precompiled normaliser, followed by
    NFC for the NFKC rules (see the module docstring). Precompiled runs on the text behind a
    space, taken off again after it: where it removes the first character of a text (a control
    character, a zero-width space), it shifts the offsets of all the others by one. Where spaces
    are kept, a CR LF pair is mapped as two characters first, as SentencePiece maps it, since
    Precompiled would map the pair, one grapheme, as its CR alone.

    ``remove_extra_whitespaces`` strips spaces (U+0020, what the map leaves of tabs, newlines or
    U+3000 under the NMT rules; other whitespace is kept, as SentencePiece keeps it) at the end
    and makes each run of them one. At the start, where the spec adds a dummy prefix, the one
    space left is that prefix (Metaspace adds none before a ``▁``): the same pieces for a whole
    text, and after an added token a space in the text still marks a new word, as in
    transformers; without a dummy prefix, leading spaces are stripped."""
    steps = []
    if spec.precompiled_charsmap:
        charsmap = normalizers.Precompiled(spec.precompiled_charsmap)
        if not spec.remove_extra_whitespaces:
            pair, apart = (charsmap.normalize_str("\r\n"),
                           charsmap.normalize_str("\r") + charsmap.normalize_str("\n"))
            if pair != apart:
                steps.append(normalizers.Replace("\r\n", apart))
        steps += [normalizers.Prepend(" "), charsmap, normalizers.Replace(Regex(r"\A "), "")]
        if spec.name in NFKC_RULES:
            steps.append(normalizers.NFC())
    if spec.remove_extra_whitespaces:
        ends = r" +\z" if spec.add_dummy_prefix else r"\A +| +\z"
        steps += [normalizers.Replace(Regex(ends), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    return steps


def spaces(spec: NormalizerSpec, add_prefix_space: bool) -> tuple[str, list]:
    """Where the dummy prefix (a ``▁``) goes: the Metaspace prepend scheme, and the normalisers
    to end with.

    The dummy prefix is Metaspace's: before each stretch of text between added tokens, or, with
    ``add_prefix_space`` false, before the first only. Metaspace adds none where the text
    already starts with a ``▁``, as a text starting with a space does where
    ``remove_extra_whitespaces`` is false; SentencePiece adds one there all the same, so there the
    prefix is a normaliser (before each stretch; with ``add_prefix_space`` false it stays
    Metaspace's, one short for a text starting with a space)."""
    if not spec.add_dummy_prefix:
        return "never", []
    if spec.remove_extra_whitespaces or not add_prefix_space:
        return "always" if add_prefix_space else "first", []
    return "never", [normalizers.Prepend("\u2581")]


def build_deberta_v2(model: SpmModel, settings: dict, source: Path | str = "spm.model") -> Backend:
    """DebertaV2Tokenizer's pipeline for a SentencePiece model and the folder's settings (see the
    module docstring). ``source`` names the model file in errors."""
    if model.trainer.model_type != 1:
        raise TagtuneError(
            f"{source}: a SentencePiece {model.kind} model; tagtune converts DeBERTa-v2 SentencePiece "
            "models of the Unigram kind only (give the folder a tokenizer.json instead)"
        )
    if model.trainer.treat_whitespace_as_suffix or not model.normalizer.escape_whitespaces:
        raise TagtuneError(
            f"{source}: a SentencePiece model that "
            + ("puts the space mark after words (treat_whitespace_as_suffix)" if model.normalizer.escape_whitespaces
               else "leaves spaces unescaped (escape_whitespaces false), which SentencePiece trains no Unigram model with")
            + "; tagtune converts those that mark spaces with \u2581 before words only"
        )
    vocab = [(piece.text, piece.score) for piece in model.pieces]
    specials = settings["specials"]
    unk = _content(specials["unk_token"]) if specials["unk_token"] else "None"  # transformers' str(None)
    unk_id = next((i for i, (text, score) in enumerate(vocab) if text == unk and score == 0.0),
                  model.trainer.unk_id)
    if not 0 <= unk_id < len(vocab):
        raise TagtuneError(f"{source}: the unknown piece's id {unk_id} is outside the {len(vocab)} pieces")
    try:
        backend = Backend(models.Unigram(vocab, unk_id=unk_id, byte_fallback=model.trainer.byte_fallback))
    except Exception as e:  # the tokenizers library raises bare Exceptions
        raise TagtuneError(f"{source}: the pieces do not make a Unigram model ({e})") from None
    prepend_scheme, last = spaces(model.normalizer, settings["add_prefix_space"])
    steps = [normalizers.Lowercase()] if settings["do_lower_case"] else []
    steps += spec_normalizers(model.normalizer) + last
    backend.normalizer = normalizers.Sequence(steps)
    split = model.trainer.split_by_whitespace
    splits = [pre_tokenizers.Punctuation(behavior="isolated")] if settings["split_by_punct"] else []
    splits.append(pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=prepend_scheme, split=split))
    backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    decoded_scheme = "always" if last else prepend_scheme  # a prefix from the normaliser is dropped too
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=decoded_scheme, split=split)
    backend.add_tokens(_added_tokens(model, settings))
    cls = _content(specials["cls_token"]) if specials["cls_token"] else "None"
    sep = _content(specials["sep_token"]) if specials["sep_token"] else "None"
    cls_id, sep_id = backend.token_to_id(cls), backend.token_to_id(sep)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, 0 if cls_id is None else cls_id), (sep, 0 if sep_id is None else sep_id)],
    )
    return backend


# --------------------------------------------------------------------------- cache and entry point


def cache_dir() -> Path:
    """Where converted tokenizers are kept: ``$TAGTUNE_CACHE/tokenizers``, else
    ``$XDG_CACHE_HOME/tagtune/tokenizers``, else ``~/.cache/tagtune/tokenizers``."""
    root = os.environ.get("TAGTUNE_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "tagtune")
    return Path(root) / "tokenizers"


def cache_key(data: bytes, settings: dict) -> str:
    """The SHA-256 (hex) of a model's bytes, the settings, the conversion and `tokenizers` versions."""
    digest = hashlib.sha256(data)
    extra = {"settings": settings, "conversion": CONVERSION_VERSION, "tokenizers": tokenizers.__version__}
    digest.update(b"\0" + json.dumps(extra, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def _cached(path: Path) -> Backend | None:
    if not path.is_file():
        return None
    try:
        return Backend.from_file(str(path))
    except Exception:  # damaged or from an incompatible library: converted again
        return None


def model_vocab_size(directory: Path) -> int | None:
    """config.json's ``vocab_size`` in ``directory``: the most pieces the model has embeddings
    for. None where the folder has no config.json or it gives no positive whole number."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    size = safejson.read_object(path).get("vocab_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def deberta_v2_backend(directory: Path, model_path: Path, config: dict) -> Backend:
    """The `tokenizers` pipeline for ``model_path`` and the folder's settings (see the module
    docstring), read from the cache where it was converted before. A cache that cannot be
    written only means the conversion is not kept. The file's size, and its number of pieces
    against config.json's ``vocab_size``, are checked before the pieces are read."""
    settings = deberta_v2_settings(directory, config)
    vocab_size = model_vocab_size(directory)
    data = read_model_bytes(model_path)
    path = cache_dir() / f"{cache_key(data, settings)}.json"
    backend = _cached(path)
    if backend is not None:
        if vocab_size is not None and backend.get_vocab_size(with_added_tokens=False) > vocab_size:
            raise _too_many(model_path, vocab_size)
        return backend
    backend = build_deberta_v2(read_model(model_path, data, vocab_size), settings, model_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, backend.to_str())
    except (OSError, TagtuneError):
        pass
    return backend
