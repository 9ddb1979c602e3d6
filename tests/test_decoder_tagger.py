"""A decoder as a tagger end to end: a tiny random Qwen2 (no special tokens around a text) and a
Gemma (a start token only), each saved with its tokenizer as a model folder, trained by
``tagtune train`` on a few WNUT tweets and run by ``tagtune predict``. The trained folder loads in
transformers' token classifier with the logits tagtune computes, from the ids AutoTokenizer
gives; long texts are cut into windows that count the special tokens the tokenizer adds."""

import json

import numpy as np
import pytest
import torch
import transformers as T

from tagtune import Tagger
from tagtune.data.align import windows_of
from tagtune.text.tokenizer import load_tokenizer

from test_tokenizer_decoder import write_gemma, write_qwen2

SIZES = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
             intermediate_size=24, max_position_embeddings=64)
MODELS = {
    "qwen2": (write_qwen2, lambda vocab: T.Qwen2Config(vocab_size=vocab, **SIZES, pad_token_id=0),
              T.Qwen2ForTokenClassification),
    "gemma": (write_gemma, lambda vocab: T.GemmaConfig(vocab_size=vocab, **SIZES, head_dim=8, pad_token_id=0,
                                                       bos_token_id=2, eos_token_id=1), T.GemmaForTokenClassification),
}
MAX_LENGTH = 48


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request, tmp_path_factory, wnut_files):
    """(family, trained tagger folder): the base model trained for one epoch on 40 tweets."""
    write, config, _ = MODELS[request.param]
    base = write(tmp_path_factory.mktemp(request.param) / "base")
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config(load_tokenizer(base).vocab_size)).save_pretrained(base)
    train = base.parent / "train.conll"
    lines = (wnut_files / "train.conll").read_text(encoding="utf-8").split("\n\n")[:40]
    train.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    out = base.parent / "tagger"
    import tagtune

    tagtune.train(model=str(base), train=str(train), out=str(out), epochs=1, lr=1e-2, max_length=MAX_LENGTH,
                  stride=8, progress=False, device="cpu", seed=0)
    return request.param, out


def test_predict_gives_character_spans(trained, cli, tmp_path, tweets):
    """``tagtune predict`` over texts longer than a window: every span is a stretch of its text
    with no whitespace at its ends."""
    _, folder = trained
    texts = [" ".join(tokens) for tokens, _ in tweets[400:410]]
    texts.append("  ".join(texts[:4]) + " 東京タワー 🦜")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    result = cli("predict", folder, source, "-o", tmp_path / "out.jsonl", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["text"] for row in rows] == texts
    for row in rows:
        for span in row["spans"]:
            piece = row["text"][span["start"]:span["end"]]
            assert piece and piece == piece.strip(), (row["text"], span)
    tokenizer = load_tokenizer(folder)
    assert len(windows_of(len(tokenizer.encode(texts[-1])), MAX_LENGTH, 8, tokenizer.specials)) > 3


def test_trained_folder_loads_in_transformers_with_tagtunes_logits(trained):
    """AutoTokenizer's ids (no start or end token made up) and the token classifier's logits at
    each word's first token are tagtune's."""
    family, folder = trained
    tokenizer, theirs = load_tokenizer(folder), T.AutoTokenizer.from_pretrained(folder)
    reference = MODELS[family][2].from_pretrained(folder).eval()
    tagger = Tagger.load(folder, device="cpu", bf16="off")
    text = "Going to see Taylor Swift in New York 🎉"
    ids = theirs(text)["input_ids"]
    assert tokenizer.encode(text, add_special_tokens=True).ids == ids and len(ids) <= MAX_LENGTH
    assert ids[0] == theirs.bos_token_id if family == "gemma" else theirs.bos_token_id not in ids
    assert ids[-1] != theirs.eos_token_id
    logits, units = tagger.unit_logits([text])
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0, [tokenizer.starts + t for t in units[0].first]]
    torch.testing.assert_close(torch.from_numpy(logits[0]), expected, atol=1e-4, rtol=1e-4)


def test_a_span_head_on_a_decoder_scores_the_tokens_of_each_word(trained, tmp_path):
    """``--head span`` on a tokenizer that adds no start token (Qwen) or only one (Gemma): each
    candidate is scored from the hidden states of its first and last tokens, counted from where
    the text begins in its window."""
    import tagtune
    from tagtune.data.align import units_of
    from tagtune.models.spanhead import span_probabilities

    family, folder = trained
    train = folder.parent / "train.conll"
    out = tmp_path / "span"
    tagtune.train(model=str(folder.parent / "base"), train=str(train), out=str(out), epochs=1, lr=1e-2,
                  max_length=MAX_LENGTH, stride=8, progress=False, device="cpu", seed=0, head="span",
                  max_span_words=3)
    tagger = Tagger.load(out, device="cpu", bf16="off")
    text = "Going to see Taylor Swift in New York"
    found = tagger.candidates([text])[0]
    tokenizer = load_tokenizer(out)
    enc = tokenizer.encode(text)
    unit = units_of(enc)
    ids = tokenizer.encode(text, add_special_tokens=True).ids
    assert ids == T.AutoTokenizer.from_pretrained(out)(text)["input_ids"]
    start = torch.tensor([tokenizer.starts + unit.first[i] for i in found.start])
    end = torch.tensor([tokenizer.starts + unit.last[j] for j in found.end])
    with torch.no_grad():
        hidden = tagger.model.hidden_states(torch.tensor(ids), torch.tensor([0, len(ids)], dtype=torch.int32),
                                            len(ids))
        probs = span_probabilities(tagger.head(hidden, start, end, torch.as_tensor(found.end - found.start)))
    assert len(found.start) == sum(min(3, len(unit) - i) for i in range(len(unit)))
    np.testing.assert_allclose(found.probs, probs.numpy(), atol=1e-5)
