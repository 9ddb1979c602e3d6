"""Reading checkpoints in every stored form, strictly; saving folders transformers loads."""

import json
import logging
import shutil

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from tagtune import TagtuneError
from tagtune.models.checkpoint import load_model, read_weights, save_model
from tagtune.store.hub import resolve
from tagtune.text.tokenizer import load_tokenizer

from conftest import tiny_hf_model

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def logits_of(model, ids):
    with torch.no_grad():
        return model(ids, torch.tensor([0, len(ids)]))


def test_saved_folder_loads_in_transformers_without_warnings(minilm, tmp_path, capfd):
    model, _ = load_model(minilm, labels=LABELS)
    tokenizer = load_tokenizer(minilm)
    out = save_model(model, tokenizer, tmp_path / "tagger")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}

    capfd.readouterr()
    ref, info = transformers.AutoModelForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    printed = capfd.readouterr()
    for word in ("MISSING", "UNEXPECTED", "MISMATCH", "newly initialized"):  # transformers' load report
        assert word not in printed.err + printed.out
    assert type(ref).__name__ == "BertForTokenClassification"
    assert ref.config.id2label == dict(enumerate(LABELS))

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    batch = hf_tok(["Angela Merkel visited Lisbon last May."], return_tensors="pt")
    with torch.no_grad():
        expected = ref.eval()(**batch).logits[0]
    torch.testing.assert_close(logits_of(model, batch["input_ids"][0]), expected, atol=1e-4, rtol=0)

    again, report = load_model(out)  # tagtune loads it back identically, head included
    assert not report.new_head and again.config.id2label == model.config.id2label
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", ["roberta", "electra", "distilbert", "modernbert"])
def test_other_families_round_trip_through_transformers(kind, tmp_path):
    tiny_hf_model(kind).save_pretrained(tmp_path / "src")
    model, _ = load_model(tmp_path / "src", labels=["O", "B-X", "I-X"])
    save_model(model, None, tmp_path / "out")
    ref, info = transformers.AutoModelForTokenClassification.from_pretrained(
        tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = torch.randint(5, 99, (19,))
    with torch.no_grad():
        expected = ref.eval()(input_ids=ids[None]).logits[0]
    torch.testing.assert_close(logits_of(model, ids), expected, atol=1e-4, rtol=0)


def test_base_checkpoint_gets_a_new_head_initialised_as_hf(tmp_path):
    tiny_hf_model("bert", task="base").save_pretrained(tmp_path)
    model, report = load_model(tmp_path, labels=LABELS)
    assert report.new_head
    assert "pooler.dense.weight" in report.dropped
    w = model.classifier.weight
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert 0.005 < w.std().item() < 0.05  # normal(0, initializer_range=0.02)
    unlabelled, _ = load_model(tmp_path)
    assert unlabelled.classifier is None


def test_heads_of_other_tasks_are_dropped_and_named(tmp_path):
    tiny_hf_model("bert", task="masked-lm").save_pretrained(tmp_path / "mlm")
    _, report = load_model(tmp_path / "mlm", labels=LABELS)
    assert any(k.startswith("cls.predictions") for k in report.dropped)
    tiny_hf_model("roberta", task="sequence").save_pretrained(tmp_path / "seq")
    _, report = load_model(tmp_path / "seq", labels=LABELS)
    assert "classifier.out_proj.weight" in report.dropped and report.new_head


def test_changed_labels_replace_the_head(tmp_path):
    tiny_hf_model("bert").save_pretrained(tmp_path)
    kept, report = load_model(tmp_path)
    assert not report.new_head and kept.config.num_labels == 5
    _, report = load_model(tmp_path, labels=["O", "B-KEY", "I-KEY"])
    assert report.new_head


def test_sharded_safetensors_and_bin_load_the_same_weights(tmp_path):
    ref = tiny_hf_model("bert")
    ref.save_pretrained(tmp_path / "one")
    state = load_file(tmp_path / "one" / "model.safetensors")
    names = sorted(state)
    shard_dir = tmp_path / "sharded"
    shard_dir.mkdir()
    shutil.copy(tmp_path / "one" / "config.json", shard_dir)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in halves.items():
        save_file({k: state[k].contiguous() for k in keys}, shard_dir / fname, metadata={"format": "pt"})
    weight_map = {k: f for f, keys in halves.items() for k in keys}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(tmp_path / "one" / "config.json", bin_dir)
    torch.save(state, bin_dir / "pytorch_model.bin")

    ids = torch.randint(5, 99, (7,))
    expected = logits_of(load_model(tmp_path / "one")[0], ids)
    for folder in (shard_dir, bin_dir):
        torch.testing.assert_close(logits_of(load_model(folder)[0], ids), expected, atol=0, rtol=0)


def test_bin_with_code_in_it_is_refused(tmp_path):
    ref = tiny_hf_model("bert")
    ref.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"weights": ref.state_dict(), "hook": logging.getLogger}, tmp_path / "pytorch_model.bin")
    with pytest.raises(TagtuneError, match="pytorch_model.bin: cannot be read"):
        read_weights(tmp_path)


def test_strict_loading_names_the_keys(tmp_path):
    tiny_hf_model("bert").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)

    broken = dict(state)
    del broken["bert.encoder.layer.1.output.dense.weight"]
    save_file(broken, path, metadata={"format": "pt"})
    with pytest.raises(TagtuneError, match=r"missing weights encoder\.layer\.1\.output\.dense\.weight"):
        load_model(tmp_path)

    broken = dict(state, **{"bert.encoder.layer.0.extra.weight": torch.zeros(2)})
    save_file(broken, path, metadata={"format": "pt"})
    with pytest.raises(TagtuneError, match=r"unexpected weights encoder\.layer\.0\.extra\.weight"):
        load_model(tmp_path)

    broken = dict(state, **{"bert.encoder.layer.0.output.dense.bias": torch.zeros(31)})
    save_file(broken, path, metadata={"format": "pt"})
    with pytest.raises(TagtuneError, match=r"wrong shape: encoder\.layer\.0\.output\.dense\.bias \(31,\) \(model expects \(32,\)\)"):
        load_model(tmp_path)


def test_repo_id_resolves_offline_from_the_hub_cache(tmp_path, monkeypatch, minilm):
    entry = tmp_path / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2"
    snapshot = entry / "snapshots" / "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
    shutil.copytree(minilm, snapshot)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("c9745ed1d9f207416be6d2e6f8de32d1f16199bf")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("sentence-transformers/all-MiniLM-L6-v2") == snapshot
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve("sentence-transformers/all-MiniLM-L6-v2@main") == snapshot
    model, _ = load_model("sentence-transformers/all-MiniLM-L6-v2")
    assert model.config.hidden_size == 384
    with pytest.raises(TagtuneError, match="not in the Hugging Face cache .* HF_HUB_OFFLINE is set"):
        resolve("cl-tohoku/bert-base-japanese-v3")
    with pytest.raises(TagtuneError, match="^sentence-transformers/all-MiniLM-L6-v2@v2: not in the Hugging Face cache"):
        resolve("sentence-transformers/all-MiniLM-L6-v2@v2")


def test_save_never_overwrites_without_permission(minilm, tmp_path):
    model, _ = load_model(minilm, labels=LABELS)
    out = tmp_path / "tagger"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TagtuneError, match="already exists"):
        save_model(model, None, out)
    assert (out / "notes.txt").read_text() == "mine"
    save_model(model, None, out, overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "notes.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["tagger"]  # no temporary folders left behind


def test_write_safetensors_is_read_back_by_the_safetensors_library(tmp_path):
    """tagtune's streaming safetensors writer against the library's reader: every dtype a
    model or its state has, 0-d and empty tensors, a view into a larger tensor, the metadata."""
    from safetensors import safe_open

    from tagtune.models.checkpoint import write_safetensors

    base = torch.randn(6, 5)
    state = {"w": torch.randn(3, 4), "half": torch.randn(7).half(), "bf16": torch.randn(2, 3).bfloat16(),
             "ids": torch.arange(5), "i32": torch.arange(4, dtype=torch.int32), "mask": torch.tensor([True, False]),
             "step": torch.tensor(3.0), "none": torch.zeros(0, 4), "row": base[2], "bytes": torch.arange(3, dtype=torch.uint8)}
    write_safetensors(tmp_path / "m.safetensors", state, {"format": "pt"})
    back = load_file(tmp_path / "m.safetensors")
    assert back.keys() == state.keys()
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape, name
        assert torch.equal(back[name], tensor), name
    with safe_open(tmp_path / "m.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
    header = int.from_bytes((tmp_path / "m.safetensors").read_bytes()[:8], "little")
    assert header % 8 == 0  # the data starts 8-byte aligned
    assert not list(tmp_path.glob("*.tmp"))
