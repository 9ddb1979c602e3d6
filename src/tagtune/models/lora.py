"""LoRA on tagtune's encoders, saved as the adapter folder PEFT and transformers load.

LoRA (Hu et al., https://arxiv.org/abs/2106.09685) freezes the pretrained weights and trains, beside
each chosen linear layer W, two small matrices B (out, r) and A (r, in) whose product, scaled by
alpha / r, is added to W: y = x W^T + b + (alpha / r) (x A^T) B^T.

The adapted layer is tagtune's own :class:`LoraLinear`, laid out as PEFT's LoRA layer is
(``base_layer``, ``lora_A.default``, ``lora_B.default``), whose forward and backward are one
function (:class:`LoraProduct`): the products run in the frozen layer's compute dtype (bf16 under
mixed precision, with fp32 adapters and fp32 gradients for them), the frozen weight gets no
gradient, and only the input and the rank-r product are kept for the backward pass. PEFT's own
layer, measured on MiniLM in bf16 on a CPU, ran at 0.72x full fine-tuning's tokens/s with 1.09x its
memory: it casts each input to fp32 for the adapters and keeps that copy, and importing it costs
162 MB. PEFT stays the reader of adapter folders (:func:`read_adapter_config`) and, in the
tests, the judge that the folder written is the tagger trained.

The layers adapted are picked by name from the family's ``LORA_TARGETS`` (module paths in a
layer, see tagtune.models.families), as transformers names them (DistilBERT's ``attention.q_lin``
for tagtune's ``attention.self.query``). What trains: the adapters and the token classifier (and
ModernBERT's head transform before it).

The folder written is PEFT's: adapter_config.json (task TOKEN_CLS, the base model, the adapted
modules under transformers' full names) and adapter_model.safetensors (``base_model.model.`` +
transformers' key of each adapter matrix, and of the classifier, which PEFT saves as a module to
save), beside config.json with the labels, the tokenizer and tagtune.json, so that
``PeftModel.from_pretrained(AutoModelForTokenClassification.from_pretrained(base, ...), folder)``
is the same tagger.
"""

from __future__ import annotations

import json
import os
import shutil
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tagtune.errors import TagtuneError
from tagtune.files import atomic_write, new_folder_beside, replace_folder, write_error
from tagtune.models.checkpoint import (LoadReport, load_model, read_safetensors, to_checkpoint_names,
                                       to_tagtune_names, write_model_files, write_safetensors)
from tagtune.models.config import read_config
from tagtune.models.packed import Linear, dropout_mask
from tagtune.models.families import checkpoint_layers, lora_targets
from tagtune.store.hub import resolve
from tagtune.store.layout import (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, CRF_FILE, SETTINGS_FILE,
                                  SPAN_HEAD_FILE, attention_of)

PEFT_PREFIX = "base_model.model."
"""PEFT's prefix of every key in adapter_model.safetensors (PeftModel.base_model.model)."""
ADAPTER = "default"
"""PEFT's name of the one adapter tagtune trains (in the module names, not in the saved keys)."""
HEADS = ("classifier", "head")
"""The modules that train beside the adapters, where the model has them, saved whole."""


# ---------------------------------------------------------------------------------------------
# Which layers


def family_targets(model_type: str) -> list[str]:
    """The family's default targets: module paths in a layer, under transformers' names."""
    _, table = checkpoint_layers(model_type)
    return [table.get(path, path) for path in lora_targets(model_type)]


def choose_targets(model_type: str, names: list[str] | None) -> list[str]:
    """The family's targets that ``names`` select (all with None): a name selects each target it is,
    or that ends with "." + name, as PEFT matches target_modules ("query", "dense" or
    "attention.output.dense" for BERT). A name that selects none is a one-line error listing them."""
    known = family_targets(model_type)
    if names is None:
        return known
    chosen = []
    for name in names:
        hits = [t for t in known if t == name or t.endswith("." + name)]
        if not hits:
            raise TagtuneError(f"--lora-targets: {model_type} has no layer named {name!r}; its layers LoRA can "
                               f"adapt are {', '.join(known)} (or their last names)")
        chosen += [t for t in hits if t not in chosen]
    return [t for t in known if t in chosen]


def module_names(model, targets: list[str]) -> list[str]:
    """tagtune's full module names of ``targets`` (transformers' paths in a layer) in every layer."""
    _, table = checkpoint_layers(model.config.model_type)
    inverse = {theirs: ours for ours, theirs in table.items()}
    return [f"encoder.layer.{i}.{inverse.get(t, t)}" for i in range(model.config.num_hidden_layers) for t in targets]


def hf_name(name: str, config, encoder_only: bool) -> str:
    """transformers' name of tagtune's module ``name`` (the checkpoint key mapping, applied to a module)."""
    return next(iter(to_checkpoint_names({name + ".weight": None}, config, encoder_only))).removesuffix(".weight")


def tagtune_name(name: str, config) -> str:
    """tagtune's name of transformers' module ``name`` (the inverse of :func:`hf_name`)."""
    state, _ = to_tagtune_names({name + ".weight": None}, config, keep_classifier=True)
    return next(iter(state), name + ".weight").removesuffix(".weight")


# ---------------------------------------------------------------------------------------------
# The adapted layer


class LoraProduct(torch.autograd.Function):
    """y = x W^T + b + scaling (x' A^T) B^T, forward and backward in one function, where x' is x
    with the adapters' dropout (``dropped``, made with the scaled mask ``keep``; x itself without).

    Everything multiplies in x's dtype: ``weight`` is the frozen layer's weight in it (its bf16
    copy under mixed precision), the adapters are cast to it per call (r x in and out x r: small).
    The adapters' gradients come back in their own dtype (fp32). The frozen weight and bias get
    gradients only if they ask for them. Kept for the backward pass: x' and the (T, r) product.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, dropped, keep):
        dtype = x.dtype
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        x2 = x.reshape(-1, x.shape[-1])
        dropped = x2 if dropped is None else dropped.reshape(x2.shape)
        xa = dropped @ a.t()  # (T, r)
        y = F.linear(x2, weight, None if bias is None else bias.to(dtype))
        y.addmm_(xa, b.t(), alpha=scaling)
        ctx.save_for_backward(x2 if ctx.needs_input_grad[1] else None, dropped, xa, weight, a, b,
                              None if keep is None else keep.reshape(x2.shape))
        ctx.scaling, ctx.shapes = scaling, (x.shape, lora_a.dtype, bias is not None)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x2, dropped, xa, weight, a, b, keep = ctx.saved_tensors
        shape, adapter_dtype, has_bias = ctx.shapes
        g = grad.reshape(-1, grad.shape[-1])
        gb = g @ b  # (T, r), before the scaling
        grad_b = (g.t() @ xa).mul_(ctx.scaling).to(adapter_dtype)
        grad_a = (gb.t() @ dropped).mul_(ctx.scaling).to(adapter_dtype)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            through = (gb @ a).mul_(ctx.scaling)
            grad_x = torch.addmm(through if keep is None else through.mul_(keep), g, weight).reshape(shape)
        if ctx.needs_input_grad[1]:
            grad_weight = g.t() @ x2
        if has_bias and ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        return grad_x, grad_weight, grad_bias, grad_a, grad_b, None, None, None


_last_dropped: tuple = (None, None, None)
"""(weakref of the input, its dropped copy, the mask) of the last :func:`shared_dropout`: q, k
and v read one input, and draw one mask for it, not three. Emptied when that input is freed
(:func:`_forget`), so that no batch's activations outlive it here."""


def _forget(ref) -> None:
    """The weakref callback of :data:`_last_dropped`'s input: its input is gone, and so is the entry."""
    global _last_dropped
    if _last_dropped[0] is ref:
        _last_dropped = (None, None, None)


def shared_dropout(x, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x with dropout ``p`` applied, scaled by 1 / (1 - p); the scaled mask), the same for every
    layer that reads this very ``x`` in a row. The dropped copy carries no gradient:
    :class:`LoraProduct` sends the gradient back through the mask itself."""
    global _last_dropped
    ref, dropped, keep = _last_dropped
    if ref is not None and ref() is x and dropped.shape == x.shape:
        return dropped, keep
    keep = dropout_mask(x, p)
    dropped = x.detach() * keep
    _last_dropped = (weakref.ref(x, _forget), dropped, keep)
    return dropped, keep


class LoraLinear(nn.Module):
    """A frozen linear layer (``base_layer``, tagtune's :class:`~tagtune.models.packed.Linear`)
    with a LoRA adapter of rank ``r``: ``lora_A.default`` (r, in) and ``lora_B.default`` (out, r),
    PEFT's names and initialisation (A as nn.Linear initialises, B zero, so training starts from
    the base layer), scaled by ``alpha / r``, with ``dropout`` on the adapter's input."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        super().__init__()
        self.base_layer = base
        self.lora_A = nn.ModuleDict({ADAPTER: nn.Linear(base.in_features, r, bias=False)})
        self.lora_B = nn.ModuleDict({ADAPTER: nn.Linear(r, base.out_features, bias=False)})
        nn.init.zeros_(self.lora_B[ADAPTER].weight)
        self.lora_A[ADAPTER].to(base.weight.device)
        self.lora_B[ADAPTER].to(base.weight.device)
        self.r, self.alpha, self.dropout = r, float(alpha), float(dropout)
        self.scaling = self.alpha / r

    def forward(self, x):
        base = self.base_layer
        lowp = getattr(base, "lowp", None)
        weight = lowp if lowp is not None and x.dtype == lowp.dtype and not base.weight.requires_grad else base.weight
        if weight.dtype != x.dtype:  # a layer outside mixed precision given another dtype: as nn.Linear would fail
            return base(x) + self.scaling * F.linear(F.linear(x, self.lora_A[ADAPTER].weight.to(x.dtype)),
                                                     self.lora_B[ADAPTER].weight.to(x.dtype))
        dropped, keep = shared_dropout(x, self.dropout) if self.training and self.dropout > 0 else (None, None)
        return LoraProduct.apply(x, weight, base.bias, self.lora_A[ADAPTER].weight, self.lora_B[ADAPTER].weight,
                                 self.scaling, dropped, keep)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the adapter folded into its weight (W + scaling B A, in fp32)."""
        base = self.base_layer
        delta = self.lora_B[ADAPTER].weight.double() @ self.lora_A[ADAPTER].weight.double()
        base.weight.copy_((base.weight.double() + self.scaling * delta).to(base.weight.dtype))
        if getattr(base, "lowp", None) is not None:
            base.lowp.copy_(base.weight)
        return base


# ---------------------------------------------------------------------------------------------
# Adding, counting, merging


def inject(model, names: list[str], r: int, alpha: float, dropout: float) -> None:
    """Put a :class:`LoraLinear` around each linear layer ``names`` (tagtune's full module names) of ``model``."""
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, LoraLinear(getattr(owner, child), r, alpha, dropout))


def add_adapters(model, r: int, alpha: float, dropout: float, targets: list[str]) -> None:
    """Wrap the ``targets`` of every layer of ``model`` (a TokenClassifier) with LoRA adapters of
    rank ``r``, scaled by ``alpha / r``, with ``dropout`` on their input; then only the adapters
    and the heads (:data:`HEADS`) train."""
    inject(model, module_names(model, targets), r, alpha, dropout)
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name or name.startswith(tuple(h + "." for h in HEADS))


def lora_layers(model) -> dict[str, LoraLinear]:
    """{tagtune's module name: LoRA layer} of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def has_adapters(model) -> bool:
    """Whether ``model`` has LoRA layers."""
    return any(isinstance(m, LoraLinear) for m in model.modules())


def trainable_state(model) -> dict[str, torch.Tensor]:
    """What a checkpoint of ``model`` needs: with adapters, the weights that train (the rest is the
    base model's, loaded again on resume); else the whole state dict."""
    if not has_adapters(model):
        return model.state_dict()
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def parameter_line(model, beside: torch.nn.Module | None, r: int) -> str:
    """"LoRA r=16: 0.29M of 22.9M parameters train (1.3%)", counting a CRF's or span head's."""
    params = [*model.parameters(), *(beside.parameters() if beside is not None else [])]
    total = sum(p.numel() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    return f"LoRA r={r}: {_count(trained)} of {_count(total)} parameters train ({100 * trained / total:.1f}%)"


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 10_000 else f"{n:,}"


def merge_adapters(model):
    """Fold each adapter into its layer's weight and put the plain layer back: ``model`` becomes a
    plain TokenClassifier, returned."""
    for name, layer in lora_layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.merged())
    for p in model.parameters():
        p.requires_grad = True
    return model


# ---------------------------------------------------------------------------------------------
# The adapter folder


def adapter_weights(model) -> dict[str, torch.Tensor]:
    """The adapters and heads under PEFT's keys: ``base_model.model.`` + transformers' name."""
    encoder_only = model.classifier is None
    out = {}
    for name, layer in lora_layers(model).items():
        theirs = hf_name(name, model.config, encoder_only)
        out[f"{PEFT_PREFIX}{theirs}.lora_A.weight"] = layer.lora_A[ADAPTER].weight
        out[f"{PEFT_PREFIX}{theirs}.lora_B.weight"] = layer.lora_B[ADAPTER].weight
    heads = {k: v for k, v in model.state_dict().items() if k.startswith(tuple(h + "." for h in HEADS))}
    out.update({PEFT_PREFIX + k: v for k, v in to_checkpoint_names(heads, model.config, encoder_only).items()})
    return out


def stored_base(base: str) -> str:
    """``base`` as adapter_config.json keeps it: a local folder as its absolute path, so that the
    adapter folder loads from any working directory; a Hub id as given."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.is_dir() else str(base)


def check_not_adapters(directory: Path, given: str) -> None:
    """A one-line error when ``directory`` (``given`` as --model) is a LoRA adapter folder, which a
    run cannot start from: it holds no base weights."""
    if is_adapter_folder(directory):
        base = read_adapter_config(directory).base_model_name_or_path
        raise TagtuneError(f"{given}: a LoRA adapter folder, which holds no base weights to train from; merge it "
                           f"first (tagtune merge {given} MERGED) and train --model MERGED, or train on its base "
                           f"model ({base}) again")


def adapter_config(model, base: str) -> dict:
    """adapter_config.json of ``model``'s adapters, naming ``base`` as the base model: PEFT's
    LoraConfig fields that say what was trained (PEFT gives the others their defaults)."""
    layers = lora_layers(model)
    first = next(iter(layers.values()))
    encoder_only = model.classifier is None
    heads = [model.config.arch.classifier.rstrip(".")] if not encoder_only else []
    heads += ["head"] if model.head is not None and not encoder_only else []
    return {
        "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION" if encoder_only else "TOKEN_CLS",
        "base_model_name_or_path": stored_base(base), "r": first.r, "lora_alpha": first.alpha,
        "lora_dropout": first.dropout, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "target_modules": sorted(hf_name(name, model.config, encoder_only) for name in layers),
        "modules_to_save": sorted(heads) or None,
    }


def write_adapter_files(model, tokenizer, directory: Path, base: str,
                        extra_files: dict[str, str | bytes] | None = None) -> None:
    """Write the adapter folder of ``model`` (trained from ``base``, a Hub id or a path as given)
    into the existing ``directory``: adapter_config.json, adapter_model.safetensors, the tokenizer
    files, ``extra_files`` and config.json (the labels), config.json last."""
    files = dict(extra_files or {})
    files[ADAPTER_CONFIG_FILE] = json.dumps(adapter_config(model, base), indent=2, sort_keys=True) + "\n"
    directory = Path(directory)
    write_safetensors(directory / ADAPTER_WEIGHTS_FILE, adapter_weights(model), {"format": "pt"})
    if tokenizer is not None:
        try:
            tokenizer.save(directory)
        except OSError as e:
            raise write_error(e.filename or directory, e) from None
    for name, content in files.items():
        atomic_write(directory / name, content)
    config = model.config.to_hf_dict(model.classifier is None)
    atomic_write(directory / "config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG_FILE).is_file()


def read_adapter_config(folder: Path):
    """PEFT's LoraConfig of the adapter folder ``folder``; a one-line error when it is not one."""
    path = Path(folder) / ADAPTER_CONFIG_FILE
    try:
        from peft import LoraConfig
    except ModuleNotFoundError:
        raise TagtuneError(f"{folder}: a LoRA adapter folder, whose {ADAPTER_CONFIG_FILE} PEFT reads; "
                           "pip install 'tagtune[lora]'") from None
    try:
        config = LoraConfig.from_pretrained(str(folder))
    except Exception as e:  # JSONDecodeError, TypeError of an unknown field, ValueError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TagtuneError(f"{path}: not a LoRA adapter config PEFT reads ({first})") from None
    if str(config.peft_type).rsplit(".", 1)[-1] != "LORA":
        raise TagtuneError(f"{path}: a {config.peft_type} adapter; tagtune loads LoRA adapters only")
    if not config.base_model_name_or_path:
        raise TagtuneError(f"{path}: names no base model (base_model_name_or_path); add the base model's Hub id or path")
    return config


def load_adapter_model(folder: str | os.PathLike, merge: bool = True):
    """The tagger of the adapter folder ``folder``: its base model (a path, or a Hub id found in
    the HF cache or downloaded) with the folder's labels, adapters and classifier; with
    ``merge``, the adapters folded into the weights (a plain TokenClassifier). Returns (model,
    LoadReport of the base)."""
    folder = Path(folder)
    lora = read_adapter_config(folder)
    base = lora.base_model_name_or_path
    own = read_config(folder)
    labels = own.labels
    try:
        resolve(base)
    except TagtuneError as e:
        raise TagtuneError(f"{folder}: its base model {base} cannot be found ({e}); adapter_config.json names it "
                           "in base_model_name_or_path") from None
    model, report = load_model(base, labels=labels, attention=attention_of(folder))
    if not labels:
        model.head = None
    weights = read_safetensors(folder / ADAPTER_WEIGHTS_FILE) if (folder / ADAPTER_WEIGHTS_FILE).is_file() else None
    if weights is None:
        raise TagtuneError(f"{folder}: {ADAPTER_CONFIG_FILE} but no {ADAPTER_WEIGHTS_FILE}")
    targets = sorted(lora.target_modules) if not isinstance(lora.target_modules, str) else []
    names = [tagtune_name(t, model.config) for t in targets]
    missing = [t for t, n in zip(targets, names) if not isinstance(_module(model, n), torch.nn.Linear)]
    if not names or missing:
        raise TagtuneError(f"{folder / ADAPTER_CONFIG_FILE}: target_modules must list linear layers of the "
                           f"{model.config.model_type} base model by full name; "
                           f"{', '.join(missing[:4]) if missing else 'it lists none'}")
    inject(model, names, lora.r, lora.lora_alpha, 0.0)
    _load_adapter_weights(model, weights, folder)
    model.eval()
    return (merge_adapters(model) if merge else model), report


def _module(model, name: str):
    """The submodule ``name`` of ``model``, or None."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _load_adapter_weights(model, weights: dict[str, torch.Tensor], folder: Path) -> None:
    """Copy adapter_model.safetensors into ``model``: every adapter and head weight present, none
    unknown, each of the model's shape (a one-line error naming the first that is not)."""
    path = folder / ADAPTER_WEIGHTS_FILE
    encoder_only = model.classifier is None
    expected = {}
    for name, layer in lora_layers(model).items():
        theirs = PEFT_PREFIX + hf_name(name, model.config, encoder_only)
        expected[theirs + ".lora_A.weight"] = layer.lora_A[ADAPTER].weight
        expected[theirs + ".lora_B.weight"] = layer.lora_B[ADAPTER].weight
    heads = {k: p for k, p in model.named_parameters() if k.startswith(tuple(h + "." for h in HEADS))}
    expected.update({PEFT_PREFIX + k: p for k, p in to_checkpoint_names(heads, model.config, encoder_only).items()})
    unexpected = sorted(set(weights) - set(expected))
    missing = sorted(set(expected) - set(weights))
    if unexpected or missing:
        which, keys = ("unexpected", unexpected) if unexpected else ("missing", missing)
        raise TagtuneError(f"{path}: {which} weights {', '.join(keys[:4])}" + (" and more" if len(keys) > 4 else ""))
    with torch.no_grad():
        for key, p in expected.items():
            if tuple(weights[key].shape) != tuple(p.shape):
                raise TagtuneError(f"{path}: {key} has shape {tuple(weights[key].shape)}, the model's is "
                                   f"{tuple(p.shape)} (rank or labels differ from adapter_config.json and config.json)")
            p.copy_(weights[key])


# ---------------------------------------------------------------------------------------------
# Merging a folder


MERGED_EXTRAS = (SETTINGS_FILE, CRF_FILE, SPAN_HEAD_FILE, "README.md")
"""The adapter folder's files a merged tagger keeps as they are (its weights and config.json are new)."""


def merge_folder(adapter_dir: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``out``: the tagger of the adapter folder ``adapter_dir`` (a path or Hub id) with its
    adapters folded into the base weights, as a plain tagger folder (config.json,
    model.safetensors, tokenizer, tagtune.json, crf.json or span_head.safetensors, model card),
    which needs neither PEFT nor the base model. Written beside ``out`` and renamed into place;
    an existing ``out`` is replaced only with ``overwrite``."""
    from tagtune.text.tokenizer import load_tokenizer

    folder = resolve(adapter_dir)
    if not is_adapter_folder(folder):
        raise TagtuneError(f"{adapter_dir}: not a LoRA adapter folder (no {ADAPTER_CONFIG_FILE}); "
                           "merge takes a folder that tagtune train --lora wrote")
    out = Path(out)
    if out.exists() and out.resolve() == folder.resolve():
        raise TagtuneError(f"{out}: is the adapter folder itself; merge into another folder")
    if out.exists() and not overwrite:
        raise TagtuneError(f"{out}: already exists (pass --overwrite to replace it)")
    model, report = load_adapter_model(folder)
    tokenizer = load_tokenizer(folder)
    extras = {name: (folder / name).read_bytes() for name in MERGED_EXTRAS if (folder / name).is_file()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = new_folder_beside(out)
    try:
        write_model_files(model, tokenizer, tmp, extras, report.pooler)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out
