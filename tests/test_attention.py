"""``tagtune train --attention``: a decoder trained with bidirectional attention keeps it in
tagtune.json, and every way of opening the folder (Tagger, ONNX export) runs it so; an encoder
cannot be made causal; a folder whose tagtune.json names none keeps the family's attention."""

import json

import pytest
import torch
import transformers as T

import tagtune
from tagtune import Tagger
from tagtune.errors import TagtuneError
from tagtune.models.checkpoint import load_model
from tagtune.store.layout import SETTINGS_FILE
from tagtune.text.tokenizer import load_tokenizer

from test_tokenizer_decoder import write_qwen2

SIZES = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
             intermediate_size=24, max_position_embeddings=64)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory, wnut_files):
    """(base model folder, a training file of 30 tweets): a tiny random Qwen2."""
    base = write_qwen2(tmp_path_factory.mktemp("attention") / "base")
    torch.manual_seed(0)
    config = T.Qwen2Config(vocab_size=load_tokenizer(base).vocab_size, **SIZES, pad_token_id=0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(base)
    train = base.parent / "train.conll"
    lines = (wnut_files / "train.conll").read_text(encoding="utf-8").split("\n\n")[:30]
    train.write_text("\n\n".join(lines) + "\n", encoding="utf-8")
    return base, train


@pytest.fixture(scope="module")
def bidirectional(qwen2):
    base, train = qwen2
    out = base.parent / "bidirectional"
    tagtune.train(model=str(base), train=str(train), out=str(out), epochs=1, lr=1e-2, max_length=32, stride=8,
                  progress=False, device="cpu", seed=0, attention="bidirectional")
    return out


def first_token_moves(model) -> bool:
    """Whether the first token's logits change when the last token does."""
    ids = torch.randint(5, 99, (10,))
    changed = ids.clone()
    changed[-1] = 4
    cu_seqlens = torch.tensor([0, 10])
    with torch.no_grad():
        return not torch.allclose(model(ids, cu_seqlens)[0], model(changed, cu_seqlens)[0])


def test_bidirectional_decoder_is_saved_and_loaded_so(bidirectional, qwen2):
    settings = json.loads((bidirectional / SETTINGS_FILE).read_text(encoding="utf-8"))
    assert settings["attention"] == "bidirectional"
    tagger = Tagger.load(bidirectional, device="cpu", bf16="off")
    assert not tagger.model.config.causal and first_token_moves(tagger.model)
    assert "- attention: bidirectional" in (bidirectional / "README.md").read_text(encoding="utf-8")
    causal, _ = load_model(bidirectional, attention="causal")  # asked for, over tagtune.json
    assert causal.config.causal and not first_token_moves(causal)
    base, _ = load_model(qwen2[0], labels=["O", "B-X"])  # no tagtune.json: the family's
    assert base.config.causal and not first_token_moves(base)


def test_family_attention_is_not_written(tiny_tagger):
    """A run with the family's attention writes no attention key, so its folder reads as before."""
    assert "attention" not in json.loads((tiny_tagger / SETTINGS_FILE).read_text(encoding="utf-8"))


def test_an_encoder_cannot_be_causal(tiny_bert):
    with pytest.raises(TagtuneError, match="--attention causal is not supported for bert"):
        load_model(tiny_bert, attention="causal")
    model, _ = load_model(tiny_bert, attention="bidirectional")
    assert not model.config.causal


def test_bad_attention_in_tagtune_json_is_one_line(bidirectional, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(bidirectional, folder)
    settings = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8"))
    (folder / SETTINGS_FILE).write_text(json.dumps({**settings, "attention": "sideways"}), encoding="utf-8")
    with pytest.raises(TagtuneError, match=r"tagtune\.json: attention 'sideways' is not one of causal, bidirectional"):
        Tagger.load(folder, device="cpu")


def test_onnx_export_runs_bidirectional(bidirectional, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tagtune.inference.export import export_onnx

    report = export_onnx(bidirectional, tmp_path / "onnx")  # compares the graph's logits with the model's
    assert report["max_abs_logit_difference"] < 1e-4
