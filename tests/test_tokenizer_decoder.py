"""Tokenizers of the Llama-layout families, built here in the form their Hub repos have.

* byte-level BPE with a GPT-2-style ByteLevel pre-tokenizer after a splitting regex: Qwen2/Qwen3
  (NFC, a ByteLevel post-processor that adds nothing, Qwen2Tokenizer), Llama 3 (a
  ``<|begin_of_text|> $A`` template after ByteLevel), EuroBERT (``<|begin_of_text|> $A
  <|end_of_text|>``);
* SentencePiece BPE with byte fallback, trained with the sentencepiece library and converted by
  transformers' LlamaTokenizer (Llama 2, Mistral: Metaspace) and GemmaTokenizer (no dummy
  prefix), saved with save_pretrained: ``<s> $A`` / ``<bos> $A``.

Each folder has the config.json ``model_type`` of its family. The checks: tagtune adds exactly
the special tokens transformers' AutoTokenizer adds (ids equal on every hard text), windows count
them (0, 1 or 2), offsets are character ranges whose text holds the token's bytes (byte-level
pieces of an emoji or a kanji share that character), and spans survive alignment.
"""

import io
import json
import unicodedata

import pytest
import sentencepiece as spm
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tagtune import TagtuneError
from tagtune.data.align import units_of, windows_of, with_ignored, with_specials
from tagtune.models.families import ARCHITECTURES
from tagtune.text.tokenizer import TEMPLATE_AS_IS, load_tokenizer

from test_tokenizer_modern import ENTITIES, TEXTS, assert_offsets_slice, assert_spans_survive, corpus

# The splitting regex of Qwen2's and Llama 3's tokenizer.json (letters, digits one by one, ...).
SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
         r"|\s+(?!\S)|\s+")
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"


def byte_level(specials: list[str], template: str | None, nfc: bool) -> Tokenizer:
    """A byte-level BPE learnt on the English, Japanese and emoji corpus, with ``template`` after
    the ByteLevel post-processor (none: it adds nothing, as Qwen's)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC() if nfc else None
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer)
    tokenizer.add_special_tokens(specials)
    post = processors.ByteLevel(trim_offsets=False)
    if template:
        post = processors.Sequence([post, processors.TemplateProcessing(
            single=template, special_tokens=[(t, tokenizer.token_to_id(t)) for t in specials if t in template])])
    tokenizer.post_processor = post
    return tokenizer


def write_byte_level(folder, model_type: str, template: str | None, settings: dict, nfc: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] if model_type.startswith("qwen") else [BOS, EOS]
    byte_level(specials, template, nfc).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


def write_qwen2(folder):
    return write_byte_level(folder, "qwen2", None, {
        "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False, "errors": "replace"}, nfc=True)


def write_llama3(folder, model_type: str = "llama", template: str = f"{BOS} $A"):
    return write_byte_level(folder, model_type, template, {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS})


def spm_model(**options) -> bytes:
    """A SentencePiece BPE with byte fallback learnt on the corpus."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_writer=out, model_type="bpe", vocab_size=500,
        character_coverage=0.9995, byte_fallback=True, hard_vocab_limit=False, num_threads=1, minloglevel=2,
        **options)
    return out.getvalue()


def write_sentencepiece(folder, model_type: str, tokenizer_class: str, options: dict, specials: dict):
    """tokenizer.model converted by transformers (``tokenizer_class``) and saved as it saves it."""
    source = folder / "source"
    source.mkdir(parents=True)
    (source / "tokenizer.model").write_bytes(spm_model(**options))
    (source / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": tokenizer_class, "add_bos_token": True, "add_eos_token": False, **specials}))
    transformers.AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


def write_llama2(folder, model_type: str = "llama"):
    return write_sentencepiece(folder, model_type, "LlamaTokenizer", dict(pad_id=-1, unk_id=0, bos_id=1, eos_id=2),
                               {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "legacy": False})


def write_gemma(folder):
    options = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                   add_dummy_prefix=False)
    return write_sentencepiece(folder, "gemma", "GemmaTokenizer", options,
                               {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})


# name -> (writer, the special tokens before and after a text)
FOLDERS = {
    "qwen2": (write_qwen2, (0, 0)),
    "llama3": (write_llama3, (1, 0)),
    "eurobert": (lambda f: write_llama3(f, "eurobert", f"{BOS} $A {EOS}"), (1, 1)),
    "mistral": (lambda f: write_llama2(f, "mistral"), (1, 0)),
    "gemma": (write_gemma, (1, 0)),
}


@pytest.fixture(scope="module", params=list(FOLDERS))
def family(request, tmp_path_factory):
    """(folder, (start tokens, end tokens) the family's tokenizer adds)."""
    write, sides = FOLDERS[request.param]
    return write(tmp_path_factory.mktemp(request.param)), sides


def test_the_llama_layout_takes_the_template_as_it_is():
    assert TEMPLATE_AS_IS == {t for t, row in ARCHITECTURES.items() if row.family == "llama"}


def test_special_tokens_are_those_transformers_adds(family):
    """With special tokens, and as a window: the ids of AutoTokenizer, no start or end token added."""
    folder, (starts, ends) = family
    ours, theirs = load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert (ours.starts, ours.ends, ours.specials) == (starts, ends, starts + ends)
    assert not ours.completed_template
    for text in TEXTS:
        expected = theirs(text)["input_ids"]
        assert ours.encode(text, add_special_tokens=True).ids == expected, text
        assert with_specials(ours.encode(text).ids, ours.cls_id, ours.sep_id) == expected, text
    assert ours.cls_id == (theirs.bos_token_id if starts else None)
    assert ours.sep_id == (theirs.eos_token_id if ends else None)


def test_windows_count_the_special_tokens(family):
    """A long text's windows fill max_length exactly with the tokens the tokenizer adds, and
    the labels line up with the ids."""
    folder, (starts, ends) = family
    tokenizer = load_tokenizer(folder)
    ids = tokenizer.encode(" ".join(TEXTS * 4)).ids
    bounds = windows_of(len(ids), 40, 8, tokenizer.specials)
    assert len(bounds) > 3 and bounds[0] == (0, 40 - starts - ends) and bounds[-1][1] == len(ids)
    for a, b in bounds:
        window = with_specials(ids[a:b], tokenizer.cls_id, tokenizer.sep_id)
        assert len(window) == 40 and window[starts:len(window) - ends] == ids[a:b]
        labels = with_ignored(list(range(a, b)), tokenizer.cls_id, tokenizer.sep_id)
        assert len(labels) == 40 and labels.count(-100) == starts + ends


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte -> character table, inverted: printable bytes stand for themselves, the
    others for 256 + their rank."""
    kept = [b for b in range(256) if 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF]
    table = {chr(b): b for b in kept}
    for rank, b in enumerate(b for b in range(256) if b not in kept):
        table[chr(256 + rank)] = b
    return table


BYTE_OF = _byte_level_alphabet()


def token_bytes(token: str, byte_level: bool) -> bytes:
    """What a token stands for in UTF-8: byte-level BPE images (``Ġ``, ``ã``), or a
    SentencePiece piece (``<0xE3>`` byte-fallback tokens, ``▁`` for a space)."""
    if byte_level:
        return bytes(BYTE_OF[c] for c in token)
    if token.startswith("<0x") and token.endswith(">") and len(token) == 6:
        return bytes([int(token[3:5], 16)])
    return token.replace("▁", " ").encode("utf-8")


def expected_ranges(text: str, tokens: list[str], byte_level: bool) -> list[tuple[int, int]] | None:
    """Each token's characters, from its bytes laid end to end over the text's UTF-8: the
    characters it touches, without whitespace at either end, less a first character an earlier
    token began when it goes on into the next (a byte-level piece ``¾ħãģ`` ending ``ﾅ`` and
    beginning ``と`` is given ``と``). None where the pieces are not the text's bytes (a
    SentencePiece ``▁`` put before the text)."""
    char_at = [i for i, c in enumerate(text) for _ in c.encode("utf-8")]
    pieces = [token_bytes(token, byte_level) for token in tokens]
    if b"".join(pieces) != text.encode("utf-8"):
        return None
    out, position = [], 0
    for piece in pieces:
        first, last = char_at[position], char_at[position + len(piece) - 1]
        if position and char_at[position - 1] == first and last > first:
            first += 1
        while first <= last and text[first].isspace():
            first += 1
        while last >= first and text[last].isspace():
            last -= 1
        out.append((first, last + 1) if first <= last else None)
        position += len(piece)
    return out


def test_offsets_are_the_characters_of_the_bytes(family):
    """Offsets slice the text, and each token's range is the characters its bytes cover (byte-level
    pieces inside an emoji or a kana included); a SentencePiece unit's pieces are its text in UTF-8."""
    folder, _ = family
    tokenizer = load_tokenizer(folder)
    assert_offsets_slice(tokenizer, TEXTS)
    byte_level = not tokenizer.backend.model.byte_fallback
    compared = 0
    for text in TEXTS:
        enc = tokenizer.encode(text)
        expected = expected_ranges(text, enc.tokens, byte_level)
        if expected is not None:
            compared += 1
            for token, got, wanted in zip(enc.tokens, enc.offsets, expected):
                assert got == wanted or (wanted is None and got[0] == got[1]), (text, token, got, wanted)
        if byte_level:
            continue
        units = units_of(enc, all_subwords=True)  # SentencePiece pieces never straddle two characters
        pieces: dict[int, bytes] = {}
        for t, unit in enumerate(units.of_token):
            if enc.offsets[t][1] > enc.offsets[t][0]:
                pieces[unit] = pieces.get(unit, b"") + token_bytes(enc.tokens[t], byte_level)
        for unit, (start, end) in enumerate(units.ranges):
            assert pieces[unit].strip() == text[start:end].encode("utf-8"), (text, text[start:end])
    assert compared == len(TEXTS) or not byte_level


def test_a_byte_level_piece_across_two_characters():
    """``ｶﾅと``, with a piece ending ``ﾅ`` and beginning ``と``: ``ﾅ`` is its first piece's,
    ``と`` the straddling piece's."""
    tokenizer = Tokenizer(models.BPE({"ï½¶ï": 0, "¾ħãģ": 1, "¨": 2}, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokens = ["ï½¶ï", "¾ħãģ", "¨"]
    assert expected_ranges("ｶﾅと", tokens, True) == [(0, 2), (2, 3), (2, 3)]


def test_an_emoji_split_into_bytes_keeps_its_character(family):
    """A character the vocabulary lacks (byte-level pieces, or byte-fallback tokens): every piece
    has the character's range, and it is one unit."""
    folder, _ = family
    tokenizer = load_tokenizer(folder)
    text = "a 🦜 鬱"
    enc = tokenizer.encode(text)
    for char in ("🦜", "鬱"):
        at = text.index(char)
        pieces = [t for t, (s, e) in enumerate(enc.offsets) if s <= at < e]
        assert len(pieces) >= 2, enc.tokens
        assert all(enc.offsets[t] == (at, at + 1) for t in pieces)
    assert [text[s:e] for s, e in units_of(enc, all_subwords=True).ranges] == ["a", "🦜", "鬱"]


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_spans_survive_alignment(family, scheme):
    assert_spans_survive(load_tokenizer(family[0]), ENTITIES, scheme, all_subwords=False)


def test_a_template_with_two_start_tokens_is_refused(tmp_path):
    folder = write_llama3(tmp_path, template=f"{BOS} {EOS} $A")
    with pytest.raises(TagtuneError, match="at most one start and one end token"):
        load_tokenizer(folder)


def test_an_encoder_still_gets_a_completed_template(tmp_path):
    """The same Llama-3-style tokenizer under a model type outside the Llama layout: the end
    token is added, as for every encoder pretrained with one."""
    folder = write_llama3(tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "modernbert"}))
    tokenizer = load_tokenizer(folder)
    assert tokenizer.completed_template and (tokenizer.cls_token, tokenizer.sep_token) == (BOS, EOS)
    assert tokenizer.specials == 2
