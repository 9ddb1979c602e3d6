"""Training memory: the plan shown before training (weights, gradients and AdamW state of what
is trained, activations at the largest batch) is near what autograd keeps, and a run that does not
fit the free memory is refused in one line; activation checkpointing (``--checkpointing``) gives
the loss and gradients of the plain run while storing fewer tensors for the backward pass."""

import pytest
import torch
import torch.nn.functional as F

from tagtune.models.config import EncoderConfig, memory_plan
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
    kept, weights = {}, {p.data_ptr() for p in model.parameters()}

    def pack(t):  # a tensor saved by several operations is held once; the weights are counted apart
        if t.data_ptr() not in weights:
            kept[t.data_ptr(), t.numel()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(ids, cu_seqlens), labels)
    loss.backward()
    return sum(kept.values())


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_checkpointing_keeps_less_for_the_backward_pass(kind):
    model = tiny(kind, num_hidden_layers=6, intermediate_size=128)
    plain, checkpointed = saved_bytes(model, False), saved_bytes(model, True)
    assert checkpointed < plain / 3, (plain, checkpointed)
    with torch.no_grad():  # inference: nothing to recompute, the plain call
        model.encoder.checkpointing = True
        assert model(*batch()[:2]).shape == (20, 3)


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_the_activation_estimate_is_near_what_autograd_keeps(kind):
    """A model of another width and depth than those the bytes per token were measured on."""
    model = tiny(kind, hidden_size=96, num_hidden_layers=5, intermediate_size=384)
    parameters = model.num_parameters()
    plan = memory_plan(model.config, parameters, parameters, tokens=20)
    measured = saved_bytes(model, False)
    assert 0.5 * measured <= plan.activations <= 2 * measured, (plan.activations, measured)
    assert plan.weights == 4 * parameters and plan.optimizer == 12 * parameters
    assert memory_plan(model.config, parameters, parameters, 20, checkpointing=True).activations < plan.activations / 2


def test_a_run_that_does_not_fit_is_refused_in_one_line(tiny_bert, wnut_files, cli, tmp_path, monkeypatch):
    from tagtune.training import loop

    monkeypatch.setattr(loop, "free_memory", lambda device: (3_000_000, "{} free"))
    result = cli("train", "--model", tiny_bert, "--train", wnut_files / "train.conll", "--out", tmp_path / "out",
                 "--epochs", "1", "--device", "cpu", "--max-tokens", "512")
    assert result.returncode != 0
    error = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert error.startswith("tagtune: error: training needs more memory than is free on cpu (weights 4.0 MB, "
                            "gradients+AdamW 12 MB, activations ~"), error
    assert "at 512 tokens a batch; 3.0 MB free); try --lora 16, --checkpointing or a smaller" in error
    assert not (tmp_path / "out").exists()

    monkeypatch.setattr(loop, "free_memory", lambda device: (5_000_000, "{} free"))
    lora = cli("train", "--model", tiny_bert, "--train", wnut_files / "train.conll", "--out", tmp_path / "lora",
               "--epochs", "1", "--device", "cpu", "--max-tokens", "512", "--lora", "4", "--checkpointing", "--quiet")
    error = lora.stderr.strip().splitlines()[-1]
    assert lora.returncode != 0 and "try a smaller --batch-size or --max-tokens" in error, error
    assert "gradients+AdamW 12 MB" not in error  # the frozen base has no gradients nor AdamW state


def test_an_adapter_folder_is_no_model_to_train_from(tiny_bert, wnut_files, cli, tmp_path):
    from peft import LoraConfig

    adapters = tmp_path / "adapters"
    LoraConfig(r=4, target_modules=["query"], base_model_name_or_path=str(tiny_bert)).save_pretrained(adapters)
    result = cli("train", "--model", adapters, "--train", wnut_files / "train.conll", "--out", tmp_path / "out")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0] == (f"tagtune: error: {adapters}: a LoRA adapter folder, which holds no base weights to train "
                        f"from; merge it first (tagtune merge {adapters} MERGED) and train --model MERGED, or train "
                        f"on its base model ({tiny_bert}) again")


def test_a_local_base_is_kept_as_an_absolute_path(tmp_path, monkeypatch):
    from tagtune.models.lora import stored_base

    (tmp_path / "models" / "base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "models")
    assert stored_base("base") == str(tmp_path / "models" / "base")
    assert stored_base("./base/") == str(tmp_path / "models" / "base")
    assert stored_base("org/name@v1") == "org/name@v1"  # a Hub id, as given
