"""DeBERTa-v2/v3 folders that ship a SentencePiece model (``spm.model``) and no tokenizer.json.

A small Unigram model is trained here with the sentencepiece library, with [PAD], [CLS], [SEP]
and [UNK] at ids 0-3 as microsoft/deberta-v3-*'s spm.model has them, and written into folders as
the Hub repos hold them: tokenizer_config.json ({"do_lower_case": false, "vocab_type": "spm"},
with or without tokenizer_class), special_tokens_map.json, added_tokens.json putting [MASK]
after the vocabulary (or no such files, [MASK] then taking the next id as well), config.json of
model_type "deberta-v2". The checks: tagtune's ids and pipeline are those of transformers'
AutoTokenizer, offsets slice the original text, character spans survive alignment to tokens and
back, the conversion is cached, a damaged model is a one-line error, and a saved folder loads in
both.

The normaliser is the model's own (sentencepiece is the reference, see test_spm_reference.py),
which transformers' versions build differently: ids are compared with transformers on the texts
it normalises as sentencepiece does, and the rest of the pipeline field for field.
"""

import functools
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import sentencepiece as spm
import transformers

from tagtune import TagtuneError
from tagtune.text import sentencepiece as tagtune_spm
from tagtune.data.align import with_specials
from tagtune.text.tokenizer import load_tokenizer

from test_tokenizer_modern import assert_offsets_slice, assert_spans_survive

WORDS = [
    "Alice", "met", "Bob", "at", "the", "Tokyo", "Tower", "we", "flew", "from", "Paris", "to", "Osaka",
    "café", "naïve", "résumé", "déjà", "vu", "Zürich", "Ångström", "São", "Paulo", "Kraków", "news",
    "museum", "opens", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "great", "job", "team",
]
CJK = ["東京タワー", "京都", "大阪から来た", "新しい電車", "北京", "서울", "ニュース"]
EMOJI = ["😀", "👍", "🎉", "🇯🇵", "❤️"]
PUNCT = [".", ",", "!", "?", ":", ";", "(", ")", "—", "\"", "'"]


def corpus() -> list[str]:
    """A few hundred lines of English with punctuation, numbers, accents, CJK and emoji (fixed seed)."""
    rnd = random.Random(0)
    lines = []
    for _ in range(400):
        parts = rnd.sample(WORDS, 6) + [rnd.choice(CJK), str(rnd.randint(0, 99999)), f"{rnd.random() * 100:.2f}"]
        parts += [rnd.choice(EMOJI)] if rnd.random() < 0.5 else []
        rnd.shuffle(parts)
        line = " ".join(p + (rnd.choice(PUNCT) if rnd.random() < 0.3 else "") for p in parts)
        lines.append(line[0].upper() + line[1:])
    return lines


def train(model_type: str = "unigram", vocab_size: int = 600, lines: list[str] | None = None, **options) -> bytes:
    """spm.model bytes with deberta-v3's special pieces: [PAD] 0, [CLS] 1, [SEP] 2 (control), [UNK] 3,
    trained on ``lines`` (by default :func:`corpus`)."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus() if lines is None else lines), model_writer=out, model_type=model_type, vocab_size=vocab_size,
        character_coverage=1.0, hard_vocab_limit=False, num_threads=1, minloglevel=2,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", **options,
    )
    return out.getvalue()


SPECIALS = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]",
            "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}


def write_folder(folder, model: bytes, form: str = "v3", **options):
    """A microsoft/deberta-v3-*-like folder. ``form``: "v3" (tokenizer_class, special_tokens_map.json
    and added_tokens.json with [MASK] after the vocabulary), "bare" (no tokenizer_class and no
    other tokenizer file, as the Hub's deberta-v3-base: config.json's model_type names the
    tokenizer), "decoder" (added_tokens_decoder in tokenizer_config.json, as transformers saves it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spm.model").write_bytes(model)
    size = len(tagtune_spm.parse_model(model).pieces)
    settings = {"do_lower_case": False, "vocab_type": "spm", **options}
    if form != "bare":
        settings["tokenizer_class"] = "DebertaV2Tokenizer"
    if form == "v3":
        (folder / "special_tokens_map.json").write_text(json.dumps(SPECIALS))
        (folder / "added_tokens.json").write_text(json.dumps({"[MASK]": size}))
    if form == "decoder":
        flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
        ids = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, "[MASK]": size}
        settings["added_tokens_decoder"] = {str(i): {"content": t, **flags} for t, i in ids.items()}
        settings.update(SPECIALS)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    (folder / "config.json").write_text(json.dumps({"model_type": "deberta-v2", "vocab_size": size + 100,
                                                    "pad_token_id": 0}))
    return folder


@pytest.fixture(scope="module")
def model() -> bytes:
    return train()


FORMS = {
    "v3": {"form": "v3"},
    "bare": {"form": "bare"},
    "decoder": {"form": "decoder"},
    "split-by-punct": {"form": "v3", "split_by_punct": True},
    "lower-case": {"form": "v3", "do_lower_case": True},
    "no-prefix-space": {"form": "bare", "add_prefix_space": False},
}


@pytest.fixture(scope="module", params=list(FORMS))
def folder(request, model, tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp(request.param), model, **FORMS[request.param])


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Conversions are cached in the test's own folder, never in the user's."""
    monkeypatch.setenv("TAGTUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "tokenizers"


def reference(folder):
    return transformers.AutoTokenizer.from_pretrained(folder)


def normalised(backend, text: str) -> str:
    """``text`` as a `tokenizers` pipeline normalises it, its words joined (``▁`` for spaces, the
    dummy prefix included), with no added token split off."""
    text = backend.normalizer.normalize_str(text) if backend.normalizer else text
    return "".join(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text))


@functools.lru_cache(maxsize=None)
def agreeing(model: bytes, texts: tuple[str, ...]) -> tuple[str, ...]:
    """Those of ``texts`` that the installed transformers normalises as sentencepiece does with
    ``model`` (in a plain DeBERTa-v3 folder): where they differ, sentencepiece is followed
    (test_spm_reference.py says where and for which version)."""
    processor = spm.SentencePieceProcessor(model_proto=model)
    with tempfile.TemporaryDirectory() as folder:
        backend = reference(write_folder(Path(folder), model)).backend_tokenizer
        return tuple(t for t in texts if normalised(backend, t) == processor.normalize(t))


def compared(folder, texts) -> tuple[str, ...]:
    """The texts on which transformers is the reference for the folder's model; never none."""
    chosen = agreeing((folder / "spm.model").read_bytes(), tuple(texts))
    assert len(chosen) >= len(texts) // 2, f"transformers agrees with sentencepiece on {len(chosen)} of {len(texts)} texts"
    return chosen


TEXTS = [
    "Alice met Bob at the Tokyo Tower.",
    "  leading and trailing  ",
    "multiple   spaces\tand\nnew  lines\r\nhere",
    "\ttab first and a newline last\n",
    "Café naïve résumé — déjà vu in Zürich, São Paulo & Kraków!",
    "Cafe\u0301 with a combining accent",
    "UPPER lower MiXeD Case",
    "東京タワーに行きました。",
    "mixed 東京 and 서울 in English 😀!",
    "emoji 👍🏽 🇯🇵 👨‍👩‍👧 ❤️ 🎉",
    "numbers 12,345.67 and 3.14 (approx.); ratio 1:2",
    "rare 鬱𠮷🦜 characters",
    "The capital is [MASK] .",
    "[CLS] written inside [SEP] the text",
    " ",
    "",
]


# --------------------------------------------------------------------------- the model file


def test_the_model_file_is_read_as_sentencepiece_reads_it(model):
    parsed = tagtune_spm.parse_model(model)
    processor = spm.SentencePieceProcessor(model_proto=model)
    assert len(parsed.pieces) == processor.get_piece_size()
    for i, piece in enumerate(parsed.pieces):
        assert piece.text == processor.id_to_piece(i)
        assert piece.score == pytest.approx(processor.get_score(i), abs=0, rel=0)
    assert [p.type for p in parsed.pieces[:4]] == [tagtune_spm.CONTROL] * 3 + [tagtune_spm.UNKNOWN]
    assert processor.is_control(1) and processor.is_unknown(3)
    spec = parsed.trainer
    assert (spec.model_type, spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id) == (1, 3, 1, 2, 0)
    assert (spec.unk_piece, spec.bos_piece, spec.eos_piece, spec.pad_piece) == ("[UNK]", "[CLS]", "[SEP]", "[PAD]")
    assert parsed.normalizer.add_dummy_prefix and parsed.normalizer.precompiled_charsmap


# --------------------------------------------------------------------------- ids


def test_ids_equal_transformers(folder):
    """With special tokens, and as a window: the ids transformers' AutoTokenizer gives, on the
    texts it normalises as sentencepiece does (those with [MASK] and [CLS] written in among them)."""
    ours, theirs = load_tokenizer(folder), reference(folder)
    assert ours.kind == "spm.model"
    texts = compared(folder, TEXTS)
    assert {"The capital is [MASK] .", "[CLS] written inside [SEP] the text"} <= set(texts)
    for text in texts:
        expected = theirs(text)["input_ids"]
        assert ours.encode(text, add_special_tokens=True).ids == expected, text
        assert with_specials(ours.encode(text).ids, ours.cls_id, ours.sep_id) == expected, text
    expected = theirs("a")["input_ids"]
    assert (ours.cls_id, ours.sep_id, ours.pad_id) == (expected[0], expected[-1], theirs.pad_token_id)
    assert ours.backend.get_vocab(with_added_tokens=True) == theirs.get_vocab()
    assert ours.backend.token_to_id("[MASK]") == theirs.mask_token_id == len(tagtune_spm.parse_model(
        (folder / "spm.model").read_bytes()).pieces)


def pipelines(folder) -> tuple[dict, dict]:
    """tagtune's and transformers' tokenizer pipelines for ``folder``, as tokenizer.json data,
    without the normalisers (tagtune's follow the model's spec); lowercasing, which comes first
    in both, is kept as ``lowercase``."""
    ours, theirs = load_tokenizer(folder), reference(folder)
    mine, its = json.loads(ours.backend.to_str()), json.loads(theirs.backend_tokenizer.to_str())
    for data in (mine, its):
        data.pop("truncation"), data.pop("padding")
        data["added_tokens"] = sorted(data["added_tokens"], key=lambda t: t["id"])
        steps = data.pop("normalizer")["normalizers"]
        data["lowercase"] = steps[0]["type"] == "Lowercase"
    return mine, its


def test_the_pipeline_is_transformers(folder):
    """The pipeline but the normaliser (pre-tokenizers, model, added tokens and their flags,
    template, decoder) is the one transformers builds, and lowercasing comes first in both."""
    mine, its = pipelines(folder)
    assert mine == its


def test_the_normaliser_is_the_models_own(folder):
    """The normaliser is the spec's (see test_spm_reference.py for what it gives): the
    precompiled character map, NFC after the nmt_nfkc map, the spaces stripped and collapsed."""
    backend = load_tokenizer(folder).backend
    steps = json.loads(backend.to_str())["normalizer"]["normalizers"]
    types = [step["type"] for step in steps]
    assert types[types.index("Precompiled") + 2:] == ["NFC", "Replace", "Replace"]
    charsmap = tagtune_spm.parse_model((folder / "spm.model").read_bytes()).normalizer.precompiled_charsmap
    expected = "full 123" if types[0] == "Lowercase" else "Full 123"
    assert backend.normalizer.normalize_str("Ｆｕｌｌ\u3000\u3000１２３\t ") == expected
    assert charsmap and "Strip" not in types


@pytest.mark.parametrize("form", ["v3", "bare"])
def test_control_and_user_defined_pieces(tmp_path, form):
    """Pieces the model was given as control symbols are special added tokens; user-defined ones
    stay pieces of the model, whole wherever they occur, with the ids sentencepiece gives.
    transformers made them added tokens before 5.25 (the space before one was lost): its added
    tokens are compared without them."""
    model = train(control_symbols=["<ctrl>"], user_defined_symbols=["<url>", "@@"])
    folder = write_folder(tmp_path, model, form=form)
    mine, its = pipelines(folder)
    its["added_tokens"] = [t for t in its["added_tokens"] if t["content"] not in ("<url>", "@@")]
    assert mine == its
    flags = {t["content"]: t["special"] for t in mine["added_tokens"]}
    assert flags["<ctrl>"] and "<url>" not in flags and "@@" not in flags
    ours, theirs = load_tokenizer(folder), reference(folder)
    processor = spm.SentencePieceProcessor(model_proto=model)
    for text in ["see <url> and a@@b, too", "<URL>@@<url>", "x<url>y", "x <url> y", "@@@"]:
        assert ours.encode(text).ids == processor.encode(text), text
    for text in compared(folder, [*TEXTS, "see <url> and a@@b, <ctrl> too", "<URL>@@<url>"]):
        if "<url>" in text or "@@" in text:
            continue  # the user-defined pieces, compared with sentencepiece above
        assert ours.encode(text, add_special_tokens=True).ids == theirs(text)["input_ids"], text
    assert "<ctrl>" in ours.encode("a <ctrl> b").tokens


def test_a_tokenizer_class_other_than_deberta_is_not_converted(tmp_path, model):
    folder = write_folder(tmp_path, model)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "tokenizer_class": "T5Tokenizer"}))
    with pytest.raises(TagtuneError, match="DebertaV2Tokenizer only"):
        load_tokenizer(folder)


def test_vocab_file_names_the_model(tmp_path, model):
    """Without spm.model, the file tokenizer_config.json's vocab_file names (by its name alone)."""
    folder = write_folder(tmp_path, model)
    (folder / "spm.model").rename(folder / "other.model")
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "vocab_file": "/somewhere/else/other.model"}))
    tokenizer = load_tokenizer(folder)
    assert tokenizer.kind == "spm.model" and tokenizer.model_file == "other.model"
    out = tmp_path / "saved"
    out.mkdir()
    tokenizer.save(out)
    assert (out / "other.model").is_file() and (out / "tokenizer.json").is_file()


# --------------------------------------------------------------------------- offsets


def test_offsets_slice_the_original_text(folder):
    assert_offsets_slice(load_tokenizer(folder), TEXTS)


def test_space_marks_cover_no_character(folder):
    tokenizer = load_tokenizer(folder)
    text = "  leading ,  and  trailing  "
    enc = tokenizer.encode(text)
    assert all(s == e for token, (s, e) in zip(enc.tokens, enc.offsets) if not token.replace("\u2581", ""))
    first = next(t for t, (s, e) in enumerate(enc.offsets) if e > s)
    assert enc.offsets[first][0] == text.index("leading")


# (text, entities): each entity a substring (its first occurrence) and a type. The entities are
# whole words (between whitespace), as words are what labels go to without split_by_punct.
ENTITIES = [
    ("Alice met Bob at the Tokyo Tower today", [("Alice", "PER"), ("Bob", "PER"), ("Tokyo Tower", "LOC")]),
    ("  we flew from  Paris to\tOsaka  ", [("Paris", "LOC"), ("Osaka", "LOC")]),
    ("Déjà vu in Zürich and São Paulo & Kraków", [("Zürich", "LOC"), ("São Paulo", "LOC"), ("Kraków", "LOC")]),
    ("We went up 東京タワー on Monday", [("東京タワー", "LOC")]),
    ("nice 👍🏽 and 🇯🇵 emoji", [("👍🏽", "EMO"), ("🇯🇵", "EMO")]),
    ("from 鬱𠮷 land", [("鬱𠮷", "LOC")]),
    ("Cafe\u0301 in Paris opens", [("Cafe\u0301", "ORG"), ("Paris", "LOC")]),
]
# Entities with punctuation next to them: apart from it where punctuation is split off.
PUNCTUATED = [
    ("Alice met Bob at the Tokyo Tower.", [("Alice", "PER"), ("Bob", "PER"), ("Tokyo Tower", "LOC")]),
    ("Déjà vu in Zürich, São Paulo & Kraków!", [("Zürich", "LOC"), ("São Paulo", "LOC"), ("Kraków", "LOC")]),
    ("Cafe\u0301 (Paris) opens", [("Cafe\u0301", "ORG"), ("Paris", "LOC")]),
]


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
@pytest.mark.parametrize("all_subwords", [False, True])
def test_spans_survive_alignment(folder, scheme, all_subwords):
    assert_spans_survive(load_tokenizer(folder), ENTITIES, scheme, all_subwords)


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_spans_next_to_punctuation(tmp_path, model, scheme):
    """With split_by_punct, punctuation is a word of its own: an entity before a full stop or
    inside brackets survives at word level too."""
    tokenizer = load_tokenizer(write_folder(tmp_path, model, split_by_punct=True))
    for all_subwords in (False, True):
        assert_spans_survive(tokenizer, PUNCTUATED, scheme, all_subwords)


# --------------------------------------------------------------------------- cache


def test_the_conversion_is_cached(tmp_path, model, cache, monkeypatch):
    folder = write_folder(tmp_path / "model", model)
    calls = []
    build = tagtune_spm.build_deberta_v2
    monkeypatch.setattr(tagtune_spm, "build_deberta_v2", lambda *a, **k: calls.append(1) or build(*a, **k))
    first = load_tokenizer(folder)
    files = list(cache.glob("*.json"))
    assert len(calls) == 1 and len(files) == 1 and not list(cache.glob("*.tmp"))
    stamp = files[0].stat().st_mtime_ns
    again = load_tokenizer(folder)
    assert len(calls) == 1 and files[0].stat().st_mtime_ns == stamp
    for text in TEXTS:
        assert again.encode(text, add_special_tokens=True).ids == first.encode(text, add_special_tokens=True).ids
    # other settings are another conversion
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "do_lower_case": True}))
    lower = load_tokenizer(folder)
    assert len(calls) == 2 and len(list(cache.glob("*.json"))) == 2
    assert lower.encode("ALICE").ids == first.encode("alice").ids
    # a damaged cache file is converted again
    files[0].write_text("{not json")
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    assert load_tokenizer(folder).encode("Alice").ids == first.encode("Alice").ids and len(calls) == 3


def test_an_unwritable_cache_is_no_error(tmp_path, model, monkeypatch):
    folder = write_folder(tmp_path / "model", model)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("TAGTUNE_CACHE", str(blocker))
    assert load_tokenizer(folder).encode("Alice met Bob").ids


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TAGTUNE_CACHE", str(tmp_path / "t"))
    assert tagtune_spm.cache_dir() == tmp_path / "t" / "tokenizers"
    monkeypatch.delenv("TAGTUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert tagtune_spm.cache_dir() == tmp_path / "x" / "tagtune" / "tokenizers"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert tagtune_spm.cache_dir() == tmp_path / "h" / ".cache" / "tagtune" / "tokenizers"


# --------------------------------------------------------------------------- damaged models


@pytest.mark.parametrize("cut", [0.5, 0.9, 0.999])
def test_a_truncated_model_is_a_one_line_error(tmp_path, model, cut):
    folder = write_folder(tmp_path, model)
    (folder / "spm.model").write_bytes(model[:int(len(model) * cut)])
    with pytest.raises(TagtuneError) as error:
        load_tokenizer(folder)
    message = str(error.value)
    assert "\n" not in message and str(folder / "spm.model") in message and "SentencePiece" in message


@pytest.mark.parametrize("data", [b"", b"not a SentencePiece model at all", b"\x0a\xff\xff\xff\xff\x0f", b"{}"])
def test_a_file_that_is_no_model_is_a_one_line_error(tmp_path, model, data):
    folder = write_folder(tmp_path, model)
    (folder / "spm.model").write_bytes(data)
    with pytest.raises(TagtuneError, match="spm.model: not a readable SentencePiece model") as error:
        load_tokenizer(folder)
    assert "\n" not in str(error.value)


def test_a_bpe_model_is_refused(tmp_path):
    folder = write_folder(tmp_path, train("bpe", 500))
    with pytest.raises(TagtuneError, match="SentencePiece BPE model.*Unigram kind only") as error:
        load_tokenizer(folder)
    assert "\n" not in str(error.value) and "spm.model" in str(error.value)


# --------------------------------------------------------------------------- saving


@pytest.mark.parametrize("name", ["v3", "bare", "split-by-punct"])
def test_a_saved_folder_loads_in_transformers_and_tagtune(tmp_path, model, name):
    """Saved (as a trained tagger is): tokenizer.json of the converted pipeline beside the
    copied files; transformers and tagtune read it to the same ids, without converting."""
    source = write_folder(tmp_path / "source", model, **FORMS[name])
    tokenizer = load_tokenizer(source)
    out = tmp_path / "saved"
    out.mkdir()
    tokenizer.save(out)
    for path in source.iterdir():
        if path.name != "config.json":
            assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    shutil.copyfile(source / "config.json", out / "config.json")
    again, theirs = load_tokenizer(out), reference(out)
    assert again.kind == "tokenizer.json"
    for text in TEXTS:
        ids = tokenizer.encode(text, add_special_tokens=True).ids
        assert again.encode(text, add_special_tokens=True).ids == ids == theirs(text)["input_ids"], text
        assert again.encode(text).offsets == tokenizer.encode(text).offsets


# --------------------------------------------------------------------------- the Hub


def test_the_hub_downloads_the_model_and_its_settings():
    from tagtune.store.hub import TOKENIZER_FILES, files_to_fetch

    wanted = {"spm.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"}
    assert wanted <= set(TOKENIZER_FILES)
    listing = ["config.json", "pytorch_model.bin", "spm.model", "tokenizer_config.json", "added_tokens.json",
               "special_tokens_map.json", "tf_model.h5", "README.md"]
    extras, weights = files_to_fetch(listing, "microsoft/deberta-v3-base")
    assert wanted <= set(extras)
    assert weights == "pytorch_model.bin"


def test_no_torch_is_needed(tmp_path, model):
    """The conversion imports neither torch, sentencepiece nor protobuf."""
    folder = write_folder(tmp_path / "model", model)
    code = ("import sys\nfor name in ('torch', 'sentencepiece', 'google.protobuf'): sys.modules[name] = None\n"
            "from tagtune.text.tokenizer import load_tokenizer\nprint(load_tokenizer(sys.argv[1]).encode('Alice').ids)")
    env = {**os.environ, "TAGTUNE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code, str(folder)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == load_tokenizer(folder).encode("Alice").ids
