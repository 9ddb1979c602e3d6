"""tagtune.training.compiled: compiled layers train as eager ones do, and torch.compile that
cannot run leaves the model eager with one warning line."""

import subprocess
import sys
import warnings

import pytest
import torch

from tagtune.data.batching import fill_batch, pack
from tagtune.models.checkpoint import load_model
from tagtune.training import compiled
from tagtune.training.compiled import compile_model

LABELS = ["O", "B-X", "I-X"]


def batches():
    """Three packed training batches of 8 sequences, every one filled to 192 tokens: one shape."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(3):
        lengths = torch.randint(5, 24, (8,), generator=g).tolist()
        seqs = [torch.randint(1000, 2000, (n,), generator=g).tolist() for n in lengths]
        labels = [torch.randint(0, len(LABELS), (n,), generator=g).tolist() for n in lengths]
        batch = fill_batch(pack(seqs, labels), 192)
        assert batch.num_tokens == 192
        out.append(batch)
    return out


def train_steps(model, data, lr=0.05):
    """Seeded steps of plain SGD: each step's loss, and each step's gradients by parameter name."""
    torch.manual_seed(1)  # dropout's masks
    model.train()
    losses, grads = [], []
    for batch in data:
        logits = model(batch.input_ids, batch.cu_seqlens, batch.max_seqlen)
        loss = torch.nn.functional.cross_entropy(logits, batch.labels, ignore_index=-100)
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p -= lr * p.grad
                    p.grad = None
    return losses, grads


def test_compiled_layers_train_as_eager(tiny_bert):
    """Three steps with dropout on: the compiled model's losses and gradients are the eager one's
    (the same dropout masks, fallback_random), and it reports one shape compiled. 34 s on 2 cores
    at load 7 with Inductor's cache empty (its C++ compiles), 12 s once cached."""
    data = batches()
    torch.manual_seed(0)
    eager, _ = load_model(str(tiny_bert), labels=LABELS)
    torch.manual_seed(0)
    model, _ = load_model(str(tiny_bert), labels=LABELS)
    done = compile_model(model)
    assert done.active and done.reason is None
    eager_losses, eager_grads = train_steps(eager, data)
    losses, grads = train_steps(model, data)
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-5)
    for step, (got, want) in enumerate(zip(grads, eager_grads)):
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-5, msg=f"step {step}: {name}")
    assert done.shapes == {(192, torch.float32)}
    assert done.seconds > 0 and done.line().startswith("compiled: 1 shape, ")


def test_without_a_compiler_the_model_stays_eager(tiny_bert, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    model, _ = load_model(str(tiny_bert), labels=LABELS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = compile_model(model)
    assert not done.active and done.seconds == 0 and done.line() == ""
    assert [str(w.message) for w in caught] == [
        "--compile: no C++ compiler found (/nonexistent/g++); install one or set CXX; training runs eager"]
    assert all(not hasattr(layer, "_compiled_call_impl") or layer._compiled_call_impl is None
               for layer in model.encoder.layer)
    monkeypatch.setattr(compiled.sys, "platform", "win32")
    assert "Windows" in compiled.unavailable()


def test_an_unknown_mode_is_refused(tiny_bert):
    model, _ = load_model(str(tiny_bert), labels=LABELS)
    with pytest.raises(ValueError, match="compile mode must be one of default, max-autotune-no-cudagraphs"):
        compile_model(model, "reduce-overhead")


def test_importing_it_leaves_dynamo_out():
    """torch._dynamo (some 70 MB) is imported by compile_model, not by importing the module."""
    code = "import sys, tagtune.training.compiled; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
