"""ModernBERT: both config forms, local windows, gradients, the pretrained head, banded attention's
cost, and config values tagtune does not implement."""

import json

import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from tagtune.models.checkpoint import load_model, save_model
from tagtune.models.packed import Packing, packed_attention

from conftest import tiny_hf_model
from test_model_parity import assert_config_refused, assert_gradients_match, assert_logits_match

LABELS = ["O", "B-X", "I-X"]
OLDER_KEYS = {"global_attn_every_n_layers": 2, "local_attention": 6, "global_rope_theta": 900.0,
              "local_rope_theta": 40.0}


def older_form(folder):
    """Rewrite a saved config.json in the form of the first ModernBERT releases on the Hub."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.pop("layer_types")
    config.pop("rope_parameters")
    config.update(OLDER_KEYS)
    path.write_text(json.dumps(config))


def test_older_config_keys_match_transformers(tmp_path):
    tiny_hf_model("modernbert").save_pretrained(tmp_path)
    older_form(tmp_path)
    ref = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert ref.config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert_logits_match(ref, load_model(tmp_path)[0], [29, 13, 4, 1])


def test_current_config_keys_with_biases_match_transformers(tmp_path):
    config = transformers.ModernBertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=24,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2, local_attention=10,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 3000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 70.0}},
        attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True, classifier_activation="silu",
        num_labels=4)
    ref = transformers.ModernBertForTokenClassification(config).eval()
    ref.save_pretrained(tmp_path)
    assert_logits_match(ref, load_model(tmp_path)[0], [31, 17, 6, 2])


def test_gradients_match_transformers(tmp_path):
    ref = tiny_hf_model("modernbert")
    ref.save_pretrained(tmp_path)
    assert_gradients_match(ref, tmp_path, [27, 12, 5])


def test_pretrained_head_is_kept_and_the_decoder_dropped(tmp_path):
    mlm = tiny_hf_model("modernbert", task="masked-lm")
    mlm.save_pretrained(tmp_path)
    model, report = load_model(tmp_path, labels=LABELS)
    assert report.new_head
    assert "decoder.bias" in report.dropped
    assert torch.equal(model.head.dense.weight, mlm.head.dense.weight)
    assert torch.equal(model.head.norm.weight, mlm.head.norm.weight)
    std = model.classifier.weight.std().item()  # truncated normal, std hidden_size^-0.5 = 0.18
    assert 0.1 < std < 0.2 and torch.count_nonzero(model.classifier.bias) == 0


def test_bare_encoder_gets_a_new_head(tmp_path):
    tiny_hf_model("modernbert", task="base").save_pretrained(tmp_path)
    model, report = load_model(tmp_path, labels=LABELS)
    assert report.new_head
    assert torch.equal(model.head.norm.weight, torch.ones(32))
    save_model(model, None, tmp_path / "out")
    ref, info = transformers.AutoModelForTokenClassification.from_pretrained(
        tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def reference_attention(q, k, v, cu_seqlens, window):
    """Each sequence alone, through a full (length x length) masked attention."""
    out = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        index = torch.arange(end - start)
        band = (index[:, None] - index[None, :]).abs() <= window
        out.append(torch.nn.functional.scaled_dot_product_attention(
            *(x[start:end].transpose(0, 1) for x in (q, k, v)), attn_mask=band).transpose(0, 1))
    return torch.cat(out)


def test_banded_attention_equals_masked_full_attention():
    cu_seqlens = torch.tensor([0, 50, 53, 140, 141, 200])
    q, k, v = (torch.randn(200, 2, 8, requires_grad=True) for _ in range(3))
    packing = Packing.from_cu_seqlens(cu_seqlens)
    ours = packed_attention(q, k, v, packing, 0.0, window=7)
    expected = reference_attention(q, k, v, cu_seqlens, 7)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
    expected_grads = torch.autograd.grad(expected, (q, k, v), grad)
    for a, b in zip(ours_grads, expected_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_a_local_layer_costs_window_times_length():
    """A 2,048-token sequence through a local layer with a 128-token window: a few percent of
    the FLOPs of a full 2,048^2 attention."""
    length, window = 2048, 64
    q, k, v = (torch.randn(length, 4, 16) for _ in range(3))
    packing = Packing.from_cu_seqlens(torch.tensor([0, length]))

    with FlopCounterMode(display=False) as counter:
        out = packed_attention(q, k, v, packing, 0.0, window=window)
    assert out.shape == q.shape
    full = 2 * (2 * length * length * 16) * 4  # q @ k.T and p @ v, 4 heads of 16
    assert 0 < counter.get_total_flops() < 0.15 * full, (counter.get_total_flops(), full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_varlen_kernel_equals_the_cpu_paths():
    cu_seqlens = torch.tensor([0, 50, 53, 140])
    q, k, v = (torch.randn(140, 2, 64) for _ in range(3))
    for window in (None, 7):
        expected = packed_attention(q, k, v, Packing.from_cu_seqlens(cu_seqlens), 0.0, window)
        gpu = [x.cuda().bfloat16() for x in (q, k, v)]
        ours = packed_attention(*gpu, Packing.from_cu_seqlens(cu_seqlens.cuda()), 0.0, window)
        torch.testing.assert_close(ours.float().cpu(), expected, atol=3e-2, rtol=0)


@pytest.mark.parametrize("change, message", [
    ({"layer_types": ["full_attention", "chunked_attention", "full_attention"]},
     "layer type 'chunked_attention' is not supported (supported: full_attention, sliding_attention)"),
    ({"layer_types": ["full_attention"]}, "layer_types must be a list of 3 layer kinds"),
    ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 4.0}}},
     "rope type 'yarn' (full_attention layers) is not supported (supported: default, without scaling)"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope type 'linear'"),
    ({"local_attention": 0}, "local_attention is 0; it must be an integer"),
    ({"norm_bias": "yes"}, "norm_bias is 'yes'; it must be true or false"),
    ({"classifier_activation": "mish"}, "classifier_activation 'mish' is not supported"),
])
def test_unsupported_config_values_are_one_line_errors(tmp_path, change, message):
    assert_config_refused(tiny_hf_model("modernbert"), tmp_path, change, message)


def test_unsupported_config_through_the_cli(tmp_path, cli):
    tiny_hf_model("modernbert").save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "layer_types": ["global"] * 3}))
    result = cli("info", str(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().endswith("layer type 'global' is not supported (supported: full_attention, "
                                          "sliding_attention)"), result.stderr
