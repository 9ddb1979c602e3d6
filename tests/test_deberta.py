"""DeBERTa-v2/v3: logits and gradients equal transformers' for shared and separate position keys,
both pos_att_type spellings, log buckets shorter than the texts, small embeddings and absolute
positions; pretraining checkpoints load, saved taggers load in transformers, and config values
tagtune does not implement are one-line errors."""

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

from tagtune.models.checkpoint import load_model, save_model
from tagtune.models.config import EncoderConfig, read_config
from tagtune.models.deberta import relative_buckets

from test_model_parity import assert_config_refused, assert_gradients_match, assert_logits_match, pack, padded_batch

LABELS = ["O", "B-X", "I-X"]
LENGTHS = [30, 17, 9, 2, 1]

V3 = dict(relative_attention=True, position_buckets=4, max_relative_positions=8, pos_att_type=["p2c", "c2p"],
          share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0)
"""deberta-v3's settings, with 4 buckets that distances up to 30 overflow."""
VARIANTS = {
    "v3": {},
    "separate keys, absolute positions, token types, small embeddings": dict(
        share_att_key=False, position_biased_input=True, type_vocab_size=2, embedding_size=16),
    "c2p only, separate keys": dict(pos_att_type=["c2p"], share_att_key=False),
    "p2c only, separate keys": dict(pos_att_type=["p2c"], share_att_key=False),
    "no buckets, distances clamped at 6, no norm": dict(position_buckets=-1, max_relative_positions=6,
                                                        norm_rel_ebd="none"),
    "no relative attention": dict(relative_attention=False, position_biased_input=True),
}


def tiny_config(**changes):
    settings = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                    max_position_embeddings=64, num_labels=5)
    return transformers.DebertaV2Config(**{**settings, **V3, **changes})


@torch.no_grad()
def randomize(model, seed=0):
    """Every weight drawn at a scale where the relative terms change the logits (transformers'
    initialisation, std 0.02 and zero biases, would hide a wrong bias under the tolerance)."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=generator) * 0.2
        p.copy_(1 + noise if "LayerNorm.weight" in name else noise)
    return model


def tiny_deberta(cls=transformers.DebertaV2ForTokenClassification, **changes):
    return randomize(cls(tiny_config(**changes))).eval()


def string_spelling(folder):
    """Rewrite a saved config.json's pos_att_type as the Hub's configs have it: "p2c|c2p"."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["pos_att_type"] = "|".join(config["pos_att_type"])
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(variant, tmp_path):
    ref = tiny_deberta(**VARIANTS[variant])
    ref.save_pretrained(tmp_path)
    model, report = load_model(tmp_path)
    assert not report.new_head and report.dropped == []
    assert_logits_match(ref, model, LENGTHS)


def test_the_string_spelling_of_pos_att_type(tmp_path):
    ref = tiny_deberta(share_att_key=False)
    ref.save_pretrained(tmp_path)
    string_spelling(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["pos_att_type"] == "p2c|c2p"
    model, _ = load_model(tmp_path)
    assert model.encoder.settings.terms == ("c2p", "p2c")
    assert_logits_match(transformers.AutoModelForTokenClassification.from_pretrained(tmp_path).eval(), model,
                        LENGTHS)


def test_the_relative_terms_and_buckets_change_the_logits():
    """The parity above is not vacuous: the relative embeddings matter, and so do the buckets
    (here the same 8 rows with distances clamped at 4 instead of bucketed)."""
    ref = tiny_deberta()
    clamped = transformers.DebertaV2ForTokenClassification(tiny_config(position_buckets=-1, max_relative_positions=4))
    clamped.load_state_dict(ref.state_dict())
    ids, mask = padded_batch([30])
    with torch.no_grad():
        base = ref(input_ids=ids, attention_mask=mask).logits
        assert (clamped.eval()(input_ids=ids, attention_mask=mask).logits - base).abs().max() > 1e-2
        ref.deberta.encoder.rel_embeddings.weight.copy_(ref.deberta.encoder.rel_embeddings.weight.flip(0))
        assert (ref(input_ids=ids, attention_mask=mask).logits - base).abs().max() > 1e-2


@pytest.mark.parametrize("buckets, max_distance", [(4, 8), (256, 512), (32, 64), (6, 7)])
def test_buckets_equal_transformers(buckets, max_distance):
    distance = torch.arange(-2000, 2001)
    expected = make_log_bucket_position(distance, buckets, max_distance).to(torch.int64)
    assert torch.equal(relative_buckets(distance, buckets, max_distance), expected)


@pytest.mark.parametrize("variant", ["v3", "separate keys, absolute positions, token types, small embeddings"])
def test_gradients_match_transformers(variant, tmp_path):
    ref = tiny_deberta(**VARIANTS[variant])
    ref.save_pretrained(tmp_path)
    assert_gradients_match(ref, tmp_path, [29, 12, 5, 1])


def test_the_export_forward_equals_the_padded_forward(tmp_path):
    tiny_deberta(share_att_key=False, embedding_size=16).save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    ids, mask = padded_batch(LENGTHS)
    real = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_export(ids, mask)[real], model.forward_padded(ids, mask)[real],
                                   atol=1e-5, rtol=0)


def test_the_onnx_graph_matches(tmp_path):
    """Through the exporter and ONNX Runtime, at other batch and sequence sizes than the export's."""
    pytest.importorskip("onnxruntime")
    from tagtune.inference.export import write_onnx
    from tagtune.inference.onnx_backend import OnnxModel

    tiny_deberta(share_att_key=False).save_pretrained(tmp_path / "model")
    model, _ = load_model(tmp_path / "model")
    write_onnx(model, tmp_path / "model.onnx", 60)
    ids, mask = padded_batch([20, 11, 3])
    with torch.no_grad():
        expected = model.forward_padded(ids, mask)
    out = torch.from_numpy(OnnxModel(tmp_path / "model.onnx", model.config)(ids.numpy(), mask.numpy()))
    real = mask.bool()
    torch.testing.assert_close(out[real], expected[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pretraining_checkpoint_loads_without_its_heads(legacy, tmp_path):
    """As the v3 checkpoints on the Hub: the MLM head (lm_predictions, or cls in the legacy
    layout), the replaced-token detection head (mask_predictions) and an absolute position table
    that position_biased_input false leaves unused."""
    mlm = tiny_deberta(transformers.DebertaV2ForMaskedLM, legacy=legacy)
    mlm.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["deberta.embeddings.position_embeddings.weight"] = torch.randn(64, 32)
    state["mask_predictions.dense.weight"] = torch.randn(32, 32)
    state["mask_predictions.classifier.bias"] = torch.randn(1)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    model, report = load_model(tmp_path, labels=LABELS)
    assert report.new_head
    head = "cls.predictions." if legacy else "lm_predictions.lm_head."
    assert any(key.startswith(head) for key in report.dropped)
    assert {"deberta.embeddings.position_embeddings.weight", "mask_predictions.dense.weight"} <= set(report.dropped)
    assert model.embeddings.position_embeddings is None
    assert torch.equal(model.encoder.rel_embeddings.weight, mlm.deberta.encoder.rel_embeddings.weight)
    std = model.classifier.weight.std().item()  # normal(0, initializer_range 0.02), zero bias
    assert 0.01 < std < 0.03 and torch.count_nonzero(model.classifier.bias) == 0


def test_absolute_positions_are_kept_where_the_config_uses_them(tmp_path):
    ref = tiny_deberta(position_biased_input=True)
    ref.save_pretrained(tmp_path)
    model, report = load_model(tmp_path)
    assert report.dropped == []
    assert torch.equal(model.embeddings.position_embeddings.weight, ref.deberta.embeddings.position_embeddings.weight)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_saved_tagger_loads_in_transformers(variant, tmp_path):
    tiny_deberta(**VARIANTS[variant]).save_pretrained(tmp_path / "in")
    model, _ = load_model(tmp_path / "in", labels=LABELS)
    save_model(model, None, tmp_path / "out")
    ref, info = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "out",
                                                                             output_loading_info=True)
    assert type(ref).__name__ == "DebertaV2ForTokenClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_logits_match(ref.eval(), model, [21, 8, 3])


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_memory_estimate_counts_every_parameter(variant):
    reference = tiny_deberta(**VARIANTS[variant])
    config = EncoderConfig.from_hf_dict(reference.config.to_dict())
    assert config.num_labels == 5
    assert config.parameter_count() == sum(p.numel() for p in reference.parameters())


def test_bf16_forward_and_backward_stay_finite(tmp_path):
    tiny_deberta(share_att_key=False, position_biased_input=True).save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    ids, mask = padded_batch(LENGTHS)
    flat, cu_seqlens = pack(ids, mask)
    with torch.no_grad():
        fp32 = model(flat, cu_seqlens)
    model.use_low_precision(torch.bfloat16)
    model.train()
    logits = model(flat, cu_seqlens)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    loss = torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (len(flat),)))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.no_grad():
        bf16 = model(flat, cu_seqlens)
    assert (bf16 - fp32).abs().max() < 0.1  # logits of about 3


def test_dropout_is_active_in_training(tmp_path):
    tiny_deberta().save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    ids, cu_seqlens = torch.randint(5, 99, (20,)), torch.tensor([0, 12, 20])
    model.train()
    assert (model(ids, cu_seqlens) - model(ids, cu_seqlens)).abs().max() > 1e-3


@pytest.mark.parametrize("change, message", [
    ({"conv_kernel_size": 3}, "conv_kernel_size 3 is not supported (the convolution layer of deberta-v2-xlarge"),
    ({"pos_att_type": "p2c|c2p|p2p"}, "pos_att_type 'p2p' is not supported (supported: c2p, p2c)"),
    ({"pos_att_type": ["c2p", "C2P"]}, "pos_att_type 'C2P' is not supported (supported: c2p, p2c)"),
    ({"pos_att_type": 3}, "pos_att_type is 3; it must be a string such as \"p2c|c2p\" or a list of c2p and p2c"),
    ({"norm_rel_ebd": "batch_norm"}, "norm_rel_ebd 'batch_norm' is not supported (supported: layer_norm, none)"),
    ({"share_att_key": "yes"}, "share_att_key is 'yes'; it must be true or false"),
    ({"relative_attention": 1}, "relative_attention is 1; it must be true or false"),
    ({"position_buckets": 1}, "position_buckets is 1; it must be -1 (no buckets) or at least 2"),
    ({"position_buckets": 2.5}, "position_buckets is 2.5; it must be an integer from -1 to 1,048,576"),
    ({"max_relative_positions": 3}, "max_relative_positions 3 must be more than position_buckets // 2 + 1 = 3"),
    ({"attention_head_size": 16}, "attention_head_size 16 is not supported (supported: hidden_size / "
                                  "num_attention_heads = 8)"),
])
def test_unsupported_config_values_are_one_line_errors(tmp_path, change, message):
    assert_config_refused(tiny_deberta(), tmp_path, change, message)


def test_config_defaults_are_deberta_v2s(tmp_path):
    """A config.json without type_vocab_size and layer_norm_eps: DebertaV2Config's 0 and 1e-7."""
    ref = tiny_deberta()
    ref.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    for key in ("type_vocab_size", "layer_norm_eps", "relative_attention", "position_biased_input"):
        raw.pop(key, None)
    path.write_text(json.dumps({**raw, "relative_attention": True, "position_biased_input": False}))
    config = read_config(tmp_path)
    assert config.type_vocab_size == 0 and config.layer_norm_eps == 1e-7
    model, _ = load_model(tmp_path)
    assert_logits_match(ref, model, [25, 4])


def test_a_bad_spm_model_stops_training_before_anything_is_written(wnut_files, tmp_path, cli):
    from conftest import tiny_with_minilm_tokenizer

    folder = tiny_with_minilm_tokenizer(tmp_path / "base", "deberta-v2")
    for name in ("tokenizer.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer",
                                                              "do_lower_case": False, "vocab_type": "spm"}))
    (folder / "spm.model").write_bytes(b"this is not a SentencePiece model\n")
    result = cli("train", "--model", str(folder), "--train", str(wnut_files / "train.conll"),
                 "--out", str(tmp_path / "tagger"), "--quiet")
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()[-1:]
    assert str(folder / "spm.model") in line, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "tagger").exists()
