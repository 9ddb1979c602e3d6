"""LoRA on tagtune's encoders through PEFT, and the adapter folder PEFT and transformers load.

LoRA (Hu et al., https://arxiv.org/abs/2106.09685) freezes the pretrained weights and trains, beside
each chosen linear layer W, two small matrices B (out, r) and A (r, in) whose product, scaled by
alpha / r, is added to W. PEFT (https://github.com/huggingface/peft) does the work: its
``inject_adapter_in_model`` wraps tagtune's own linear layers (tagtune.models.packed.Linear is an
nn.Linear), and its LoraLayer.merge folds the adapters into the weights.

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
import sys
from pathlib import Path

import torch

from tagtune.errors import TagtuneError
from tagtune.files import atomic_write, new_folder_beside, replace_folder, write_error
from tagtune.models.checkpoint import (LoadReport, load_model, read_safetensors, to_checkpoint_names,
                                       to_tagtune_names, write_model_files, write_safetensors)
from tagtune.models.config import read_config
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
# Adding, counting, merging


def add_adapters(model, r: int, alpha: float, dropout: float, targets: list[str]) -> None:
    """Wrap the ``targets`` of every layer of ``model`` (a TokenClassifier) with LoRA adapters of
    rank ``r``, scaled by ``alpha / r``, with ``dropout`` on their input; then only the adapters
    and the heads (:data:`HEADS`) train."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=module_names(model, targets))
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name or name.startswith(tuple(h + "." for h in HEADS))


def lora_layers(model) -> dict[str, torch.nn.Module]:
    """{tagtune's module name: PEFT's LoRA layer} of ``model``."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def has_adapters(model) -> bool:
    """Whether ``model`` has LoRA layers; asked of every model saved, so PEFT (which imports
    transformers) is not imported for it: a model has adapters only once PEFT is imported."""
    return "peft" in sys.modules and bool(lora_layers(model))


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
    """Fold each adapter into its layer's weight (PEFT's merge) and put the plain layer back:
    ``model`` becomes a plain TokenClassifier, returned."""
    for name, layer in lora_layers(model).items():
        layer.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
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


def adapter_config(model, base: str):
    """PEFT's LoraConfig of ``model``'s adapters, naming ``base`` as the base model."""
    from peft import LoraConfig

    layers = lora_layers(model)
    first = next(iter(layers.values()))
    encoder_only = model.classifier is None
    heads = [model.config.arch.classifier.rstrip(".")] if not encoder_only else []
    heads += ["head"] if model.head is not None and not encoder_only else []
    dropout = first.lora_dropout[ADAPTER]
    return LoraConfig(
        r=first.r[ADAPTER], lora_alpha=first.lora_alpha[ADAPTER], lora_dropout=getattr(dropout, "p", 0.0),
        target_modules=[hf_name(name, model.config, encoder_only) for name in layers],
        modules_to_save=heads or None, base_model_name_or_path=stored_base(base),
        task_type="FEATURE_EXTRACTION" if encoder_only else "TOKEN_CLS",
    )


def write_adapter_files(model, tokenizer, directory: Path, base: str,
                        extra_files: dict[str, str | bytes] | None = None) -> None:
    """Write the adapter folder of ``model`` (trained from ``base``, a Hub id or a path as given)
    into the existing ``directory``: adapter_config.json, adapter_model.safetensors, the tokenizer
    files, ``extra_files`` and config.json (the labels), config.json last."""
    files = dict(extra_files or {})
    settings = adapter_config(model, base).to_dict()
    settings.update(target_modules=sorted(settings["target_modules"]),
                    modules_to_save=sorted(settings["modules_to_save"] or []) or None)
    files[ADAPTER_CONFIG_FILE] = json.dumps(settings, indent=2, sort_keys=True) + "\n"
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
    from peft import LoraConfig

    path = Path(folder) / ADAPTER_CONFIG_FILE
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
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, target_modules=names), model,
                            adapter_name=ADAPTER)
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
