"""The CUDA branches, run on CPU tensors under CUDA's rules (tests/cuda_rules.py): bf16 inference
and a training step of every family on GPUs of compute capability 7.5, 8.0 and 9.0 agree with
the CPU within bf16 rounding; FlashAttention's varlen kernel takes what it can and padded SDPA
the rest, said once; bf16 "auto" needs Ampere; a forward pass reads nothing back from the GPU;
torchrun's process group has gloo for CPU tensors on a CUDA machine."""

import warnings

import pytest
import torch
import torch.nn.functional as F
import transformers

from tagtune import distributed
from tagtune.models.checkpoint import load_model
from tagtune.models import packed
from tagtune.models.precision import describe, use_bf16
from tagtune import TrainConfig
from tagtune.training.loop import precision

from conftest import tiny_hf_model
from cuda_rules import SM, FlashError, cuda_rules, reference_varlen_attn
from test_deberta import tiny_deberta

LENGTHS = [13, 7, 7, 2, 1]
"""Longer than ModernBERT's tiny window (4 each side), with a run of equal lengths and a single token."""
CUDA = torch.device("cuda")


DROPOUTS = ("attention_probs_dropout_prob", "attention_dropout", "hidden_dropout_prob", "dropout", "embedding_dropout",
            "mlp_dropout", "classifier_dropout")


def tiny_model(family: str, folder, dropout: float = 0.0):
    """(our model of a tiny random transformers model of ``family``, whether its attention is
    packed_attention's, which FlashAttention can take). Dropout ``dropout`` everywhere: 0 lets
    FlashAttention take training's attention, and a training step on the GPU's path draw the
    same as on the CPU's (which draw their masks differently)."""
    if family.startswith("deberta"):
        relative = family == "deberta-v3"
        ref = tiny_deberta(relative_attention=relative, position_biased_input=not relative)
    else:
        ref = tiny_hf_model(family)
    for key in DROPOUTS:
        if hasattr(ref.config, key):
            setattr(ref.config, key, dropout)
    ref.save_pretrained(folder)
    model, _ = load_model(folder)
    return model.eval(), family != "deberta-v3"


FAMILIES = ["bert", "distilbert", "modernbert", "deberta-v3", "deberta-content"]
"""deberta-v3: DeBERTa's own padded attention (relative positions); deberta-content: without them,
on packed_attention."""


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    model, flash = tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, model, flash


def batch(lengths=LENGTHS, vocab=99):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (sum(lengths),), generator=generator)
    cu_seqlens = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    return ids, cu_seqlens, max(lengths)


def bf16_logits(model, ids, cu_seqlens, longest):
    model.use_low_precision(torch.bfloat16)
    try:
        with torch.no_grad():
            return model(ids, cu_seqlens, longest)
    finally:
        model.use_low_precision(None)


def assert_within_bf16(ours, ref, what):
    """bf16 rounding of tiny models: within 3% of the largest fp32 logit."""
    error = (ours.float() - ref).abs().max().item()
    assert error < 0.03 * ref.abs().max().item(), f"{what}: {error} off"


@pytest.mark.parametrize("sm", SM)
def test_bf16_inference_under_cuda_rules(family, sm):
    name, model, flash = family
    ids, cu_seqlens, longest = batch()
    with torch.no_grad():
        ref = model(ids, cu_seqlens, longest)
    cpu = bf16_logits(model, ids, cu_seqlens, longest)
    with cuda_rules(SM[sm]) as gpu, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ours = bf16_logits(model, ids, cu_seqlens, longest)
        again = bf16_logits(model, ids, cu_seqlens, longest)
    assert ours.dtype == torch.float32  # the head runs in fp32
    assert_within_bf16(ours, ref, f"{name} on {sm}")
    assert_within_bf16(cpu, ref, f"{name} on the CPU")
    assert_within_bf16(ours, cpu.float(), f"{name} on {sm} against the CPU's bf16")
    torch.testing.assert_close(again, ours)
    layers = model.config.num_hidden_layers
    native = flash and SM[sm] >= (8, 0)
    assert gpu.varlen_calls == (2 * layers if native else 0), name
    if name == "modernbert" and native:  # the local layers pass their window, FlashAttention's (left, right)
        assert {c["window_size"] for c in gpu.calls} == {(-1, -1), (4, 4)}
    messages = [str(w.message) for w in said]
    if flash and not native:
        assert len(messages) == 1 and "compute capability 8.0" in messages[0] and "7.5" in messages[0], messages
    else:
        assert messages == []
    assert gpu.host_syncs == []  # nothing in a forward pass waits for the GPU


@pytest.mark.parametrize("sm", ["sm80", "sm90"])
def test_fp32_inference_falls_back_to_sdpa_unchanged(family, sm):
    name, model, flash = family
    ids, cu_seqlens, longest = batch()
    with torch.no_grad():
        ref = model(ids, cu_seqlens, longest)
        with cuda_rules(SM[sm]) as gpu, warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            ours = model(ids, cu_seqlens, longest)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert gpu.varlen_calls == 0
    assert [str(w.message) for w in said] == (
        ["attention runs on scaled_dot_product_attention over padded sequences, not FlashAttention's varlen "
         "kernel: FlashAttention takes bf16 or fp16, and attention runs in float32"] if flash else [])


def training_step(model, ids, cu_seqlens, longest):
    """A training step as tagtune trains on CUDA (bf16 autocast; on CPU tensors, the CPU's
    autocast): the loss and the gradients."""
    model.train()
    model.zero_grad(set_to_none=True)
    labels = ids % model.config.num_labels
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids, cu_seqlens, longest)
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    model.eval()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("sm", ["sm80", "sm90"])
def test_a_training_step_under_cuda_rules(family, sm):
    name, model, flash = family
    ids, cu_seqlens, longest = batch()
    config = TrainConfig(model="m", train="t", out="o")
    with cuda_rules(SM[sm]):
        assert precision(config, CUDA) == "autocast"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    ref_loss, ref_grads = training_step(model, ids, cu_seqlens, longest)
    torch.manual_seed(0)
    with cuda_rules(SM[sm]) as gpu:
        loss, grads = training_step(model, ids, cu_seqlens, longest)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert gpu.varlen_calls == (model.config.num_hidden_layers if flash else 0)
    assert loss == pytest.approx(ref_loss, rel=0.02)
    assert grads.keys() == ref_grads.keys()
    for key, grad in grads.items():
        assert grad.dtype == torch.float32, key
        if key.endswith(("key.bias", "key_proj.bias")):  # the true gradient is 0: both are rounding noise
            continue
        assert (grad - ref_grads[key]).norm() / ref_grads[key].norm() < 0.1, key


def test_attention_dropout_trains_on_padded_sdpa(tmp_path):
    """FlashAttention's varlen kernel has no dropout: training with attention dropout takes
    padded SDPA (with PyTorch's dropout, not the CPU's own masks), without a warning."""
    model, _ = tiny_model("bert", tmp_path, dropout=0.1)
    ids, cu_seqlens, longest = batch()
    with cuda_rules((9, 0)) as gpu, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        loss, grads = training_step(model, ids, cu_seqlens, longest)
    assert gpu.varlen_calls == 0 and said == []
    assert 0 < loss < 10 and all(torch.isfinite(g).all() for g in grads.values())


def test_a_head_size_flash_cannot_take_falls_back_with_one_message(tmp_path):
    """TinyBERT-4L-312D's heads are 26 wide (312 / 12): not a multiple of 8."""
    ref = transformers.BertForTokenClassification(transformers.BertConfig(
        vocab_size=99, hidden_size=52, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, attention_probs_dropout_prob=0.0, num_labels=3)).eval()
    ref.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    assert model.config.head_dim == 26
    ids, cu_seqlens, longest = batch()
    with torch.no_grad():
        expected = model(ids, cu_seqlens, longest)
    with cuda_rules((9, 0)) as gpu, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for _ in range(3):
            ours = bf16_logits(model, ids, cu_seqlens, longest)
    assert gpu.varlen_calls == 0
    assert [str(w.message) for w in said] == [
        "attention runs on scaled_dot_product_attention over padded sequences, not FlashAttention's varlen "
        "kernel: FlashAttention takes head sizes that are multiples of 8 up to 256, not 26"]
    assert_within_bf16(ours, expected, "head size 26")


def test_an_old_varlen_attn_without_window_size(tmp_path):
    """PyTorch's first varlen_attn has no window_size: ModernBERT's global layers still take it,
    its local layers fall back, said once."""
    model, _ = tiny_model("modernbert", tmp_path)
    ids, cu_seqlens, longest = batch()
    with torch.no_grad():
        expected = model(ids, cu_seqlens, longest)
    with cuda_rules((9, 0), varlen="old") as gpu, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ours = bf16_logits(model, ids, cu_seqlens, longest)
        bf16_logits(model, ids, cu_seqlens, longest)
    layers = model.config.num_hidden_layers
    global_layers = sum(layer.attn.window is None for layer in model.encoder.layer)
    assert 0 < global_layers < layers
    assert gpu.varlen_calls == 2 * global_layers and {c["window_size"] for c in gpu.calls} == {(-1, -1)}
    assert len(said) == 1 and "has no window_size" in str(said[0].message)
    assert_within_bf16(ours, expected, f"ModernBERT ({layers} layers) with the old varlen_attn")


def test_no_varlen_attn_at_all():
    """A PyTorch from before torch.nn.attention.varlen: padded SDPA, said once."""
    q = torch.randn(9, 2, 8, dtype=torch.bfloat16)
    with cuda_rules((9, 0), varlen=None) as gpu, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        packing = packed.Packing.from_cu_seqlens(torch.tensor([0, 4, 9]), 5, 9)
        out = packed.packed_attention(q, q, q, packing, 0.0)
        packed.packed_attention(q, q, q, packing, 0.0)
    q32 = q.float()  # the CPU's attention runs in fp32; the padded SDPA above in bf16, as CUDA's
    expected = packed.packed_attention(q32, q32, q32, packed.Packing.from_cu_seqlens(torch.tensor([0, 4, 9])), 0.0)
    assert out.dtype == torch.bfloat16
    assert_within_bf16(out, expected, "padded SDPA")
    assert gpu.varlen_calls == 0 and len(said) == 1 and "has no torch.nn.attention.varlen" in str(said[0].message)


@pytest.mark.parametrize("window", [None, 1, 3])
def test_the_reference_varlen_op_is_attention_within_each_sequence(window):
    """The reference the rules put in FlashAttention's place computes what the CPU's padded
    attention computes, window (|i - j| <= w) included, and refuses what FlashAttention refuses."""
    lengths = [6, 1, 4]
    cu = F.pad(torch.tensor(lengths).cumsum(0), (1, 0)).to(torch.int32)
    q, k, v = torch.randn(3, sum(lengths), 2, 16, dtype=torch.bfloat16).unbind(0)
    calls = []
    op = reference_varlen_attn((8, 0), calls)
    size = (-1, -1) if window is None else (window, window)
    ours = op(q, k, v, cu, cu, 6, 6, window_size=size)
    cpu = packed._padded_attention(q.float(), k.float(), v.float(), packed.Packing.from_cu_seqlens(cu), 0.0, window)
    torch.testing.assert_close(ours.float(), cpu, atol=1e-2, rtol=0)
    refused = {
        "fp32": ((q.float(), k.float(), v.float(), cu, cu, 6, 6), (8, 0)),
        "mixed dtypes": ((q, k.float(), v, cu, cu, 6, 6), (8, 0)),
        "int64 lengths": ((q, k, v, cu.long(), cu.long(), 6, 6), (8, 0)),
        "head size 12": ((q[..., :12], k[..., :12], v[..., :12], cu, cu, 6, 6), (8, 0)),
        "sm75": ((q, k, v, cu, cu, 6, 6), (7, 5)),
    }
    for what, (args, capability) in refused.items():
        with pytest.raises(FlashError):
            reference_varlen_attn(capability, [])(*args)
    with pytest.raises(TypeError):  # window_size is keyword-only
        op(q, k, v, cu, cu, 6, 6, False, None, None, size)


@pytest.mark.parametrize("sm", SM)
def test_bf16_auto_needs_an_ampere_gpu(sm, monkeypatch):
    """torch.cuda.is_bf16_supported() says True on a T4 (emulated bf16); "auto" asks the device's
    compute capability."""
    monkeypatch.delenv("TAGTUNE_CPU_BF16", raising=False)
    capability = SM[sm]
    with cuda_rules(capability):
        assert torch.cuda.is_bf16_supported()  # as PyTorch answers on each of them
        chosen = use_bf16("auto", torch.device("cuda", 0))
        auto, on = describe("auto", CUDA, chosen), describe("on", CUDA, True)
        mode = precision(TrainConfig(model="m", train="t", out="o"), CUDA)
        assert use_bf16("on", CUDA) and not use_bf16("off", CUDA)
    native = capability >= (8, 0)
    assert chosen == native and mode == ("autocast" if native else "fp32")
    assert f"{capability[0]}.{capability[1]}" in auto
    assert auto.startswith("bf16" if native else "fp32 (this GPU")
    assert ("emulated" in on) != native


@pytest.mark.parametrize("sm", SM)
def test_a_tagger_on_a_gpu_predicts_with_bf16_auto(tiny_tagger, tweets, sm, monkeypatch):
    """predict, evaluate, serve and select load a tagger with --bf16 auto: bf16 from Ampere on."""
    from tagtune import Tagger

    monkeypatch.delenv("TAGTUNE_CPU_BF16", raising=False)
    texts = [" ".join(tokens) for tokens, _ in tweets[400:440]]
    expected = Tagger.load(tiny_tagger, device="cpu", bf16="off").predict(texts)
    with cuda_rules(SM[sm]) as gpu, warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        tagger = Tagger.load(tiny_tagger, device="cpu")
        spans = tagger.predict(texts)
    native = SM[sm] >= (8, 0)
    assert tagger.precision == ("bf16" if native else "fp32"), tagger.precision_note
    assert (gpu.varlen_calls > 0) == native
    assert len(said) == (0 if native else 1)  # on a T4: FlashAttention cannot run, said once
    same = sum(a == b for a, b in zip(spans, expected))  # (a span's score is not compared)
    assert same >= 0.95 * len(texts)


def test_torchrun_on_a_cuda_machine_reduces_cpu_tensors_with_gloo(monkeypatch):
    assert distributed.backend(cuda=False) == "gloo"
    assert distributed.backend(cuda=True) == "cpu:gloo,cuda:nccl"
    chosen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: chosen.update(device=index))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend: chosen.update(backend=backend))
    group = distributed.from_environment()
    assert (group.rank, group.world, group.local_rank) == (1, 2, 1)
    assert chosen == {"device": 1, "backend": "cpu:gloo,cuda:nccl"}


def test_a_cpu_backend_string_reduces_cpu_tensors(tmp_path):
    """The device:backend form that :func:`distributed.backend` gives works for CPU tensors (here
    without NCCL, which this PyTorch may lack: the CPU part alone)."""
    torch.distributed.init_process_group("cpu:gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                                         world_size=1)
    try:
        t = torch.tensor([1.5, 2.0], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        assert t.tolist() == [1.5, 2.0]
    finally:
        torch.distributed.destroy_process_group()
