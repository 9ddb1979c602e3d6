"""BertJapaneseTokenizer checkpoints: ids as transformers gives them, offsets into the original text.

transformers' own ``BertJapaneseTokenizer`` is the reference for ids; it returns no offsets, so
those are checked against the text itself: every token's source span, NFKC-normalised (and
lowercased where the checkpoint lowercases), is the token's text.
"""

from __future__ import annotations

import json
import os
import sys
import unicodedata
from pathlib import Path

import pytest

fugashi = pytest.importorskip("fugashi")
unidic_lite = pytest.importorskip("unidic_lite")
transformers = pytest.importorskip("transformers")

from tokenizers import Tokenizer as Backend  # noqa: E402
from tokenizers import models, pre_tokenizers, trainers  # noqa: E402
from transformers import BertJapaneseTokenizer  # noqa: E402

from tagtune import TagtuneError  # noqa: E402
from tagtune.text.tokenizer import load_tokenizer  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Natural text: news, conversation, loanwords, numbers, English, half-width katakana, full-width
# Latin and digits, ideographic spaces (U+3000), emoji (ZWJ family, flag, skin tone), line breaks.
SENTENCES = [
    "政府は２０２４年度の予算案を閣議決定し、一般会計の総額は１１２兆円を超えた。",
    "東京都内では朝から強い雨が降り、一部の鉄道で運転を見合わせています。",
    "ねえ、明日のランチどこ行く？駅前に新しくできたカフェが気になってるんだよね😊",
    "スマートフォンのアプリをアップデートしたら、バッテリーの減りが早くなった気がする。",
    "ＡＢＣ１２３という型番のプリンターは、Windows 11でも問題なく使えますか？",
    "倉庫にあった古いﾃﾞｰﾀをｶﾀｶﾅのまま新しいｼｽﾃﾑへ移行した。",
    "会議は10時30分から第2会議室で行います。\n資料は前日までに共有してください。",
    "夏休みに家族👨\u200d👩\u200d👧で沖縄へ行ってきました🇯🇵\u3000海がとてもきれいで最高でした👍🏽",
    "今日は\u3000本当に\u3000寒いですね。\r\n風邪をひかないように気をつけて。",
    "新型iPhoneの発売日は9月20日で、価格は12万4800円からとなっている。",
    "AIを活用した翻訳サービスが、中小企業の海外進出を後押ししている。",
    "「すみません、この電車は新宿に止まりますか？」と彼女は駅員に尋ねた。",
    "昨日のサッカーの試合、３－１で逆転勝ちしたらしいよ！すごくない？",
    "COVID-19の影響で、リモートワークを導入する企業が一気に増えた。",
    # Held out of the vocabulary: their unseen characters become unknown tokens.
    "お問い合わせは support@example.com までメールでご連絡ください。",
    "ﾊﾟｿｺﾝのＣＰＵ使用率が１００％になって、画面がﾌﾘｰｽﾞしてしまった。",
    "The Tokyo Olympics は2021年に開催され、多くのボランティアが参加しました。",
    "猫が膝の上で丸くなって寝ている🐈 かわいすぎて動けない\n\nまた明日ね👋",
]
TRAIN = SENTENCES[:14]


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tagger():
    dicdir = unidic_lite.DICDIR
    return fugashi.GenericTagger(f'-d "{dicdir}" -r "{os.path.join(dicdir, "mecabrc")}"')


def mecab_words(tagger, text: str, lower: bool = False) -> list[str]:
    words = [node.surface for node in tagger(unicodedata.normalize("NFKC", text))]
    return [w.lower() for w in words] if lower else words


def train_wordpiece(tagger, lower: bool = False, vocab_size: int = 600) -> list[str]:
    """A WordPiece vocabulary (whole words and ## pieces) learnt from MeCab-split TRAIN."""
    backend = Backend(models.WordPiece(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False)
    backend.train_from_iterator([" ".join(mecab_words(tagger, t, lower)) for t in TRAIN], trainer)
    vocab = sorted(backend.get_vocab().items(), key=lambda item: item[1])
    # vocab.txt is line-based: keep out anything a line reader would split.
    return [token for token, _ in vocab if len(f"x{token}x".splitlines()) == 1 and token.strip() == token]


def character_vocab(tagger, lower: bool = False) -> list[str]:
    chars = sorted({c for t in TRAIN for w in mecab_words(tagger, t, lower) for c in w if not c.isspace()})
    return SPECIALS + chars


def write_checkpoint(directory: Path, vocab: list[str], **config) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    settings = {
        "tokenizer_class": "BertJapaneseTokenizer",
        "word_tokenizer_type": "mecab",
        "mecab_kwargs": {"mecab_dic": "unidic_lite"},
        "subword_tokenizer_type": "wordpiece",
    }
    settings.update(config)
    text = json.dumps(settings, ensure_ascii=False)
    (directory / "tokenizer_config.json").write_text(text, encoding="utf-8")
    return directory


def assert_same_ids(directory: Path, texts: list[str]):
    ours = load_tokenizer(directory)
    reference = BertJapaneseTokenizer.from_pretrained(directory)
    encodings = []
    for text in texts:
        encoding = ours.encode(text, add_special_tokens=True)
        expected = reference(text)["input_ids"]
        assert encoding.ids == expected, (
            f"{text!r}\n ours: {encoding.tokens}\n transformers: {reference.convert_ids_to_tokens(expected)}"
        )
        encodings.append(encoding)
    return ours, encodings


def assert_offsets_point_at_source(text: str, encoding, lower: bool = False, unk: str = "[UNK]"):
    """Each token's source span normalises to the token; spans are in order and do not overlap;
    every non-whitespace character of the text lies in some token."""
    previous_end = 0
    covered = set()
    for token, (start, end), special in zip(encoding.tokens, encoding.offsets, encoding.special):
        if special:
            assert (start, end) == (0, 0)
            continue
        assert previous_end <= start < end <= len(text), (text, token, start, end)
        previous_end = end
        covered.update(range(start, end))
        if token == unk:
            continue
        source = unicodedata.normalize("NFKC", text[start:end])
        if lower:
            source = source.lower()
        assert source == token.removeprefix("##"), (text, token, text[start:end])
    missing = [c for i, c in enumerate(text) if i not in covered and not c.isspace()]
    assert not missing, (text, missing)


# --------------------------------------------------------------------------- WordPiece


@pytest.fixture(scope="module")
def wordpiece_dir(tmp_path_factory, tagger) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("wordpiece"), train_wordpiece(tagger))


def test_vocabulary_has_words_pieces_and_gaps(wordpiece_dir):
    vocab = (wordpiece_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert any(len(t) >= 2 and not t.startswith("##") and t not in SPECIALS for t in vocab)
    assert any(t.startswith("##") and len(t) >= 4 for t in vocab)
    encodings = [load_tokenizer(wordpiece_dir).encode(text) for text in SENTENCES]
    tokens = [t for e in encodings for t in e.tokens]
    assert "[UNK]" in tokens
    assert any(t.startswith("##") for t in tokens)
    assert any(len(t) >= 2 and not t.startswith("##") and t != "[UNK]" for t in tokens)


def test_wordpiece_ids_match_transformers(wordpiece_dir):
    assert_same_ids(wordpiece_dir, SENTENCES)


def test_wordpiece_offsets_point_into_original_text(wordpiece_dir):
    tokenizer = load_tokenizer(wordpiece_dir)
    for text in SENTENCES:
        assert_offsets_point_at_source(text, tokenizer.encode(text, add_special_tokens=True))


def test_half_width_and_full_width_spans(wordpiece_dir):
    tokenizer = load_tokenizer(wordpiece_dir)
    text = SENTENCES[5]  # 倉庫にあった古いﾃﾞｰﾀをｶﾀｶﾅのまま新しいｼｽﾃﾑへ移行した。
    encoding = tokenizer.encode(text)
    start = text.index("ﾃﾞｰﾀ")
    spans = [(s, e) for s, e in encoding.offsets if start <= s < start + 4]
    # The voiced mark ﾞ composes into デ and still belongs to the token's span.
    assert spans[0][0] == start and spans[-1][1] == start + 4
    assert "".join(text[s:e] for s, e in spans) == "ﾃﾞｰﾀ"

    text = SENTENCES[4]  # ＡＢＣ１２３という...
    encoding = tokenizer.encode(text)
    assert "".join(text[s:e] for s, e in encoding.offsets if e <= 6) == "ＡＢＣ１２３"


def test_composed_character_at_token_end_keeps_its_mark(tmp_path):
    # ｶﾞ -> ガ at the end of a word: the span must include the ﾞ (tokenizers alone drops it).
    vocab = SPECIALS + ["ガイド", "ガ", "##イド", "です", "café"]
    tokenizer = load_tokenizer(write_checkpoint(tmp_path, vocab))
    for text in ["ｶﾞｲﾄﾞ", "ｶﾞｲﾄﾞです", "cafe\u0301 ｶﾞ"]:
        encoding = tokenizer.encode(text)
        assert_offsets_point_at_source(text, encoding)
    encoding = tokenizer.encode("ｶﾞｲﾄﾞです")
    assert list(zip(encoding.tokens, encoding.offsets)) == [("ガイド", (0, 5)), ("です", (5, 7))]


def test_special_tokens_in_text(wordpiece_dir):
    texts = ["日本の首都は[MASK]です。", "[CLS]東京[SEP]と大阪[UNK]", "ＡＢＣ [MASK] ﾃﾞｰﾀ[PAD]"]
    tokenizer, encodings = assert_same_ids(wordpiece_dir, texts)
    text, encoding = texts[0], encodings[0]
    i = encoding.tokens.index("[MASK]")
    start, end = encoding.offsets[i]
    assert text[start:end] == "[MASK]"


def test_encode_batch_matches_encode(wordpiece_dir):
    tokenizer = load_tokenizer(wordpiece_dir)
    single = [tokenizer.encode(text) for text in SENTENCES]
    batch = tokenizer.encode_batch(SENTENCES)
    assert [e.ids for e in batch] == [e.ids for e in single]
    assert [e.offsets for e in batch] == [e.offsets for e in single]


def test_long_text_matches_transformers(wordpiece_dir):
    # A long text is cut into many words (exercises the recursive slicing).
    text = "".join(SENTENCES) * 3
    tokenizer, (encoding,) = assert_same_ids(wordpiece_dir, [text])
    assert_offsets_point_at_source(text, encoding)


EXPANDING = ["㈱東京商事は㍻から続く会社です…", "㋿元年のﾃﾞｰﾀ"]
"""NFKC turns one character into several here: ㈱ -> (株), ㍻ -> 平成, … -> ..., ㋿ -> 令和."""


def test_expanding_characters(tmp_path):
    # every token made from such a character points at that character: with a vocabulary that
    # has the pieces, each character becomes tokens of its own
    vocab = SPECIALS + ["(", "株", ")", "東京", "商事", "は", "平成", "から", "続く", "会社", "です", ".", "令和", "元年",
                        "の", "データ"]
    tokenizer, encodings = assert_same_ids(write_checkpoint(tmp_path, vocab), EXPANDING)
    expanded = [(token, text[start:end]) for text, encoding in zip(EXPANDING, encodings)
                for token, (start, end) in zip(encoding.tokens, encoding.offsets)
                if text[start:end] != token and token not in ("[CLS]", "[SEP]")]
    assert expanded == [("(", "㈱"), ("株", "㈱"), (")", "㈱"), ("平成", "㍻"), (".", "…"), (".", "…"), (".", "…"),
                        ("令和", "㋿"), ("データ", "ﾃﾞｰﾀ")]


def test_expanding_characters_with_a_learnt_vocabulary(wordpiece_dir):
    # with a vocabulary learnt from other text, some pieces are unknown: offsets stay in the text
    tokenizer, encodings = assert_same_ids(wordpiece_dir, EXPANDING)
    for text, encoding in zip(EXPANDING, encodings):
        for (start, end), special in zip(encoding.offsets, encoding.special):
            assert special or 0 <= start < end <= len(text)
        for token, (start, end) in zip(encoding.tokens, encoding.offsets):
            if not token.startswith("["):
                assert unicodedata.normalize("NFKC", text[start:end]).find(token.removeprefix("##")) >= 0, token


def test_reiwa_era_sign(tmp_path):
    # U+32FF is newer than the Unicode tables of `tokenizers`; it must still become 令和.
    vocab = SPECIALS + ["令和", "元年", "の", "データ"]
    directory = write_checkpoint(tmp_path, vocab)
    tokenizer, (encoding,) = assert_same_ids(directory, ["㋿元年のﾃﾞｰﾀ"])
    assert encoding.tokens[1:3] == ["令和", "元年"]
    assert encoding.offsets[1] == (0, 1)


# --------------------------------------------------------------------------- other settings


def test_character_subwords_match_transformers(tmp_path, tagger):
    directory = write_checkpoint(tmp_path, character_vocab(tagger), subword_tokenizer_type="character")
    tokenizer, encodings = assert_same_ids(directory, SENTENCES)
    for text, encoding in zip(SENTENCES, encodings):
        assert_offsets_point_at_source(text, encoding)
    tokens = [t for e in encodings for t in e.tokens]
    assert "[UNK]" in tokens and "デ" in tokens


LOWER_TEXTS = [
    "ＡＢＣ１２３という型番のプリンターは、Windows 11でも問題なく使えますか？",
    "ﾊﾟｿｺﾝのＣＰＵ使用率が１００％になった。",
    "新型iPhoneとＭａｃＢｏｏｋ Ａｉｒを比べてみた。",
    "COVID-19の影響で、リモートワークを導入する企業が一気に増えた。",
]


@pytest.mark.parametrize("subword", ["wordpiece", "character"])
def test_lowercase_with_full_width_letters(tmp_path, tagger, subword):
    if subword == "wordpiece":
        vocab = train_wordpiece(tagger, lower=True) + ["macbook", "air", "ｍ", "##ａ"]
    else:
        vocab = character_vocab(tagger, lower=True)
    directory = write_checkpoint(tmp_path, vocab, subword_tokenizer_type=subword, do_lower_case=True)
    tokenizer, encodings = assert_same_ids(directory, LOWER_TEXTS + SENTENCES)
    for text, encoding in zip(LOWER_TEXTS + SENTENCES, encodings):
        assert_offsets_point_at_source(text, encoding, lower=True)
    tokens = [t for e in encodings for t in e.tokens]
    assert "abc" in tokens or "a" in tokens
    assert not any(t.isupper() for t in tokens if t not in SPECIALS)


@pytest.mark.parametrize("word_tokenizer_type", ["mecab", "basic"])
def test_lowercase_is_pythons(tmp_path, word_tokenizer_type):
    # str.lower() depends on context (final sigma); `tokenizers` lowercases char by char.
    vocab = SPECIALS + ["οδος", "οδοσ", "σ", "ς", "##ς", "##σ", "ο", "##δ", "##ο", "i̇stanbul", "i", "##s"]
    directory = write_checkpoint(
        tmp_path, vocab, do_lower_case=True, word_tokenizer_type=word_tokenizer_type
    )
    tokenizer, encodings = assert_same_ids(directory, ["ΟΔΟΣ", "Σ ΟΔΟΣ. İstanbul", "ΟΔΟΣ.Σ"])
    assert encodings[0].tokens[1] == "οδος"


def test_upper_case_kept_without_lowercasing(wordpiece_dir):
    encoding = load_tokenizer(wordpiece_dir).encode("ＡＢＣ")
    assert "".join(t.removeprefix("##") for t in encoding.tokens) in ("ABC", "[UNK]")


@pytest.mark.parametrize(
    "config",
    [
        {"word_tokenizer_type": "basic"},
        {"word_tokenizer_type": "basic", "do_lower_case": True},
        {"word_tokenizer_type": "basic", "subword_tokenizer_type": "character"},
        {"do_word_tokenize": False},
        {"do_word_tokenize": False, "subword_tokenizer_type": "character"},
        {"mecab_kwargs": {"mecab_dic": "unidic_lite", "normalize_text": False}},
        {"do_subword_tokenize": False},
        {"do_lower_case": True, "never_split": ["Windows", "AI"]},
    ],
    ids=[
        "basic", "basic-lower", "basic-char", "no-words", "no-words-char", "no-nfkc", "no-subwords",
        "never-split",
    ],
)
def test_other_settings_match_transformers(tmp_path, tagger, config):
    vocab = train_wordpiece(tagger) + ["Windows", "iPhone", "ABC123", "AI"]
    vocab = list(dict.fromkeys(vocab))
    directory = write_checkpoint(tmp_path, vocab, **config)
    tokenizer, encodings = assert_same_ids(directory, SENTENCES + ["[MASK]は\u3000Café です"])
    for token, (start, end), special in zip(encodings[0].tokens, encodings[0].offsets, encodings[0].special):
        assert special or 0 <= start < end <= len(SENTENCES[0])


def test_added_and_extra_special_tokens(tmp_path, tagger):
    config = {
        "additional_special_tokens": ["<ent>"],
        "added_tokens_decoder": {
            "4": {"content": "[MASK]", "lstrip": True, "rstrip": False, "normalized": False,
                  "single_word": False, "special": True},
            "900": {"content": "<new>", "lstrip": False, "rstrip": False, "normalized": True,
                    "single_word": False, "special": False},
        },
    }
    directory = write_checkpoint(tmp_path, train_wordpiece(tagger), **config)
    assert_same_ids(directory, ["東京は<ent>です <new> [MASK]。", "<ent><new>[MASK]"])


# --------------------------------------------------------------------------- errors


def error_for(directory: Path) -> str:
    with pytest.raises(TagtuneError) as caught:
        load_tokenizer(directory)
    return str(caught.value)


def test_missing_vocab(tmp_path):
    write_checkpoint(tmp_path, SPECIALS)
    (tmp_path / "vocab.txt").unlink()
    assert "vocab.txt" in error_for(tmp_path)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"word_tokenizer_type": "sudachi"}, "sudachi"),
        ({"word_tokenizer_type": "whitespace"}, "word_tokenizer_type"),
        ({"subword_tokenizer_type": "sentencepiece"}, "sentencepiece"),
        ({"mecab_kwargs": {"mecab_dic": "jumandic"}}, "mecab_dic"),
        ({"mecab_kwargs": {"mecab_dic": "unidic_lite", "dic": "x"}}, "mecab_kwargs"),
        ({"mecab_kwargs": "unidic_lite"}, "mecab_kwargs"),
        ({"mecab_kwargs": {"mecab_dic": None, "mecab_option": "-d /nonexistent/dic"}}, "MeCab"),
        ({"do_lower_case": "yes"}, "do_lower_case"),
        ({"unk_token": "<unk>"}, "unk"),
    ],
)
def test_bad_config(tmp_path, config, message):
    write_checkpoint(tmp_path, SPECIALS + ["東京"], **config)
    assert message in error_for(tmp_path)


def test_bad_json(tmp_path):
    write_checkpoint(tmp_path, SPECIALS)
    broken = '{"tokenizer_class": "BertJapaneseTokenizer",'
    (tmp_path / "tokenizer_config.json").write_text(broken, encoding="utf-8")
    assert "tokenizer_config.json" in error_for(tmp_path)


@pytest.mark.parametrize("module", ["fugashi", "unidic_lite"])
def test_missing_package_says_what_to_install(tmp_path, monkeypatch, module):
    write_checkpoint(tmp_path, SPECIALS)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    message = error_for(tmp_path)
    assert "pip install 'tagtune[ja]'" in message
    assert module.replace("_", "-") in message


def test_missing_ipadic_says_what_to_install(tmp_path, monkeypatch):
    write_checkpoint(tmp_path, SPECIALS, mecab_kwargs={"mecab_dic": "ipadic"})
    monkeypatch.setitem(sys.modules, "ipadic", None)
    assert "pip install ipadic" in error_for(tmp_path)


# --------------------------------------------------------------------------- alignment


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_char_spans_to_labels_and_back_in_japanese(wordpiece_dir, scheme):
    """Spans over MeCab words (half-width kana, full-width letters, emoji around them) survive
    char spans -> subword labels -> char spans unchanged."""
    from tagtune.data.align import token_labels, units_of
    from tagtune.data.decode import spans_from_tags
    from tagtune.data.schemes import tag_names
    from tagtune import Span

    tokenizer = load_tokenizer(wordpiece_dir)
    labels = tag_names(["KEY", "ORG"], scheme)
    label2id = {t: i for i, t in enumerate(labels)}
    checked = 0
    for text in SENTENCES:
        enc = tokenizer.encode(text)
        units = units_of(enc)
        # a one-word span every fourth word and a two-word span where there is room
        spans = [Span(*units.ranges[i], "KEY") for i in range(0, len(units) - 3, 4)]
        spans += [Span(units.ranges[i][0], units.ranges[i + 1][1], "ORG") for i in range(2, len(units) - 1, 4)]
        ids, stats = token_labels(spans, enc, label2id, scheme)
        assert stats.message() is None
        tags = [labels[ids[t]] for t in units.first]
        back = spans_from_tags(tags, units.ranges, scheme)
        assert back == sorted(spans)
        for span in back:  # each span is a slice of the original text, not of the NFKC form
            assert unicodedata.normalize("NFKC", text[span.start:span.end]).strip()
        checked += len(back)
    assert checked > 60
    # a span cutting a word in half is widened to the whole word
    text = "倉庫にあった古いﾃﾞｰﾀを移行した。"
    enc = tokenizer.encode(text)
    start = text.index("ﾃﾞｰﾀ")
    ids, stats = token_labels([Span(start + 1, start + 3, "KEY")], enc, label2id, scheme)
    assert stats.widened == 1
    units = units_of(enc)
    back = spans_from_tags([labels[ids[t]] for t in units.first], units.ranges, scheme)
    assert [text[s.start:s.end] for s in back] == ["ﾃﾞｰﾀ"]
