"""ModernBERT-family tokenizers, built here from a small corpus in the form the Hub repos have.

* byte-level BPE as answerdotai/ModernBERT-base (GPT-NeoX / OLMo style): ``Ġword`` tokens, a
  ``[CLS] $A [SEP]`` template, special tokens after the learnt vocabulary, runs of spaces as
  added tokens, a ``[MASK]`` that takes the space before it;
* SentencePiece-style pipelines as the Japanese ModernBERTs (sbintuitions/modernbert-ja-*,
  cl-nagoya/ruri-v3-*): ``▁`` for spaces (a Replace normaliser, a Prepend too, or a Metaspace
  pre-tokenizer), Unigram or BPE with ``<0xE3>`` byte-fallback tokens, NFKC in one of them, a
  ``<s> $A </s>`` template, ``tokenizer_class`` LlamaTokenizer with add_bos_token/add_eos_token.

Each folder also has the config.json of a ModernBERT (model_type "modernbert"), as the Hub repos
do; transformers then reads tokenizer.json as it is. The checks: tagtune's ids are transformers'
ids, offsets slice the original text with no whitespace around a token, and character spans
(full-width letters, half-width kana, emoji, U+3000) survive alignment to tokens and back.
"""

import json
import random
import re

import pytest
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from tagtune import TagtuneError
from tagtune.data.align import IGNORE, token_labels, units_of, windows_of, with_specials
from tagtune.data.decode import spans_from_tags
from tagtune.data.schemes import tag_names
from tagtune import Span
from tagtune.text.tokenizer import load_tokenizer

ENGLISH = [
    "Alice met Bob at the Tokyo Tower", "the news was on ABC last night", "we flew from Paris to Osaka",
    "great job team", "she said hello to the world", "numbers like 12345 and 3.14 are common",
    "the museum opens at nine", "a quick brown fox jumps over the lazy dog",
]
JAPANESE = [
    "東京タワーに行きました", "ＡＢＣ放送のニュースを見た", "ｶﾀｶﾅで名前を書く", "今日は　晴れです",
    "山田太郎さんが大阪から来た", "京都と奈良を旅行した", "新しい電車が走る", "駅の前で待ち合わせ",
]
EMOJI = ["😀", "👍", "🎉", "🇯🇵", "❤️"]


def corpus() -> list[str]:
    """A few hundred lines mixing English, Japanese and emoji (fixed seed)."""
    rnd = random.Random(0)
    lines = []
    for _ in range(400):
        parts = rnd.sample(ENGLISH, 1) + rnd.sample(JAPANESE, 2) + [rnd.choice(EMOJI)]
        rnd.shuffle(parts)
        lines.append(" ".join(parts))
    return lines


# Texts to tokenise: full-width letters, half-width kana (with a voiced mark that NFKC composes),
# emoji with a skin tone, a flag and a family (ZWJ), U+3000, runs of spaces, leading and trailing
# spaces, characters no tokenizer here has seen (byte fallback), NFKC expansions, nothing at all.
TEXTS = [
    "Alice met Bob at the Tokyo Tower.",
    "東京タワーに行きました。",
    "ＡＢＣ放送のニュースを見た",
    "ｶﾀｶﾅとﾊﾞﾝｸで書く",
    "great job 👍🏽 and 🇯🇵 flags, family 👨‍👩‍👧 too",
    "今日は\u3000晴れ\u3000です",
    "multiple   spaces\tand\nnew  lines",
    "  leading and trailing  ",
    "\u3000\u3000全角スペース\u3000",
    "鬱𠮷🦜 are rare",
    "㍿と①と㌔",
    "mixed 東京タワー and ＡＢＣ in English ｶﾀｶﾅ 😀!",
    "The capital is [MASK] .",
    " ",
    "",
]


# --------------------------------------------------------------------------- folders


def _byte_fallback(tokenizer: Tokenizer) -> Tokenizer:
    """The same tokenizer with the 256 ``<0xNN>`` byte tokens in its vocabulary and byte
    fallback on, as SentencePiece models converted to tokenizer.json have."""
    data = json.loads(tokenizer.to_str())
    model = data["model"]
    pieces = [f"<0x{b:02X}>" for b in range(256)]
    if model["type"] == "Unigram":
        known = {piece for piece, _ in model["vocab"]}
        model["vocab"] += [[p, -30.0] for p in pieces if p not in known]
    else:
        for p in pieces:
            model["vocab"].setdefault(p, len(model["vocab"]))
    model["byte_fallback"] = True
    return Tokenizer.from_str(json.dumps(data))


def _write_folder(folder, tokenizer: Tokenizer, tokenizer_config: dict, config: dict):
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, ensure_ascii=False))
    named = {k: v for k, v in tokenizer_config.items() if k.endswith("_token") and isinstance(v, str)}
    (folder / "special_tokens_map.json").write_text(json.dumps(named, ensure_ascii=False))
    ids = {f"{k}_id": tokenizer.token_to_id(v) for k, v in named.items() if k != "mask_token"}
    (folder / "config.json").write_text(json.dumps({"model_type": "modernbert", **ids,
                                                    "vocab_size": tokenizer.get_vocab_size()}))
    return folder


def write_byte_level(folder):
    """An answerdotai/ModernBERT-base-like folder."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus(), trainer)
    tokenizer.add_tokens([AddedToken(" " * n, normalized=True) for n in (4, 3, 2)])
    tokenizer.add_special_tokens(["[UNK]", "[CLS]", "[SEP]", "[PAD]"])
    tokenizer.add_special_tokens([AddedToken("[MASK]", lstrip=True)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("[CLS]", "[SEP]")],
    )
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True,
                "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 8192,
                "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]",
                "mask_token": "[MASK]"}
    return _write_folder(folder, tokenizer, settings, {})


SP_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<sep>", "<mask>", "<cls>"]


def sentencepiece(model: str, space: str, nfkc: bool = False) -> Tokenizer:
    """A SentencePiece-style tokenizer: pieces learnt with ``▁`` only at the start of a word (as
    sentencepiece learns them), then the pipeline of the converted file. ``space`` is "replace"
    (a Replace normaliser, no pre-tokenizer), "prepend" (Prepend and Replace normalisers) or
    "metaspace" (a Metaspace pre-tokenizer that prepends and does not split)."""
    if model == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=500, special_tokens=SP_SPECIALS, unk_token="<unk>",
                                          max_piece_length=6, show_progress=False)
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SP_SPECIALS, show_progress=False)
    tokenizer.normalizer = normalizers.NFKC() if nfkc else None
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never", split=True)
    tokenizer.train_from_iterator(corpus(), trainer)
    tokenizer = _byte_fallback(tokenizer)
    steps = [normalizers.NFKC()] if nfkc else []
    if space == "metaspace":
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    else:
        tokenizer.pre_tokenizer = None
        steps += [normalizers.Prepend("▁")] if space == "prepend" else []
        steps += [normalizers.Replace(" ", "▁")]
    tokenizer.normalizer = normalizers.Sequence(steps) if steps else None
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tokenizer


def write_sentencepiece(folder, model: str, space: str, nfkc: bool = False, template: str = "<s>:0 $A:0 </s>:0",
                        add_bos: bool = True, add_eos: bool = True):
    """A sbintuitions/modernbert-ja-like folder."""
    tokenizer = sentencepiece(model, space, nfkc)
    tokenizer.add_special_tokens(SP_SPECIALS)
    if template:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, pair=f"{template} $B:1",
            special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("<s>", "</s>") if t in template],
        )
    settings = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": add_bos, "add_eos_token": add_eos,
                "add_dummy_prefix_space": space != "replace", "add_prefix_space": space != "replace",
                "legacy": False, "clean_up_tokenization_spaces": False, "model_max_length": 8192,
                "added_tokens_decoder": {str(tokenizer.token_to_id(t)): {
                    "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                    "special": True} for t in SP_SPECIALS},
                "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
                "sep_token": "<sep>", "cls_token": "<cls>", "mask_token": "<mask>"}
    return _write_folder(folder, tokenizer, settings, {})


FOLDERS = {
    "byte-level": write_byte_level,
    "unigram-replace": lambda f: write_sentencepiece(f, "unigram", "replace"),
    "unigram-prepend-nfkc": lambda f: write_sentencepiece(f, "unigram", "prepend", nfkc=True),
    "bpe-metaspace": lambda f: write_sentencepiece(f, "bpe", "metaspace"),
}


@pytest.fixture(scope="module", params=list(FOLDERS))
def folder(request, tmp_path_factory):
    return FOLDERS[request.param](tmp_path_factory.mktemp(request.param))


def reference(folder):
    return transformers.AutoTokenizer.from_pretrained(folder)


# --------------------------------------------------------------------------- ids


def test_ids_equal_transformers(folder):
    """With special tokens, and as a window (the text's ids between the start and end token):
    the ids transformers' AutoTokenizer gives for the folder."""
    ours, theirs = load_tokenizer(folder), reference(folder)
    for text in TEXTS:
        expected = theirs(text)["input_ids"]
        assert ours.encode(text, add_special_tokens=True).ids == expected, text
        assert with_specials(ours.encode(text).ids, ours.cls_id, ours.sep_id) == expected, text
    for text, enc in zip(TEXTS, ours.encode_batch(TEXTS, add_special_tokens=True)):
        assert enc.ids == theirs(text)["input_ids"]
        assert enc.special[0] and enc.special[-1] and enc.offsets[0] == enc.offsets[-1] == (0, 0)
    expected = theirs("a")["input_ids"]
    assert (ours.cls_id, ours.sep_id, ours.pad_id) == (expected[0], expected[-1], theirs.pad_token_id)


def test_windows_of_a_long_text(folder):
    """Each window of a long text is its tokens between one start and one end token."""
    tokenizer = load_tokenizer(folder)
    text = " ".join(TEXTS * 8)
    ids = tokenizer.encode(text).ids
    bounds = windows_of(len(ids), 64, 16)
    assert len(bounds) > 3
    for a, b in bounds:
        window = with_specials(ids[a:b], tokenizer.cls_id, tokenizer.sep_id)
        assert len(window) <= 64 and window[0] == tokenizer.cls_id and window[-1] == tokenizer.sep_id


def test_template_with_only_a_start_token(tmp_path):
    """A template adding only <s> (transformers then adds only <s> too) still gives windows one
    start and one end token: the end token is eos_token, add_eos_token being set."""
    folder = write_sentencepiece(tmp_path, "unigram", "replace", template="<s>:0 $A:0")
    tokenizer, theirs = load_tokenizer(folder), reference(folder)
    assert (tokenizer.cls_token, tokenizer.sep_token) == ("<s>", "</s>")
    for text in TEXTS:
        expected = theirs(text)["input_ids"]
        assert expected[0] == theirs.bos_token_id and expected[-1] != theirs.eos_token_id
        assert tokenizer.encode(text, add_special_tokens=True).ids == [*expected, theirs.eos_token_id]


def test_saved_folder_has_the_completed_template(tmp_path):
    """Saved (as a trained tagger is), the folder's tokenizer.json has the template tagtune
    completed: transformers then wraps a text as the model was trained, and the untouched
    files are copied as they are."""
    tokenizer = load_tokenizer(write_sentencepiece(tmp_path / "source", "unigram", "replace", template="<s>:0 $A:0"))
    out = tmp_path / "saved"
    out.mkdir()
    tokenizer.save(out)
    (out / "config.json").write_text((tmp_path / "source" / "config.json").read_text())
    again, theirs = load_tokenizer(out), reference(out)
    assert tokenizer.completed_template and not again.completed_template
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=True).ids
        assert again.encode(text, add_special_tokens=True).ids == ids == theirs(text)["input_ids"]
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (tmp_path / "source" / name).read_bytes()


def test_template_without_special_tokens(tmp_path):
    """No template: the start and end tokens come from tokenizer_config.json, cls/sep unless
    add_bos_token/add_eos_token ask for bos/eos."""
    folder = write_sentencepiece(tmp_path / "plain", "unigram", "replace", template="", add_bos=False, add_eos=False)
    tokenizer = load_tokenizer(folder)
    assert (tokenizer.cls_token, tokenizer.sep_token) == ("<cls>", "<sep>")
    enc = tokenizer.encode("東京", add_special_tokens=True)
    assert enc.tokens[0] == "<cls>" and enc.tokens[-1] == "<sep>" and enc.special[0] and enc.special[-1]
    tokenizer = load_tokenizer(write_sentencepiece(tmp_path / "flags", "unigram", "replace", template=""))
    assert (tokenizer.cls_token, tokenizer.sep_token) == ("<s>", "</s>")


def test_template_adding_two_start_tokens_is_refused(tmp_path):
    folder = write_sentencepiece(tmp_path, "unigram", "replace", template="<s>:0 </s>:0 $A:0")
    with pytest.raises(TagtuneError, match="one start and one end token"):
        load_tokenizer(folder)


def test_no_start_token_anywhere_is_refused(tmp_path):
    folder = write_sentencepiece(tmp_path, "unigram", "replace", template="")
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    for key in ("bos_token", "cls_token"):
        settings.pop(key)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "special_tokens_map.json").unlink()
    with pytest.raises(TagtuneError, match="adds no start token"):
        load_tokenizer(folder)


# --------------------------------------------------------------------------- offsets


def normalised(tokenizer, source: str) -> str:
    """What the pipeline makes of ``source``, spaces as spaces."""
    normalizer = tokenizer.backend.normalizer
    text = normalizer.normalize_str(source) if normalizer is not None else source
    return text.replace("▁", " ").strip()


def assert_offsets_slice(tokenizer, texts):
    """Every token's range is a slice of the original text with no whitespace at its ends;
    tokens standing for whitespace have an empty range; ranges follow each other without
    overlapping, except the later pieces of one character, which share its range; together
    they cover every character but whitespace (whitespace inside a token, as a piece ``は　晴``
    a BPE without space splitting learnt, is covered too)."""
    for text in texts:
        enc = tokenizer.encode(text)
        covered, owned = set(), 0
        for token, (start, end) in zip(enc.tokens, enc.offsets):
            assert 0 <= start <= end <= len(text), (text, token, start, end)
            source = text[start:end]
            assert source == source.strip(), (text, token, source)
            if start == end:
                continue
            assert start >= owned or end <= owned, (text, token, start, end)
            owned = max(owned, end)
            covered.update(range(start, end))
        assert {i for i in covered if text[i].isspace()} <= inside(enc.offsets), text
        assert {i for i in covered if not text[i].isspace()} == {i for i, c in enumerate(text) if not c.isspace()}


def test_offsets_slice_the_original_text(folder):
    assert_offsets_slice(load_tokenizer(folder), TEXTS)


def inside(offsets) -> set[int]:
    """Positions strictly inside some range (neither its first nor its last character)."""
    return {i for s, e in offsets for i in range(s + 1, e - 1)}


def test_offsets_hold_what_the_tokens_say(folder):
    """Decoding the tokens of a unit (a word, or a token where the tokenizer has no words) gives
    the unit's source as the pipeline normalises it."""
    tokenizer = load_tokenizer(folder)
    for text in TEXTS:
        enc = tokenizer.encode(text)
        units = units_of(enc)
        members = {}
        for t, unit in enumerate(units.of_token):
            if enc.offsets[t][1] > enc.offsets[t][0]:
                members.setdefault(unit, []).append(enc.ids[t])
        for unit, (start, end) in enumerate(units.ranges):
            decoded = tokenizer.backend.decode(members[unit], skip_special_tokens=False)
            decoded = decoded.replace("▁", " ").strip()
            assert decoded == normalised(tokenizer, text[start:end]), (text, text[start:end], decoded)


def test_space_tokens_have_empty_offsets(folder):
    """A token that is only a space mark or a run of spaces (``▁``, ``Ġ``, "   ") covers no
    character, and the mark SentencePiece puts before a text is not the first letter."""
    tokenizer = load_tokenizer(folder)
    text = "  leading and trailing  "
    enc = tokenizer.encode(text)
    spaces = [t for t, token in enumerate(enc.tokens) if not token.replace("▁", "").replace("Ġ", "").strip()]
    assert spaces, enc.tokens
    assert all(enc.offsets[t][0] == enc.offsets[t][1] for t in spaces)
    first = next(t for t, (s, e) in enumerate(enc.offsets) if e > s)
    assert enc.offsets[first][0] == text.index("leading")


def test_pieces_of_one_character_share_it(folder):
    """A character the vocabulary lacks becomes byte tokens (byte fallback, or byte-level
    pieces); the first owns the character and the others share its range."""
    tokenizer = load_tokenizer(folder)
    text = "鬱"
    enc = tokenizer.encode(text)
    pieces = [t for t, (s, e) in enumerate(enc.offsets) if e > s]
    assert len(pieces) >= 2, enc.tokens
    assert all(enc.offsets[t] == (0, 1) for t in pieces)
    assert len(units_of(enc, all_subwords=True)) == 1


def test_nfkc_keeps_offsets_on_the_source(tmp_path):
    """With NFKC in the pipeline, a token's range is its source before normalisation: ＡＢＣ,
    ｶﾀｶﾅ, ﾊﾞ (two characters composed into one), ㍿ (one character, four letters)."""
    tokenizer = load_tokenizer(write_sentencepiece(tmp_path, "unigram", "prepend", nfkc=True))
    text = "ＡＢＣとﾊﾞﾝｸと㍿"
    enc = tokenizer.encode(text)
    covered = {i for s, e in enc.offsets for i in range(s, e)}
    assert covered == set(range(len(text)))
    units = units_of(enc, all_subwords=True)
    assert "".join(text[s:e] for s, e in units.ranges) == text
    assert text.index("ﾞ") not in {s for s, _ in units.ranges}  # the mark stays with its kana
    assert (text.index("㍿"), len(text)) in units.ranges


def test_unknown_characters_are_cut_per_character(tmp_path):
    """Byte-fallback tokens of a stretch of unknown characters: `tokenizers` gives each the
    whole stretch; tagtune gives each byte its own character."""
    tokenizer = load_tokenizer(write_sentencepiece(tmp_path, "unigram", "replace"))
    text = "鬱𠮷🦜"
    enc = tokenizer.encode(text)
    assert all(token.startswith("<0x") for token in enc.tokens) and len(enc) == 11
    assert set(tokenizer.backend.encode(text, add_special_tokens=False).offsets) == {(0, 3)}
    assert [text[s:e] for s, e in units_of(enc).ranges] == ["鬱", "𠮷", "🦜"]
    assert enc.offsets == [(0, 1)] * 3 + [(1, 2)] * 4 + [(2, 3)] * 4


def test_words_where_the_tokenizer_does_not_split(folder):
    """Without a splitting pre-tokenizer each token is a word (the pieces of one character
    together); a byte-level pre-tokenizer keeps its words (" Tokyo", a run of letters)."""
    tokenizer = load_tokenizer(folder)
    text = "Tokyo 東京タワー 鬱"
    enc = tokenizer.encode(text)
    real = [(t, s, e) for t, (s, e) in enumerate(enc.offsets) if e > s]
    if tokenizer.splits_words:
        assert [text[s:e] for s, e in units_of(enc).ranges] == ["Tokyo", "東京タワー", "鬱"]
    else:
        assert len(units_of(enc)) == len({s for _, s, _ in real})
        assert len(units_of(enc)) == len(units_of(enc, all_subwords=True))


# --------------------------------------------------------------------------- spans


# (text, entities): each entity a substring (its first occurrence) and a type
ENTITIES = [
    ("We went up 東京タワー on Monday", [("東京タワー", "LOC")]),
    ("I watched ＡＢＣ yesterday", [("ＡＢＣ", "ORG")]),
    ("written as ｶﾀｶﾅ here", [("ｶﾀｶﾅ", "MISC")]),
    ("nice 👍🏽 and 🇯🇵 emoji", [("👍🏽", "EMO"), ("🇯🇵", "EMO")]),
    ("love ❤️ from 鬱𠮷 land", [("❤️", "EMO"), ("鬱𠮷", "LOC")]),
    ("Alice met Bob at the Tokyo Tower.", [("Alice", "PER"), ("Bob", "PER"), ("Tokyo Tower", "LOC")]),
    ("今日は\u3000東京タワー\u3000です", [("東京タワー", "LOC")]),
    ("  ＡＢＣ  ", [("ＡＢＣ", "ORG")]),
]


def spans_of(text: str, entities) -> list[Span]:
    return sorted(Span(text.index(s), text.index(s) + len(s), label) for s, label in entities)


def round_trip(tokenizer, text, spans, scheme, all_subwords):
    """Spans -> token labels (as training makes them) -> tags at the units (as prediction
    reads them) -> spans."""
    labels = tag_names(sorted({s.label for s in spans}), scheme)
    label2id = {t: i for i, t in enumerate(labels)}
    enc = tokenizer.encode(text)
    ids, stats = token_labels(spans, enc, label2id, scheme, all_subwords)
    units = units_of(enc, all_subwords)
    for t, (start, end) in enumerate(enc.offsets):
        if end <= start and ids[t] != IGNORE:  # a space token carries a label only as a word's first token
            assert tokenizer.splits_words and not all_subwords and enc.words[t] != enc.words[t - 1]
            assert enc.words[t] == enc.words[t + 1] and t in units.first
    tags = [labels[ids[t]] for t in units.first]
    return spans_from_tags(tags, units.ranges, scheme), stats


def assert_spans_survive(tokenizer, cases, scheme, all_subwords):
    """Each (text, [(entity text, label)]) of ``cases`` comes back from round_trip unchanged."""
    for text, entities in cases:
        spans = spans_of(text, entities)
        back, stats = round_trip(tokenizer, text, spans, scheme, all_subwords)
        assert back == spans, (text, [text[s.start:s.end] for s in back])
        assert stats.message() is None


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
@pytest.mark.parametrize("all_subwords", [False, True])
def test_spans_survive_alignment(folder, scheme, all_subwords):
    assert_spans_survive(load_tokenizer(folder), ENTITIES, scheme, all_subwords)


@pytest.mark.parametrize("all_subwords", [False, True])
def test_every_unit_as_a_span(folder, all_subwords):
    """Spans over single units and pairs of units, on every text: the same spans come back."""
    tokenizer = load_tokenizer(folder)
    checked = 0
    for text in TEXTS:
        units = units_of(tokenizer.encode(text), all_subwords)
        spans = [Span(*units.ranges[i], "ONE") for i in range(0, len(units), 3)]
        spans += [Span(units.ranges[i][0], units.ranges[i + 1][1], "TWO") for i in range(1, len(units) - 1, 3)]
        back, stats = round_trip(tokenizer, text, spans, "BIOES", all_subwords)
        assert back == sorted(spans) and stats.message() is None
        checked += len(back)
    assert checked > 30


def test_later_pieces_of_a_character_are_not_labelled(folder):
    """The byte pieces of one character: the first carries the entity's tag (or the space mark
    that opens the word, as transformers labels a word's first token), the others are left out
    of the loss (IGNORE), with and without all_subwords."""
    tokenizer = load_tokenizer(folder)
    text = "the 鬱 mood"
    start = text.index("鬱")
    label2id = {"O": 0, "B-X": 1, "I-X": 2}
    enc = tokenizer.encode(text)
    pieces = [t for t, (s, e) in enumerate(enc.offsets) if s <= start < e]
    assert len(pieces) >= 2
    for all_subwords in (False, True):
        ids, stats = token_labels([Span(start, start + 1, "X")], enc, label2id, "BIO", all_subwords)
        units = units_of(enc, all_subwords)
        carrier = units.first[units.of_token[pieces[0]]]
        assert carrier == pieces[0] or (enc.offsets[carrier][0] == enc.offsets[carrier][1] and not all_subwords)
        assert ids[carrier] == 1 and all(ids[t] == IGNORE for t in pieces if t != carrier)
        assert stats.message() is None


def test_japanese_text_without_spaces(tmp_path):
    """Running Japanese text, where a SentencePiece tokenizer has no word boundaries: a span
    whose edges are token edges comes back exactly."""
    tokenizer = load_tokenizer(write_sentencepiece(tmp_path, "unigram", "replace"))
    text = "山田太郎さんが東京タワーに行きました。ＡＢＣ放送のｶﾀｶﾅ😀"
    enc = tokenizer.encode(text)
    edges = {s for s, e in enc.offsets if e > s} | {e for s, e in enc.offsets if e > s}
    wanted = [("山田太郎", "PER"), ("東京タワー", "LOC"), ("ＡＢＣ", "ORG"), ("ｶﾀｶﾅ", "MISC"), ("😀", "EMO")]
    spans = [s for s in spans_of(text, wanted) if s.start in edges and s.end in edges]
    assert len(spans) >= 3, enc.tokens
    back, _ = round_trip(tokenizer, text, spans, "BIO", False)
    assert back == spans


def test_xlm_r_style_words_keep_their_first_token(tmp_path):
    """An XLM-R-style pipeline (spaces split off, then a ``▁`` put before every word): the words
    and the token that carries each word's label are as before and as in transformers (the
    word's first token, a lone ``▁`` included); a word's range is its characters."""
    tokenizer = sentencepiece("unigram", "replace")
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), " ")
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(prepend_scheme="always", split=True)])
    tokenizer.add_special_tokens(SP_SPECIALS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[(t, tokenizer.token_to_id(t)) for t in ("<s>", "</s>")])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    tokenizer = load_tokenizer(tmp_path)
    for text in TEXTS:
        enc = tokenizer.encode(text)
        units = units_of(enc)
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        assert units.ranges == words, text
        openers = [t for t, w in enumerate(enc.words) if t == 0 or w != enc.words[t - 1]]
        assert units.first == openers, text
    enc = tokenizer.encode("I saw 鬱 today")
    assert [tokenizer.backend.id_to_token(enc.ids[t]) for t in units_of(enc).first][2] == "▁"
