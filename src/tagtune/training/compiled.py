"""torch.compile for long training runs (``tagtune train --compile``), off by default.

Each encoder layer is compiled by TorchInductor with static shapes (``dynamic=False``): every
token count a batch has compiles once, and the batcher fills training batches to a multiple of
tagtune.data.batching.SHAPE_MULTIPLE tokens, so a run sees few of them. Attention stays eager:
tagtune.models.packed.packed_attention decides on the host, from the packing's lengths and runs
of equal lengths (Packing.runs, max_seqlen), which change with every batch; traced, each batch
would compile anew. It is marked as a graph break instead, so a layer compiles as the products,
dropout, residuals, norms and activations before and after it, and guards on nothing but the
token count (and dtype). What is left inside a layer is elementwise work that Inductor fuses
(dropout masks, residual adds, LayerNorm, GELU); the matrix products run as oneDNN's, as eager.

Dropout draws its random numbers with PyTorch's own generator (Inductor's ``fallback_random``),
so a compiled run draws the masks an eager run with the same seed draws: same losses up to
rounding, and a resumed run continues the same stream.

Compiling costs tens of seconds per new shape on a small CPU, in the first batches of the run;
:class:`Compiled` counts the shapes and the seconds. torch._dynamo (some 70 MB and a second to
import) is imported only here, when a run asks for compiling. Where torch.compile cannot run (no
C++ compiler, an unsupported platform or Python), :func:`compile_model` warns in one line and the
model trains eager.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field

import torch

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
"""torch.compile modes that make sense for training here ("reduce-overhead" is CUDA graphs)."""

RECOMPILE_LIMIT = 64
"""Compiled versions per layer before dynamo gives up and runs it eager: one per batch shape (the
default, 8, is below the token counts a bucketed epoch can fill to)."""

_TIMERS = ("_compile.compile_inner", "compile_fx.<locals>.bw_compiler")
"""torch._dynamo.utils.compilation_time_metrics entries that hold the compile time: dynamo's
tracing with the forward graph's compile, and each backward graph's (compiled at its first use)."""


@dataclass(eq=False)
class Compiled:
    """What :func:`compile_model` did: ``active`` (compiled) or ``reason`` (why not), and, read
    while the model trains, the batch shapes its layers have met and the seconds spent compiling."""

    active: bool
    reason: str | None = None
    shapes: set = field(default_factory=set)
    """(tokens, dtype) of each training batch the encoder has run: a compiled layer's versions."""
    _before: float = 0.0

    @property
    def seconds(self) -> float:
        """Seconds spent compiling since :func:`compile_model` (tracing, Inductor's code generation and
        the C++ compiler's), forward and backward."""
        return compile_seconds() - self._before if self.active else 0.0

    def eager(self):
        """A context in which the compiled layers run eager: for dev evaluation, whose batch shapes
        would each compile again (no gradients, eval mode) for a few passes."""
        return torch.compiler.set_stance("force_eager") if self.active else contextlib.nullcontext()

    def line(self) -> str:
        """``compiled: 3 shapes, 41.2 s`` for the run's log line; "" when not compiled."""
        if not self.active:
            return ""
        shapes = len(self.shapes)
        return f"compiled: {shapes} shape{'s' * (shapes != 1)}, {self.seconds:.1f} s"


def compile_seconds() -> float:
    """Seconds spent compiling in this process so far (0 before torch._dynamo is imported)."""
    if "torch._dynamo" not in sys.modules:
        return 0.0
    from torch._dynamo.utils import compilation_time_metrics

    return sum(sum(compilation_time_metrics.get(name, ())) for name in _TIMERS)


def unavailable() -> str | None:
    """Why torch.compile cannot compile for the CPU here, or None when it can (checked without
    importing torch._dynamo)."""
    if sys.platform == "win32":
        return "torch.compile's CPU code generation is not set up on Windows"
    compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if compiler is None or not shutil.which(compiler.split()[0]):
        return f"no C++ compiler found ({compiler or 'g++, c++ or clang++'}); install one or set CXX"
    return None


def compile_model(model: torch.nn.Module, mode: str = "default") -> Compiled:
    """Compile each layer of ``model.encoder.layer`` in place with torch.compile (``mode``, one of
    COMPILE_MODES; static shapes), attention left eager. Call it once the model is on its device
    and before the optimizer and DistributedDataParallel. Returns a :class:`Compiled` whose
    ``shapes`` and ``seconds`` fill in as the model runs; where torch.compile is unavailable,
    warns in one line and returns an inactive one (the model is left eager)."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    reason = unavailable()
    if reason is None:
        try:
            import torch._dynamo
            import torch._inductor.config
        except Exception as e:  # a Python newer than this torch's dynamo supports, a broken install
            reason = f"torch.compile cannot be imported ({type(e).__name__}: {e})"
        else:
            if not torch._dynamo.is_dynamo_supported():
                reason = f"torch.compile does not support Python {sys.version.split()[0]} in torch {torch.__version__}"
    if reason is not None:
        warnings.warn(f"--compile: {reason}; training runs eager", stacklevel=2)
        return Compiled(active=False, reason=reason)

    torch._inductor.config.fallback_random = True  # dropout's masks from torch's generator, as eager
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    break_at_attention()
    done = Compiled(active=True, _before=compile_seconds())
    model.encoder.register_forward_pre_hook(
        lambda encoder, args: done.shapes.add((args[0].shape[0], args[0].dtype)) if encoder.training else None)
    for layer in model.encoder.layer:
        layer.compile(dynamic=False, mode=None if mode == "default" else mode)
    return done


def break_at_attention() -> None:
    """Make the family modules' ``packed_attention`` a graph break (torch.compiler.disable): it
    runs eager, as it would uncompiled, and compiled layers do not guard on the packing.
    tagtune.models.packed keeps its own."""
    from tagtune.models import packed

    eager = torch.compiler.disable(packed.packed_attention)
    for name, module in list(sys.modules.items()):
        if name.startswith("tagtune.models.") and getattr(module, "packed_attention", None) is packed.packed_attention:
            if module is not packed:
                module.packed_attention = eager
