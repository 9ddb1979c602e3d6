"""Several processes under torchrun: the process group and the few collectives tagtune needs.

``torchrun --nproc-per-node N -m tagtune train ...`` (or ``predict``) starts N copies of tagtune
with RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in their environment; tagtune
joins them into one process group (NCCL between GPUs, gloo on CPUs: :func:`backend`). Without
torchrun (WORLD_SIZE unset or 1) every helper here is a no-op and torch is not even imported, so
the ONNX backend's prediction path can use the same code without torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tagtune.errors import TagtuneError


@dataclass
class Group:
    """This process's place among ``world`` processes; rank 0 is the one that writes files."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            import torch

            torch.distributed.barrier()

    def sum(self, values: list[float], device) -> list[float]:
        """Element-wise sum of ``values`` over all processes."""
        if not self.active:
            return list(values)
        import torch

        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj) -> list:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.active:
            return [obj]
        import torch

        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def on_main(self, fn, *args):
        """Run ``fn`` on rank 0 only and hand its result to all; a TagtuneError it raises is
        raised on every process, so all stop with the same message instead of waiting."""
        result, error = None, None
        if self.main:
            try:
                result = fn(*args)
            except TagtuneError as e:
                error = str(e)
        if self.active:
            import torch

            box = [(result, error)]
            torch.distributed.broadcast_object_list(box, src=0)
            result, error = box[0]
        if error is not None:
            raise TagtuneError(error)
        return result


def from_environment() -> Group:
    """The group torchrun describes in the environment, joined; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group()
    import torch

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_available():
        raise TagtuneError("this torch build has no torch.distributed, so it cannot run under torchrun")
    if not torch.distributed.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        torch.distributed.init_process_group(backend(torch.cuda.is_available()))
    return Group(rank, world, local_rank)


def backend(cuda: bool) -> str:
    """The process group's backend: gloo for CPU tensors, and where there is ``cuda``, NCCL for
    CUDA tensors beside it (``--device cpu`` on a GPU machine reduces CPU tensors, which NCCL
    cannot)."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def device_for(group: Group, requested: str | None):
    """The torch.device of this process: ``requested`` ("cpu", "cuda"), else CUDA when available;
    under torchrun each process takes the GPU of its local rank."""
    import torch

    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and group.active and device.index is None:
        device = torch.device("cuda", group.local_rank)
    return device


def leave(group: Group) -> None:
    if group.active:
        import torch

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
