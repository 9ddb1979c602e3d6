"""English tokenisation: transformers' ids, and offsets that slice the original text."""

import shutil
import unicodedata

import pytest
import transformers

from tagtune import TagtuneError
from tagtune.text.tokenizer import load_tokenizer

TEXTS = [
    "Café Déjà vu: the naïve résumé of Ångström from Zürich.",
    "ÉCOLE NORMALE SUPÉRIEURE, São Paulo & Kraków",
    "Tokyo 東京 and Beijing 北京 are capitals.",
    "unbelievably\tlong\u00a0words   and  spaces\nacross lines",
    "emoji 🎉🇯🇵 and symbols ™ © ½",
    "",
]


def fold(text: str) -> str:
    """What an uncased BERT does to characters: lowercase, drop accents."""
    decomposed = unicodedata.normalize("NFD", text.lower())
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn")


def assert_offsets_slice_the_text(tokenizer, text):
    enc = tokenizer.encode(text)
    previous_end = 0
    for token, (start, end) in zip(enc.tokens, enc.offsets):
        assert previous_end <= start < end <= len(text), (token, start, end)
        previous_end = end
        if token != "[UNK]":
            assert fold(text[start:end]) == token.removeprefix("##"), (text, token, text[start:end])


@pytest.mark.parametrize("text", TEXTS)
def test_minilm_offsets_slice_the_original_text(minilm, text):
    assert_offsets_slice_the_text(load_tokenizer(minilm), text)


def test_minilm_ids_equal_transformers(minilm, tweets):
    texts = TEXTS + [" ".join(tokens) for tokens, _ in tweets[:50]]
    ours = load_tokenizer(minilm).encode_batch(texts, add_special_tokens=True)
    reference = transformers.AutoTokenizer.from_pretrained(minilm)
    for text, enc in zip(texts, ours):
        assert enc.ids == reference(text)["input_ids"], text
        assert enc.special[0] and enc.special[-1] and enc.offsets[0] == (0, 0)


def test_long_text_is_not_truncated(minilm):
    # tokenizer.json of this checkpoint asks for truncation at 128: tagtune never truncates.
    text = " ".join(["word"] * 600)
    assert len(load_tokenizer(minilm).encode(text)) == 600


def test_vocab_txt_only_checkpoint(minilm, tmp_path, tweets):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm / name, tmp_path / name)
    tokenizer = load_tokenizer(tmp_path)
    assert tokenizer.kind == "wordpiece"
    reference = transformers.BertTokenizer.from_pretrained(tmp_path)  # built from the same vocab.txt
    for text in TEXTS + [" ".join(tokens) for tokens, _ in tweets[:50]]:
        enc = tokenizer.encode(text, add_special_tokens=True)
        assert enc.ids == reference(text)["input_ids"], text
        assert_offsets_slice_the_text(tokenizer, text)


def test_cased_vocab_txt_keeps_case(minilm, tmp_path):
    vocab = (minilm / "vocab.txt").read_text().splitlines() + ["Paris", "##ian"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (tmp_path / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    enc = load_tokenizer(tmp_path).encode("Parisian paris")
    assert enc.tokens == ["Paris", "##ian", "paris"]
    assert enc.offsets == [(0, 5), (5, 8), (9, 14)]


def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(TagtuneError, match="no tokenizer found"):
        load_tokenizer(tmp_path)
