"""Training memory: activation checkpointing (``--checkpointing``) gives the loss and gradients
of the plain run while storing fewer tensors for the backward pass."""

import pytest
import torch
import torch.nn.functional as F

from tagtune.models.config import EncoderConfig
from tagtune.models.packed import TokenClassifier

LABELS = {0: "O", 1: "B-X", 2: "I-X"}
CONFIGS = {
    "bert": dict(model_type="bert", vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=48),
    "qwen2": dict(model_type="qwen2", vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=48, attention_dropout=0.1, rope_theta=10000.0),
}


def tiny(kind: str, **changes) -> TokenClassifier:
    torch.manual_seed(0)
    config = EncoderConfig.from_hf_dict({**CONFIGS[kind], **changes, "id2label": LABELS})
    return TokenClassifier(config).train()  # dropout on: checkpointing must replay its masks


def batch():
    generator = torch.Generator().manual_seed(1)
    cu_seqlens = torch.tensor([0, 7, 19, 20])
    ids = torch.randint(1, 100, (20,), generator=generator)
    return ids, cu_seqlens, torch.randint(0, 3, (20,), generator=generator)


def loss_and_gradients(model, checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.encoder.checkpointing = checkpointing
    model.zero_grad()
    ids, cu_seqlens, labels = batch()
    torch.manual_seed(2)
    loss = F.cross_entropy(model(ids, cu_seqlens), labels)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_checkpointing_gives_the_same_loss_and_gradients(kind):
    model = tiny(kind)
    plain_loss, plain = loss_and_gradients(model, False)
    loss, grads = loss_and_gradients(model, True)
    torch.testing.assert_close(loss, plain_loss, atol=1e-5, rtol=0)
    assert grads.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(grads[name], plain[name], atol=1e-5, rtol=0, msg=name)


def saved_bytes(model, checkpointing: bool) -> int:
    """Bytes of the tensors autograd keeps from the forward pass for the backward pass."""
    model.encoder.checkpointing = checkpointing
    ids, cu_seqlens, labels = batch()
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(ids, cu_seqlens), labels)
    loss.backward()
    return sum(kept)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_checkpointing_keeps_less_for_the_backward_pass(kind):
    model = tiny(kind, num_hidden_layers=6, intermediate_size=128)
    plain, checkpointed = saved_bytes(model, False), saved_bytes(model, True)
    assert checkpointed < plain / 3, (plain, checkpointed)
    with torch.no_grad():  # inference: nothing to recompute, the plain call
        model.encoder.checkpointing = True
        assert model(*batch()[:2]).shape == (20, 3)
