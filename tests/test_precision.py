"""bf16 mixed precision on CPU: bf16 activations and matrix products, fp32 master weights; and
bf16 prediction (Tagger's ``bf16``), chosen as training chooses it."""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tagtune.data.align import IGNORE
from tagtune.data.batching import pack
from tagtune.models.checkpoint import load_model
from tagtune.models.packed import Linear
from tagtune.models.precision import BF16_MIN_SPEEDUP, ONEDNN_ISAS_WITHOUT_BF16, cpu_bf16_speedup, cpu_has_bf16
from tagtune.text.tokenizer import load_tokenizer
from tagtune.data.batching import fill_batch
from tagtune import TrainConfig
from tagtune.training.loop import precision

TEXTS = ["@user I'm in New York City this weekend for the Yankees game",
         "Watching Star Wars again tonight",
         "Tokyo and Osaka are cities in Japan",
         "lol"]


@pytest.fixture(autouse=True)
def _measured(monkeypatch):
    """The choice of --bf16 auto as measured: these tests set TAGTUNE_CPU_BF16 themselves (make
    test-bf16-on and test-bf16-off set it for the whole suite)."""
    monkeypatch.delenv("TAGTUNE_CPU_BF16", raising=False)


@pytest.fixture(scope="module")
def model_and_batch(minilm):
    torch.manual_seed(0)
    model, report = load_model(minilm, labels=["O", "B-x", "I-x"])
    tokenizer = load_tokenizer(report.directory)
    ids = [e.ids for e in tokenizer.encode_batch(TEXTS)]
    labels = [[i % 3 for i in range(len(s))] for s in ids]
    return model.eval(), pack(ids, labels)


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    logits = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen)
    loss = F.cross_entropy(logits, batch.labels, ignore_index=IGNORE)
    loss.backward()
    return logits.detach(), loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_bf16_forward_and_gradients_follow_fp32(model_and_batch):
    model, batch = model_and_batch
    ref_logits, ref_loss, ref_grads = loss_and_grads(model, batch)
    model.use_low_precision(torch.bfloat16)
    try:
        assert all(m.lowp.dtype == torch.bfloat16 for m in model.modules() if isinstance(m, Linear))
        logits, loss, grads = loss_and_grads(model, batch)
    finally:
        model.use_low_precision(None)
    assert logits.dtype == torch.float32  # the head runs in fp32
    assert 0 < (logits - ref_logits).abs().max() < 0.02 * ref_logits.abs().max()
    assert loss == pytest.approx(ref_loss, rel=1e-2)
    checked = 0
    for name, g in grads.items():
        assert g.dtype == torch.float32, name  # master weights get fp32 gradients
        scale = ref_grads[name].norm()
        if scale < 1e-6:  # attention key biases: the true gradient is 0, both are rounding noise
            continue
        assert (g - ref_grads[name]).norm() / scale < 0.05, name
        checked += 1
    assert checked > 90


def test_low_precision_copies_follow_the_weights(model_and_batch):
    model, batch = model_and_batch
    ref = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen).detach()
    layer = model.encoder.layer[0].intermediate.dense
    model.use_low_precision(torch.bfloat16)
    try:
        before, weight = layer.lowp.clone(), layer.weight.detach().clone()
        with torch.no_grad():
            layer.weight.add_(0.5)
        assert torch.equal(layer.lowp, before)  # stale until refreshed
        model.refresh_low_precision()
        assert torch.equal(layer.lowp, layer.weight.to(torch.bfloat16))
        with torch.no_grad():
            layer.weight.copy_(weight)
        model.refresh_low_precision()
    finally:
        model.use_low_precision(None)
    assert layer.lowp is None
    assert torch.equal(model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen), ref)  # exact fp32 again


def test_filler_tokens_change_nothing_but_the_shape(model_and_batch):
    model, batch = model_and_batch
    filled = fill_batch(batch, 64)
    assert filled.num_tokens % 64 == 0 and batch.num_tokens < filled.num_tokens < batch.num_tokens + 64
    lengths = (filled.cu_seqlens[1:] - filled.cu_seqlens[:-1]).tolist()
    assert max(lengths) == batch.max_seqlen == filled.max_seqlen and min(lengths) > 0
    assert torch.equal(filled.input_ids[:batch.num_tokens], batch.input_ids)
    assert (filled.labels[batch.num_tokens:] == IGNORE).all()
    with torch.no_grad():
        logits = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen)
        filled_logits = model(filled.input_ids, filled.cu_seqlens, filled.max_seqlen)
    torch.testing.assert_close(filled_logits[:batch.num_tokens], logits, atol=1e-5, rtol=1e-5)
    assert F.cross_entropy(filled_logits, filled.labels, ignore_index=IGNORE).item() == pytest.approx(
        F.cross_entropy(logits, batch.labels, ignore_index=IGNORE).item(), rel=1e-5)
    assert fill_batch(filled, 64) is filled


def test_precision_modes():
    cpu = torch.device("cpu")
    config = TrainConfig(model="m", train="t", out="o")
    assert precision(TrainConfig(model="m", train="t", out="o", bf16="off"), cpu) == "fp32"
    assert precision(TrainConfig(model="m", train="t", out="o", bf16="on"), cpu) == "bf16"
    native = native_bf16()
    assert cpu_has_bf16() == native
    pays = native and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP
    assert precision(config, cpu) == ("bf16" if pays else "fp32")


def native_bf16() -> bool:
    """Whether Linux says the CPU has AVX512-BF16 or AMX, and oneDNN may use them."""
    native = bool(cpuinfo_flags() & {"avx512_bf16", "amx_tile"})
    return native and os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() not in ONEDNN_ISAS_WITHOUT_BF16


@pytest.mark.parametrize("value, chosen", [("on", True), ("off", False), ("ON ", True)])
def test_the_environment_decides_auto_on_a_cpu(monkeypatch, value, chosen):
    """TAGTUNE_CPU_BF16=on|off makes --bf16 auto bf16 or fp32 on a CPU without measuring, and
    the note says why; --bf16 on and off are as before."""
    from tagtune.models import precision as chooser

    monkeypatch.setenv("TAGTUNE_CPU_BF16", value)
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: pytest.fail("measured"))
    cpu = torch.device("cpu")
    assert chooser.use_bf16("auto", cpu) is chosen
    assert precision(TrainConfig(model="m", train="t", out="o"), cpu) == ("bf16" if chosen else "fp32")
    emulated = "" if native_bf16() else "; emulated, no native bf16 here"
    assert chooser.describe("auto", cpu, chosen) == (f"bf16 (--bf16 auto, TAGTUNE_CPU_BF16=on{emulated})" if chosen
                                                     else "fp32 (--bf16 auto, TAGTUNE_CPU_BF16=off)")
    assert (chooser.use_bf16("on", cpu), chooser.use_bf16("off", cpu)) == (True, False)


def test_the_environment_may_ask_for_the_measurement(monkeypatch):
    from tagtune.models import precision as chooser

    monkeypatch.setattr(chooser, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(chooser, "_agreed_speedup", None)
    for value in ("measure", ""):
        monkeypatch.setenv("TAGTUNE_CPU_BF16", value)
        monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 0.6)
        assert not chooser.use_bf16("auto", torch.device("cpu"))
        monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 1.9)
        assert chooser.use_bf16("auto", torch.device("cpu"))


def test_a_wrong_environment_value_is_one_line(monkeypatch, trained_tagger, tmp_path):
    from helpers import tagtune
    from tagtune import TagtuneError
    from tagtune.models.precision import use_bf16

    monkeypatch.setenv("TAGTUNE_CPU_BF16", "yes")
    with pytest.raises(TagtuneError, match="TAGTUNE_CPU_BF16 must be on, off or measure, got 'yes'"):
        use_bf16("auto", torch.device("cpu"))
    assert use_bf16("off", torch.device("cpu")) is False  # only auto reads it
    (tmp_path / "in.txt").write_text("Barack Obama\n", encoding="utf-8")
    result = tagtune("predict", trained_tagger, tmp_path / "in.txt", "-o", tmp_path / "out.jsonl")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == "tagtune: error: TAGTUNE_CPU_BF16 must be on, off or measure, got 'yes'\n"
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("value", ["on", "off"])
def test_the_environment_reaches_a_training_process(monkeypatch, tiny_bert, wnut_files, tmp_path, value):
    """A `tagtune train` process started with TAGTUNE_CPU_BF16 set trains in the precision it
    names under --bf16 auto, and its first line says so."""
    from helpers import tagtune

    monkeypatch.setenv("TAGTUNE_CPU_BF16", value)
    result = tagtune("train", "--model", tiny_bert, "--train", wnut_files / "dev.conll", "--out", tmp_path / "o",
                     "--epochs", "1", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    [header] = [line for line in result.stderr.splitlines() if " windows, " in line]
    mode = "bf16 mixed precision" if value == "on" else "fp32"
    assert f", on cpu, {mode} (--bf16 auto, TAGTUNE_CPU_BF16={value}" in header, header


def test_bf16_speed_is_measured(monkeypatch):
    from tagtune.models import precision as chooser

    assert 0.001 < cpu_bf16_speedup() < 100  # a ratio of two real timings (emulated bf16: about 0.007; AMX on a busy machine: 30)
    assert cpu_bf16_speedup() == cpu_bf16_speedup()  # measured once per process
    monkeypatch.setattr(chooser, "cpu_has_bf16", lambda: True)
    auto = TrainConfig(model="m", train="t", out="o")
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 0.6)
    assert precision(auto, torch.device("cpu")) == "fp32"
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 1.9)
    assert precision(auto, torch.device("cpu")) == "bf16"
    monkeypatch.setattr(chooser, "cpu_has_bf16", lambda: False)  # emulated bf16 is never chosen
    assert precision(auto, torch.device("cpu")) == "fp32"


def test_a_onednn_limit_below_bf16_means_emulated_bf16(monkeypatch):
    """ONEDNN_MAX_CPU_ISA below the bf16 instructions makes oneDNN emulate bf16 (over 100x slower
    than fp32 measured): then the CPU counts as without native bf16, and auto is fp32 unmeasured."""
    from tagtune.models import precision as chooser

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert chooser.cpu_bf16_features() == ["AVX512-BF16", "AMX"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert chooser.cpu_bf16_features() == ["AVX512-BF16"]
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert chooser.cpu_bf16_features() == [] and not chooser.cpu_has_bf16()
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: pytest.fail("measured"))
    assert precision(TrainConfig(model="m", train="t", out="o"), torch.device("cpu")) == "fp32"
    assert "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN from this CPU's bf16" in chooser.describe("auto", torch.device("cpu"), False)


def test_measuring_stops_where_bf16_is_far_slower(monkeypatch):
    """Where bf16 products take several times fp32's, two of each are enough to say it does not pay."""
    import time

    mm = torch.mm
    dtypes = []

    def slow_bf16(a, b):
        dtypes.append(a.dtype)
        if a.dtype == torch.bfloat16:
            time.sleep(0.1)
        return mm(a, b)

    cpu_bf16_speedup.cache_clear()
    monkeypatch.setattr(torch, "mm", slow_bf16)
    try:
        speedup = cpu_bf16_speedup()
    finally:
        cpu_bf16_speedup.cache_clear()  # the other tests measure the real products
    assert speedup < 0.5 and dtypes == [torch.float32, torch.bfloat16] * 2


def cpuinfo_flags() -> set[str]:
    """The CPU feature flags in /proc/cpuinfo (read here, apart from torch's own checks)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to compare with")
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask(p, dtype):
    from tagtune.models.packed import Dropout

    layer = Dropout(p).train()
    x = (torch.rand(1000, 1000) + 1).to(dtype).requires_grad_()
    torch.manual_seed(1)
    y = layer(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 0.002  # 1e6 independent draws: the standard error is 5e-4 or less
    kept = y != 0
    torch.testing.assert_close(y[kept], (x[kept].float() / (1 - p)).to(dtype), rtol=1e-2, atol=0)
    y.float().sum().backward()
    assert torch.equal(x.grad != 0, kept)  # the gradient flows through the kept elements only
    torch.manual_seed(1)
    assert torch.equal(layer(x) == 0, y == 0)  # reproducible from the seed
    assert not torch.equal(layer(x) == 0, y == 0)  # and fresh at every call
    rows, cols = (y == 0).float().mean(1), (y == 0).float().mean(0)
    assert rows.std() < 0.1 and cols.std() < 0.1  # no stripes: every row and column sees about p
    assert torch.equal(layer.eval()(x), x)


def test_measuring_bf16_leaves_the_random_state_alone():
    cpu_bf16_speedup.cache_clear()
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    cpu_bf16_speedup()
    assert torch.equal(torch.rand(4), expected)  # runs are seeded: measuring must not move them


def test_attention_dropout_keeps_the_expected_output():
    """Attention with dropout on CPU (the probabilities masked by dropout_mask): the mean over
    many draws is attention without dropout, and the probabilities dropped are about p."""
    from tagtune.models.packed import _sdpa

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 4) for _ in range(3))
    mask = torch.tensor([True] * 5 + [False])[None, None, None, :]
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    draws = torch.stack([_sdpa(q, k, v, mask, 0.2) for _ in range(4000)])
    torch.testing.assert_close(draws.mean(0), plain, atol=0.03, rtol=0)
    assert not torch.equal(draws[0], draws[1])


def test_bf16_prediction_agrees_with_fp32(trained_tagger, tweets, tmp_path):
    """A real tagger in bf16 against itself in fp32 on 300 held-out tweets: the same spans on at
    least 99% of the texts, entity F1 within what the 1% of texts left may move (each span there
    moves F1 by about 0.005: within 0.015), span scores within 0.02."""
    from tagtune.data.formats import read_examples
    from tagtune.apps.examples import write_conll
    from tagtune import Tagger
    from tagtune.inference.evaluate import evaluate_examples

    write_conll(tmp_path / "test.conll", tweets[1000:1300])
    examples = read_examples(str(tmp_path / "test.conll"))
    texts = [e.text for e in examples]
    fp32 = Tagger.load(trained_tagger, device="cpu", bf16="off")
    bf16 = Tagger.load(trained_tagger, device="cpu", bf16="on")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert all(m.lowp is not None and m.lowp.dtype == torch.bfloat16
               for m in bf16.model.modules() if isinstance(m, Linear) and m is not bf16.model.classifier)
    a, b = fp32.predict(texts), bf16.predict(texts)
    assert sum(map(len, a)) > 50  # the tagger finds entities, so agreement means something

    def key(spans):
        return [(s.start, s.end, s.label) for s in spans]

    same = sum(key(x) == key(y) for x, y in zip(a, b))
    assert same >= 0.99 * len(texts), f"{same} of {len(texts)} texts with equal spans"
    assert max(abs(x.score - y.score) for p, q in zip(a, b) if key(p) == key(q) for x, y in zip(p, q)) < 0.02
    f1 = [evaluate_examples(t, examples)["f1"] for t in (fp32, bf16)]
    assert abs(f1[0] - f1[1]) <= 0.015, f1


def test_bf16_auto_follows_the_hardware(trained_tagger, monkeypatch):
    from tagtune.models import precision as chooser
    from tagtune import TagtuneError
    from tagtune import Tagger

    tagger = Tagger.load(trained_tagger, device="cpu")  # auto, as this CPU measures
    if not native_bf16():  # then auto is fp32 without measuring
        assert tagger.precision == "fp32", tagger.precision_note
        assert tagger.precision_note in ("fp32 (no native bf16 on this CPU; --bf16 on forces emulated bf16)",
                                         "fp32 (ONEDNN_MAX_CPU_ISA={} keeps oneDNN from this CPU's bf16 instructions; "
                                         "--bf16 on forces emulated bf16)".format(os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()))
    else:  # the measured figure, as the note gives it, decides against the threshold
        import re

        figure = float(re.search(r"measured (\d+\.\d)x fp32's speed", tagger.precision_note).group(1))
        assert tagger.precision == ("bf16" if figure >= BF16_MIN_SPEEDUP else "fp32"), tagger.precision_note
    monkeypatch.setattr(chooser, "_cpu_bf16_instructions", lambda: ["AVX512-BF16", "AMX"])
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 2.0)
    tagger = Tagger.load(trained_tagger, device="cpu")
    assert tagger.precision == "bf16"
    assert tagger.precision_note == ("bf16 (CPU has AVX512-BF16 and AMX, bf16 matrix products measured 2.0x "
                                     "fp32's speed; --bf16 off for fp32)")
    assert all(m.lowp is not None for m in tagger.model.modules() if isinstance(m, Linear)
               and m is not tagger.model.classifier)
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 0.6)  # native, but slower than fp32
    tagger = Tagger.load(trained_tagger, device="cpu")
    assert tagger.precision == "fp32" and "0.6x fp32's speed" in tagger.precision_note
    assert all(m.lowp is None for m in tagger.model.modules() if isinstance(m, Linear))
    with pytest.raises(TagtuneError, match="bf16 must be auto, on or off, got 'yes'"):
        Tagger.load(trained_tagger, device="cpu", bf16="yes")


def test_processes_can_agree_on_one_measurement(monkeypatch):
    """Under torchrun one process measures and the others take its figure (agree_cpu_bf16_speedup),
    so a busy machine cannot make them choose differently."""
    from tagtune.models import precision as chooser

    monkeypatch.setattr(chooser, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(chooser, "cpu_bf16_speedup", lambda: 0.6)  # this process's own measurement
    monkeypatch.setattr(chooser, "_agreed_speedup", None)
    cpu = torch.device("cpu")
    assert not chooser.use_bf16("auto", cpu)
    chooser.agree_cpu_bf16_speedup(2.5)  # the figure rank 0 measured
    assert chooser.use_bf16("auto", cpu)
    assert "measured 2.5x fp32's speed" in chooser.describe("auto", cpu, True)
