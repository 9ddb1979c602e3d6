"""LoRA training (``tagtune train --lora R``): only the adapters and the classifier move, the
optimizer holds only them, the PEFT adapter folder loads in transformers + PEFT with tagtune's
logits, predict and merge agree with the trained model, and a stopped run resumes."""

import json

import pytest
import torch
import transformers as T
from safetensors.torch import load_file

import tagtune
from tagtune import TagtuneError
from tagtune.apps.examples import write_conll
from tagtune.models.checkpoint import load_model, read_weights
from tagtune.models.lora import add_adapters, choose_targets, load_adapter_model, merge_folder

from test_llama import tiny
from test_model_parity import assert_logits_match, padded_batch

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def small_train(tweets, tmp_path_factory):
    path = tmp_path_factory.mktemp("lora-data") / "train.conll"
    write_conll(path, tweets[:40])
    return path


@pytest.fixture(scope="module")
def lora_run(tiny_bert, small_train, tmp_path_factory):
    """The tiny BERT with rank-4 adapters trained for one epoch on 40 tweets: the folder, and the
    trained model's state as the run left it."""
    from tagtune.training import loop

    out = tmp_path_factory.mktemp("lora") / "tagger"
    seen = {}
    finish = loop.finish

    def keep(run):
        seen.update({k: v.detach().clone() for k, v in run.model.state_dict().items()})
        return finish(run)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "finish", keep)
        tagtune.train(model=str(tiny_bert), train=str(small_train), out=str(out), epochs=1, lr=5e-3, lora=4,
                      batch_size=8, progress=False, device="cpu")
    return out, seen


@pytest.fixture(scope="module")
def lora_tagger(lora_run):
    return lora_run[0]


def test_the_folder_is_peft_s_and_names_the_base(lora_tagger, tiny_bert):
    names = {p.name for p in lora_tagger.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "tagtune.json", "tokenizer.json",
            "README.md"} <= names and "model.safetensors" not in names
    config = json.loads((lora_tagger / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_bert) and config["task_type"] == "TOKEN_CLS"
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["modules_to_save"] == ["classifier"]
    assert "bert.encoder.layer.1.attention.self.query" in config["target_modules"]
    assert len(config["target_modules"]) == 2 * 6
    keys = set(load_file(lora_tagger / "adapter_model.safetensors"))
    assert "base_model.model.bert.encoder.layer.0.intermediate.dense.lora_B.weight" in keys
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= keys
    assert len(keys) == 2 * 12 + 2


def test_base_weights_stay_and_the_adapters_moved(lora_run, tiny_bert):
    _, trained = lora_run
    base, _ = load_model(tiny_bert)
    for name, value in base.state_dict().items():
        key = name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(trained.get(key, trained.get(name)), value), name
    moved = [v for name, v in trained.items() if "lora_B" in name]
    assert len(moved) == 12 and all(v.abs().sum() > 0 for v in moved)  # B starts at zero


def test_transformers_and_peft_load_the_folder_with_equal_logits(lora_tagger, tiny_bert):
    model, _ = load_adapter_model(lora_tagger, merge=False)
    labels = model.config.labels
    base = T.AutoModelForTokenClassification.from_pretrained(
        tiny_bert, num_labels=len(labels), id2label=dict(enumerate(labels)))
    ref = peft.PeftModel.from_pretrained(base, lora_tagger).eval()
    assert_logits_match(ref, model, [14, 6])


def test_predict_and_merge_equal_the_trained_model(lora_tagger, tmp_path, cli):
    model, _ = load_adapter_model(lora_tagger, merge=False)
    ids, mask = padded_batch([11, 5])
    with torch.no_grad():
        expected = model.forward_padded(ids, mask)
    result = cli("merge", str(lora_tagger), str(tmp_path / "merged"))
    assert result.returncode == 0, result.stderr
    merged, _ = load_model(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged.forward_padded(ids, mask), expected, atol=1e-5, rtol=0)
    text = "Going to see Taylor Swift in London tomorrow with Sarah"
    assert tagtune.Tagger.load(lora_tagger).predict(text) == tagtune.Tagger.load(tmp_path / "merged").predict(text)
    again = cli("merge", str(lora_tagger), str(tmp_path / "merged"))
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_only_adapters_and_classifier_train_and_the_optimizer_holds_only_them(tiny_bert, small_train, tmp_path):
    from tagtune.training.config import TrainConfig
    from tagtune.training.loop import make_optimizer

    model, _ = load_model(tiny_bert, labels=["O", "B-X", "I-X"])
    add_adapters(model, 2, 4, 0.0, choose_targets("bert", ["query", "value"]))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {f"encoder.layer.{i}.attention.self.{m}.lora_{ab}.default.weight"
                       for i in range(2) for m in ("query", "value") for ab in "AB"} | {"classifier.weight",
                                                                                         "classifier.bias"}
    optimizer = make_optimizer(model, TrainConfig(model="m", train="t", out="o"))
    held = {id(p) for group in optimizer.groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def test_resume_loads_only_what_trains(lora_tagger, tiny_bert, small_train, tmp_path, monkeypatch):
    from helpers import stop_in_epoch

    out = tmp_path / "run"
    stop_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        tagtune.train(model=str(tiny_bert), train=str(small_train), out=str(out), epochs=2, lr=5e-3, lora=4,
                      batch_size=8, progress=False, device="cpu")
    saved = load_file(next((out / "checkpoint").glob("model-epoch-*.safetensors")))
    assert saved and all(".lora_" in k or k.startswith("classifier.") for k in saved)
    monkeypatch.undo()
    tagtune.train(model=str(tiny_bert), train=str(small_train), out=str(out), epochs=2, lr=5e-3, lora=4,
                  batch_size=8, progress=False, device="cpu", resume=True)
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("options, message", [
    (["--lora", "0"], "--lora must be a whole rank of at least 1"),
    (["--lora", "4", "--lora-dropout", "1"], "--lora-dropout must be from 0 to 1"),
    (["--lora-alpha", "8"], "--lora-alpha is an option of LoRA training; add --lora R"),
    (["--lora", "4", "--lora-targets", "q_proj"], "bert has no layer named 'q_proj'; its layers LoRA can adapt are "
                                                  "attention.self.query, attention.self.key"),
])
def test_errors_are_one_line(cli, tiny_bert, small_train, tmp_path, options, message):
    result = cli("train", "--model", str(tiny_bert), "--train", str(small_train), "--out", str(tmp_path / "o"),
                 "--quiet", "--device", "cpu", *options)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_base_is_named(lora_tagger, tmp_path, cli):
    import shutil

    copy = tmp_path / "moved"
    shutil.copytree(lora_tagger, copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "gone")}))
    (tmp_path / "texts.txt").write_text("some text\n")
    result = cli("predict", str(copy), str(tmp_path / "texts.txt"))
    assert result.returncode == 1 and f"its base model {tmp_path / 'gone'} cannot be found" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(TagtuneError, match="not a LoRA adapter folder"):
        merge_folder(tmp_path, tmp_path / "m")


@pytest.mark.parametrize("kind", ["qwen3", "distilbert", "modernbert", "deberta-v2"])
def test_each_family_s_adapter_folder_loads_in_peft_with_equal_logits(kind, tmp_path):
    from conftest import tiny_hf_model
    from tagtune.models.lora import write_adapter_files

    if kind == "qwen3":  # the Llama layout, whose classifier transformers names score
        ref = tiny(kind)
    elif kind == "deberta-v2":
        torch.manual_seed(0)
        ref = T.DebertaV2ForTokenClassification(T.DebertaV2Config(
            vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=64,
            type_vocab_size=0, num_labels=5))
    else:
        ref = tiny_hf_model(kind)
    ref.save_pretrained(tmp_path / "base")
    model, _ = load_model(tmp_path / "base")
    add_adapters(model, 2, 4, 0.0, choose_targets(kind, None))
    with torch.no_grad():  # B starts at zero: give the adapters something to add
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    (tmp_path / "lora").mkdir()
    write_adapter_files(model, None, tmp_path / "lora", str(tmp_path / "base"))
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == (["score"] if kind == "qwen3" else ["classifier", "head"]
                                         if kind == "modernbert" else ["classifier"])
    base = T.AutoModelForTokenClassification.from_pretrained(tmp_path / "base")
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    assert_logits_match(peft_model, model.eval(), [10, 4])
    merged, _ = load_adapter_model(tmp_path / "lora")
    assert_logits_match(peft_model, merged, [9])


def test_export_of_an_adapter_folder_merges_first(lora_tagger, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tagtune.inference.export import export_onnx

    report = export_onnx(lora_tagger, tmp_path / "onnx")
    names = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert report["max_abs_logit_difference"] < 1e-4 and "model.onnx" in names and "adapter_config.json" not in names


def test_the_hub_takes_an_adapter_folder_s_files(lora_tagger):
    from tagtune.store.hub import files_to_fetch, tagger_files

    files = tagger_files(lora_tagger)
    assert {"config.json", "adapter_model.safetensors", "adapter_config.json", "tagtune.json"} <= set(files)
    extras, weights = files_to_fetch(files, "org/lora")
    assert weights == "adapter_model.safetensors" and "adapter_config.json" in extras


def test_the_fused_layer_gives_peft_s_logits_and_gradients(tiny_bert):
    """tagtune's LoRA layer against PEFT's on the same model and adapters: logits, the adapters'
    gradients and the input's, in fp32."""
    from tagtune.models.lora import lora_layers

    torch.manual_seed(0)
    ours, _ = load_model(tiny_bert, labels=["O", "B-X", "I-X"])
    theirs, _ = load_model(tiny_bert, labels=["O", "B-X", "I-X"])
    theirs.load_state_dict(ours.state_dict())
    targets = choose_targets("bert", None)
    add_adapters(ours, 4, 8, 0.0, targets)
    names = list(lora_layers(ours))
    peft.inject_adapter_in_model(peft.LoraConfig(r=4, lora_alpha=8, target_modules=names), theirs)
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            layer.lora_B["default"].weight.normal_(0, 0.1)
            other = theirs.get_submodule(name)
            other.lora_A["default"].weight.copy_(layer.lora_A["default"].weight)
            other.lora_B["default"].weight.copy_(layer.lora_B["default"].weight)
    ids, mask = padded_batch([12, 7])
    outputs = []
    for model in (ours, theirs):
        model.eval()  # no dropout: gradients still flow
        for name, p in model.named_parameters():
            p.requires_grad = "lora_" in name or name.startswith("classifier.") or name.startswith("embeddings.")
        logits = model.forward_padded(ids, mask)
        (logits.square().mean()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        outputs.append((logits.detach(), grads))
    (ours_logits, ours_grads), (their_logits, their_grads) = outputs
    torch.testing.assert_close(ours_logits, their_logits, atol=1e-5, rtol=0)
    assert set(ours_grads) == set(their_grads) and any("embeddings." in n for n in ours_grads)
    for name in ours_grads:  # the embeddings' gradient came back through every layer's input
        torch.testing.assert_close(ours_grads[name], their_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fused_product_s_gradients_with_dropout(dtype):
    """LoraProduct against autograd on the formula it computes (fp64), with a shared dropout
    mask: q, k and v reading one input draw one mask."""
    from tagtune.models.lora import LoraProduct, shared_dropout

    torch.manual_seed(0)
    x = torch.randn(30, 16, dtype=dtype, requires_grad=True)
    weight, bias = torch.randn(24, 16).to(dtype), torch.randn(24)
    a, b = torch.randn(4, 16, requires_grad=True), torch.randn(24, 4, requires_grad=True)
    dropped, keep = shared_dropout(x, 0.3)
    again, same = shared_dropout(x, 0.3)
    assert again is dropped and same is keep and 0.55 < (keep > 0).float().mean() < 0.85
    assert shared_dropout(x.detach().clone(), 0.3)[1] is not keep
    y = LoraProduct.apply(x, weight, bias, a, b, 2.0, dropped, keep)
    grad = torch.randn_like(y)
    y.backward(grad)
    ours = x.grad, a.grad, b.grad
    x64, a64, b64 = (t.detach().double().requires_grad_() for t in (x, a, b))
    ref = x64 @ weight.double().t() + bias.double() + 2.0 * ((x64 * keep.double()) @ a64.t()) @ b64.t()
    ref.backward(grad.double())
    tolerance = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.3, rtol=0.05)
    torch.testing.assert_close(y.double(), ref.detach(), **tolerance)
    assert a.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    for got, want in zip(ours, (x64.grad, a64.grad, b64.grad)):
        torch.testing.assert_close(got.double(), want, **tolerance)


def test_the_shared_mask_goes_with_its_input():
    """The dropped copy and mask kept for q, k and v are let go when their input is freed: no
    batch's activations stay behind in the module after its backward."""
    from tagtune.models import lora

    x = torch.randn(8, 4)
    lora.shared_dropout(x, 0.5)
    assert lora._last_dropped[0]() is x
    del x
    assert lora._last_dropped == (None, None, None)


def test_training_adapters_imports_no_peft(tiny_bert):
    """PEFT (which imports transformers' model code, 160 MB) is only the reader of adapter folders:
    adding, training and saving adapters does without it."""
    import subprocess
    import sys

    code = f"""
import sys, tempfile, torch
from tagtune.models.checkpoint import load_model
from tagtune.models.lora import add_adapters, choose_targets, write_adapter_files
model, _ = load_model({str(tiny_bert)!r}, labels=["O", "B-X", "I-X"])
add_adapters(model, 2, 4, 0.1, choose_targets("bert", None))
model.train()
model.forward_padded(torch.randint(5, 99, (2, 7)), torch.ones(2, 7, dtype=torch.long)).sum().backward()
write_adapter_files(model, None, tempfile.mkdtemp(), "base")
assert "peft" not in sys.modules and "transformers" not in sys.modules, sorted(sys.modules)[:5]
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
