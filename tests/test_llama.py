"""The Llama layout (EuroBERT, Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma 2): logits and gradients
equal transformers' token classifiers on packed batches, checkpoints load both ways, sliding
windows, grouped-query attention, rotary scaling, and the config values tagtune refuses."""

import json

import pytest
import torch
import transformers as T

from tagtune.models.checkpoint import load_model, save_model
from tagtune.models.packed import Packing, packed_attention

from test_model_parity import assert_config_refused, assert_gradients_match, assert_logits_match

LABELS = ["O", "B-X", "I-X", "B-Y", "I-Y"]
SIZES = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=37, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Each model type with what sets it apart switched on: windows shorter than the test texts,
# biases, scaled rotary positions, a head size other than hidden_size / heads.
CONFIGS = {
    "eurobert": lambda: T.EuroBertConfig(**SIZES, mask_token_id=3, attention_bias=True, mlp_bias=True),
    "llama": lambda: T.LlamaConfig(**SIZES, attention_bias=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "mistral": lambda: T.MistralConfig(**SIZES, sliding_window=5),
    "qwen2": lambda: T.Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=4, max_window_layers=1),
    "qwen3": lambda: T.Qwen3Config(**SIZES, head_dim=16, rope_parameters={"rope_type": "linear", "rope_theta": 300.0,
                                                                           "factor": 2.0}),
    "gemma": lambda: T.GemmaConfig(**SIZES, head_dim=8),
    "gemma2": lambda: T.Gemma2Config(**SIZES, head_dim=16, sliding_window=6, query_pre_attn_scalar=12,
                                     attn_logit_softcapping=3.0),
}


def tiny(kind: str, task=T.AutoModelForTokenClassification, **changes):
    """A tiny random transformers model of ``kind``, fp32, in eval mode."""
    torch.manual_seed(0)
    config = CONFIGS[kind]()
    for key, value in changes.items():
        setattr(config, key, value)
    config.id2label = dict(enumerate(LABELS))
    config.label2id = {label: i for i, label in enumerate(LABELS)}
    return task.from_config(config).eval()


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_logits_and_gradients_match_transformers(kind, tmp_path):
    ref = tiny(kind)
    ref.save_pretrained(tmp_path)
    model, report = load_model(tmp_path)
    assert not report.new_head and report.dropped == []
    assert model.config.causal == (kind != "eurobert")
    assert_logits_match(ref, model, [21, 9, 3])
    assert_gradients_match(ref, tmp_path, [17, 8, 2])


@pytest.mark.parametrize("kind", ["llama", "eurobert", "gemma2"])
def test_saved_tagger_loads_in_transformers_and_back(kind, tmp_path):
    tiny(kind).save_pretrained(tmp_path / "hf")
    model, _ = load_model(tmp_path / "hf", labels=["O", "B-Z", "I-Z"])  # a new head
    save_model(model, None, tmp_path / "ours")
    ref, info = T.AutoModelForTokenClassification.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not any(info.values()), info
    classifier = ref.classifier if kind == "eurobert" else ref.score
    assert torch.equal(classifier.weight, model.classifier.weight)
    assert_logits_match(ref.eval(), model, [12, 5])


def test_causal_lm_checkpoint_gets_a_new_head(tmp_path):
    lm = tiny("qwen2", task=T.AutoModelForCausalLM)
    lm.save_pretrained(tmp_path)
    model, report = load_model(tmp_path, labels=LABELS)
    assert report.new_head and report.dropped == ["lm_head.weight"]
    assert torch.equal(model.embeddings.embed_tokens.weight, lm.model.embed_tokens.weight)


def test_causal_attention_is_a_setting(tmp_path):
    """Bidirectional attention on a decoder: the last token's change reaches the first token."""
    tiny("llama").save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    ids = torch.randint(5, 99, (10,))
    changed = ids.clone()
    changed[-1] = 4
    cu_seqlens = torch.tensor([0, 10])
    with torch.no_grad():
        assert torch.equal(model(ids, cu_seqlens)[0], model(changed, cu_seqlens)[0])
        for module in model.modules():
            if hasattr(module, "causal"):
                module.causal = False
        assert not torch.allclose(model(ids, cu_seqlens)[0], model(changed, cu_seqlens)[0])


@pytest.mark.parametrize("window", [None, 3])
def test_causal_attention_paths_agree(window):
    """Causal attention through runs of equal lengths, the padded layout, the banded stream and
    the softcapped math equals each sequence alone under a causal mask (and window)."""
    cu_seqlens = torch.tensor([0, 9, 18, 22, 23])
    q, k, v = (torch.randn(23, 2, 8) for _ in range(3))
    out = []
    for start, end in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
        index = torch.arange(end - start)
        distance = index[:, None] - index[None, :]
        mask = (distance >= 0) & (distance <= (window if window is not None else end))
        out.append(torch.nn.functional.scaled_dot_product_attention(
            *(x[start:end].transpose(0, 1) for x in (q, k, v)), attn_mask=mask).transpose(0, 1))
    expected = torch.cat(out)
    packing = Packing.from_cu_seqlens(cu_seqlens)
    torch.testing.assert_close(packed_attention(q, k, v, packing, 0.0, window, causal=True), expected)
    packing.runs = None  # the padded layout (or, with a window, the banded stream)
    torch.testing.assert_close(packed_attention(q, k, v, packing, 0.0, window, causal=True), expected)
    capped = packed_attention(q, k, v, packing, 0.0, window, causal=True, softcap=1e4)  # a cap far off: no effect
    torch.testing.assert_close(capped, expected)


@pytest.mark.parametrize("kind, change, message", [
    ("llama", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
     "rope type 'yarn' is not supported (supported: default, linear, llama3, dynamic)"),
    ("llama", {"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
    ("mistral", {"sliding_window": 0}, "sliding_window is 0; it must be a positive integer"),
    ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention true is not supported"),
    ("gemma", {"model_type": "gemma3_text"}, "model_type 'gemma3_text' is not supported (supported: bert,"),
    ("llama", {"model_type": "gemma3"}, "gemma2"),
])
def test_unsupported_config_values_are_one_line_errors(tmp_path, kind, change, message):
    assert_config_refused(tiny(kind), tmp_path, change, message)


def test_dynamic_rope_runs_as_the_plain_rotary_within_the_positions(tmp_path):
    ref = tiny("llama", rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0})
    ref.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["rope_parameters"]["rope_type"] == "dynamic"
    assert_logits_match(ref, load_model(tmp_path)[0], [30, 6])


@pytest.mark.parametrize("kind, windows", [("mistral", {(4, 0)}), ("qwen2", {(-1, 0), (3, 0)}), ("eurobert", set())])
def test_flash_attention_takes_causal_and_sliding_layers_under_cuda_rules(tmp_path, kind, windows):
    """On a GPU in bf16, causal layers reach FlashAttention's varlen kernel as window_size (left,
    0): a sliding one (sliding_window - 1, 0); EuroBERT's bidirectional layers as (-1, -1)."""
    from cuda_rules import cuda_rules
    from test_cuda_rules import assert_within_bf16, bf16_logits

    tiny(kind).save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    ids, cu_seqlens = torch.randint(5, 99, (30,)), torch.tensor([0, 19, 27, 30])
    with torch.no_grad():
        expected = model(ids, cu_seqlens)
    with cuda_rules((9, 0)) as gpu:
        ours = bf16_logits(model, ids, cu_seqlens, 19)
    assert gpu.varlen_calls == model.config.num_hidden_layers
    assert {c["window_size"] for c in gpu.calls} == (windows or {(-1, -1)})
    assert_within_bf16(ours, expected, kind)


def test_a_config_without_rope_theta_has_the_default_base(tmp_path):
    """A config.json whose rope settings leave out rope_theta rotates with transformers' default
    base, 10000."""
    ref = tiny("llama")
    ref.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("rope_theta", None)
    raw["rope_parameters"] = {"rope_type": "default"}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    reloaded = T.AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.rope_parameters["rope_theta"] == 10000.0
    assert_logits_match(reloaded, load_model(tmp_path)[0], [30, 6])
