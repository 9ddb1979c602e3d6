"""The GPU path rehearsed on the CPU: which ops run in bf16 in a training step under CUDA's bf16
autocast (tests/cuda_rules.py), against the CPU's "bf16" mode; and how DistributedDataParallel
buckets tagtune's gradients under torchrun (2 CPU processes, gloo).

bf16 boundaries, one training step of a tiny BERT (CRF loss) and a tiny Qwen3 (the Llama layout,
with RMSNorm on q and k; cross-entropy loss), as training/loop.py's forward_backward and
optimizer_step take it:

========================  ======================================  =====================================
                          CUDA "autocast" (under the CUDA rules)  CPU "bf16" (LowPrecisionLinear)
========================  ======================================  =====================================
encoder linear layers     bf16                                    bf16
activations (GELU, SiLU)  bf16                                    bf16
attention                 bf16 (BERT: FlashAttention's varlen)    fp32 (q, k, v cast to it)         
LayerNorm                 fp32 in and out                         bf16 in, fp32 weights, fp32 inside
RMSNorm                   fp32                                    fp32
classifier head           bf16 (logits cast to fp32 for loss)     fp32
loss, CRF                 fp32                                    fp32
gradients, weights, Adam  fp32                                    fp32
========================  ======================================  =====================================

The two agree that the encoder's matrix products and activations are the low-precision part and
that norms' arithmetic, the loss, the CRF, gradients and the optimizer stay fp32. They differ in
three places: the CPU's attention runs in fp32 (tagtune.models.packed.CPU_ATTENTION_DTYPE: oneDNN
keeps a bf16 kernel per shape, and attention's shapes change with every batch), the CPU's
classifier head runs in fp32,
and the CPU's residual stream is bf16 (LayerNorm takes bf16 input with fp32 weights and computes
in fp32 inside its kernel), where autocast's is fp32.
"""

import collections
import contextlib
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from tagtune import TrainConfig
from tagtune.models.checkpoint import load_model
from tagtune.models.crf import ChainCRF
from tagtune.training.loop import make_optimizer, precision

from conftest import tiny_hf_model
from cuda_rules import cuda_rules
from test_llama import LABELS, tiny

BF16, FP32 = torch.bfloat16, torch.float32
LENGTHS = [13, 7, 2]
DROPOUTS = ("attention_probs_dropout_prob", "hidden_dropout_prob", "classifier_dropout", "attention_dropout")


class OpDtypes(TorchDispatchMode):
    """The dtypes of the floating-point inputs of each aten op run inside, by op name; the ops of
    a CUDA kernel's stand-in (``inside()`` true) are left out: on a GPU they are one kernel."""

    def __init__(self, inside=lambda: False):
        super().__init__()
        self.inside = inside
        self.ops: dict[str, set] = collections.defaultdict(set)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.inside():
            leaves = pytree.tree_leaves((args, kwargs))
            self.ops[func.overloadpacket.__name__] |= {
                t.dtype for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()}
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders of a tiny random BERT and Qwen3, every dropout 0 (FlashAttention has none)."""
    folders = {}
    for kind, make in (("bert", lambda: tiny_hf_model("bert")), ("qwen3", lambda: tiny("qwen3"))):
        ref = make()
        for key in DROPOUTS:
            if hasattr(ref.config, key):
                setattr(ref.config, key, 0.0)
        ref.config.id2label = dict(enumerate(LABELS))
        ref.config.label2id = {label: i for i, label in enumerate(LABELS)}
        folders[kind] = tmp_path_factory.mktemp(kind)
        ref.save_pretrained(folders[kind])
    return folders


def training_step(folder, mode: str, crf: bool) -> dict:
    """One step as forward_backward and optimizer_step take it in ``mode`` ("autocast": under
    the CUDA rules of an H100; "bf16": the CPU's mode): the dtypes seen by the forward pass's
    ops and the loss's, the attention calls that reached the varlen kernel, and the dtypes of the
    logits, the gradients, the weights after the step and the optimizer's state."""
    torch.manual_seed(0)
    model, _ = load_model(folder)
    model.train()
    chain = ChainCRF(LABELS, "BIO") if crf else None
    config = TrainConfig(model="m", train="t", out="o", bf16="on", crf=crf)
    optimizer = make_optimizer(model, config, chain)
    ids = torch.randint(5, 99, (sum(LENGTHS),), generator=torch.Generator().manual_seed(1))
    cu_seqlens = F.pad(torch.tensor(LENGTHS).cumsum(0), (1, 0)).to(torch.int32)
    labels = ids % len(LABELS)
    with cuda_rules((9, 0)) if mode == "autocast" else contextlib.nullcontext() as gpu:
        assert precision(config, torch.device("cuda" if mode == "autocast" else "cpu")) == mode
        if mode == "bf16":
            model.use_low_precision(BF16)
        with OpDtypes(lambda: gpu is not None and gpu.kernels.inside_kernel) as forward:
            with torch.autocast("cpu", dtype=BF16, enabled=mode == "autocast"):
                logits = model(ids, cu_seqlens, max(LENGTHS))
        with OpDtypes() as loss_ops:
            if chain is not None:
                edges = torch.ones(len(LENGTHS), dtype=torch.bool)
                loss = chain.nll(logits.float(), labels, cu_seqlens, edges, edges).sum()
            else:
                loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        loss.backward()
        grads = {p.grad.dtype for p in optimizer.parameters() if p.grad is not None}
        optimizer.step(max_grad_norm=1.0)
        if mode == "bf16":
            model.refresh_low_precision()
        calls = list(gpu.calls) if mode == "autocast" else []
    model.use_low_precision(None)
    state = {t.dtype for s in optimizer.state.values() for t in s.values()}
    return {"forward": forward.ops, "loss": loss_ops.ops, "varlen": calls, "logits": logits.dtype, "grads": grads,
            "weights": {p.dtype for p in optimizer.parameters()}, "state": state,
            "layers": model.config.num_hidden_layers}


def assert_fp32_after_the_forward_pass(step):
    """The loss (and CRF), gradients, weights and optimizer state: fp32 alone."""
    for op, dtypes in step["loss"].items():
        assert dtypes <= {FP32} or op == "_to_copy", (op, dtypes)  # (_to_copy: the logits' cast to fp32)
    assert step["grads"] == step["weights"] == step["state"] == {FP32}


@pytest.mark.parametrize("kind, crf", [("bert", True), ("qwen3", False)])
def test_bf16_autocast_boundaries_of_a_training_step(models, kind, crf):
    cuda, cpu = training_step(models[kind], "autocast", crf), training_step(models[kind], "bf16", crf)
    for step in (cuda, cpu):
        assert_fp32_after_the_forward_pass(step)
        assert step["forward"]["mm" if kind == "qwen3" else "addmm"] >= {BF16}
        assert step["forward"]["gelu" if kind == "bert" else "silu"] == {BF16}
        if kind == "qwen3":  # RMSNorm's arithmetic
            assert step["forward"]["rsqrt"] == step["forward"]["pow"] == step["forward"]["mean"] == {FP32}
    if crf:
        assert {"logsumexp", "_log_softmax"} & set(cuda["loss"]), "the CRF's forward algorithm ran"
    assert {"_log_softmax", "nll_loss_forward"} <= set(cpu["loss"]) or crf

    # autocast: every matrix product and the attention in bf16, LayerNorm in fp32, bf16 logits
    assert cuda["forward"]["addmm"] | cuda["forward"].get("mm", set()) == {BF16}
    attention = {c["dtype"] for c in cuda["varlen"]} | {
        d for op, dtypes in cuda["forward"].items() if op.startswith("_scaled_dot_product") for d in dtypes}
    assert attention == {BF16}
    if kind == "bert":
        assert len(cuda["varlen"]) == cuda["layers"]  # FlashAttention's varlen kernel took each layer
        assert cuda["forward"]["native_layer_norm"] == {FP32}
        assert cpu["forward"]["native_layer_norm"] == {BF16, FP32}  # bf16 input, fp32 weights
    assert cuda["logits"] == BF16 and cpu["logits"] == FP32  # the CPU's head runs in fp32

    # the CPU's bf16 mode: attention in fp32, whichever kernel computes it
    cpu_attention = {d for op, dtypes in cpu["forward"].items()
                     if op.startswith("_scaled_dot_product") or op in ("bmm", "_softmax", "_safe_softmax") for d in dtypes}
    assert cpu_attention == {FP32}


def test_llama_layout_attention_takes_the_varlen_kernel_under_autocast(models):
    step = training_step(models["qwen3"], "autocast", crf=False)
    assert len(step["varlen"]) == step["layers"]


DDP_SCRIPT = """
import json, sys
import torch
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from tagtune import TrainConfig
from tagtune.distributed import from_environment, leave
from tagtune.training.loop import forward_backward, optimizer_step, setup
from tagtune.training.runfolder import RunFolder

model, train, out, result = sys.argv[1:]
group = from_environment()
found = {}
for name, lora in (("full", None), ("lora", 2)):
    config = TrainConfig(model=model, train=train, out=f"{out}/{name}", epochs=1, batch_size=8, bf16="off",
                         seed=3, progress=False, lora=lora)
    run = setup(config, group, RunFolder(config.out))
    names = {p.data_ptr(): n for n, p in run.ddp.module.named_parameters()}
    buckets, ready = [], []

    def recorded(state, bucket):
        buckets.append([names[p.data_ptr()] for p in bucket.parameters()])
        return allreduce_hook(state, bucket)

    run.ddp.register_comm_hook(None, recorded)
    for n, p in run.ddp.module.named_parameters():
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p, n=n: ready.append(n))
    steps = []
    for step in range(2):  # an unused parameter would stop the second step (no find_unused_parameters)
        forward_backward(run, list(range(8 * step, 8 * step + 8)), stepping=True)
        steps.append({"buckets": list(buckets), "ready": list(ready)})
        buckets.clear(), ready.clear()
        optimizer_step(run)
    run.close_log()
    found[name] = {"steps": steps, "trainable": [n for n, p in run.ddp.module.named_parameters() if p.requires_grad],
                   "frozen": [n for n, p in run.ddp.module.named_parameters() if not p.requires_grad],
                   "find_unused_parameters": run.ddp.find_unused_parameters,
                   "bucket_sizes": run.ddp._get_ddp_logging_data().get("bucket_sizes")}
if group.main:
    open(result, "w").write(json.dumps(found))
leave(group)
sys.stdout.flush(), sys.stderr.flush()
import os
os._exit(0)  # two DDP wrappers in one process: a reducer's thread at the interpreter's teardown once aborted it
"""


def test_ddp_buckets_fill_from_the_last_layers(wnut_files, tmp_path):
    """Under torchrun (2 processes, gloo), two steps of a BERT whose layers each outgrow DDP's
    1 MiB first bucket, with every weight training and with LoRA adapters (rank 2).

    Without find_unused_parameters, this PyTorch's DDP puts every gradient into one bucket for
    the first step (DDP's BucketConfig.compute_bucket_size_limits), then rebuilds the buckets in
    the order the gradients became ready in that step's backward pass: so the order in which the
    model registers its parameters does not decide the buckets; its backward order does. From
    the second step the first bucket holds the classifier and the last layer, and the word
    embeddings, ready last, are in the last bucket. Frozen weights are in none; the second step
    runs, so no trainable parameter went without a gradient (which find_unused_parameters would
    have to absorb)."""
    from conftest import make_tiny_bert

    wide = make_tiny_bert(tmp_path / "wide-bert", hidden_size=256, intermediate_size=1024, num_attention_heads=4,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    script, result = tmp_path / "ddp_buckets.py", tmp_path / "buckets.json"
    script.write_text(DDP_SCRIPT)
    env = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(script), str(wide), str(wnut_files / "train.conll"), str(tmp_path / "out"),
                          str(result)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(result.read_text())
    for name, seen in found.items():
        assert seen["find_unused_parameters"] is False
        for step in seen["steps"]:
            buckets, ready = step["buckets"], step["ready"]
            assert sorted(n for b in buckets for n in b) == sorted(seen["trainable"]) == sorted(ready), name
            assert not set(seen["frozen"]) & {n for b in buckets for n in b}
            order = {n: i for i, b in enumerate(buckets) for n in b}  # buckets fill in the order gradients come
            assert [order[n] for n in ready] == sorted(order[n] for n in ready), (name, buckets, ready)
            last = "embeddings." if name == "full" else "encoder.layer.0."  # (LoRA: the embeddings are frozen)
            assert ready[0].startswith("classifier.") and ready[-1].startswith(last), (name, ready)
        first, second = (step["buckets"] for step in seen["steps"])
        assert len(first) == 1, (name, first)
        if name == "full":
            assert len(second) >= 2, seen["bucket_sizes"]
            assert {"classifier.weight", "classifier.bias"} <= set(second[0])
            assert any(n.startswith("encoder.layer.1.") for n in second[0])
            assert not any(n.startswith("encoder.layer.0.") for n in second[0])
            assert "embeddings.word_embeddings.weight" in second[-1]
        else:
            assert seen["frozen"] and all("lora_" in n or n.startswith("classifier.") for n in seen["trainable"])
