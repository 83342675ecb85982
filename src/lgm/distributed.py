"""Data-parallel distillation over processes started by torchrun (torch.distributed; no launcher of ours).

    torchrun --nproc-per-node N -m lgm distill ...        (multi-node: torchrun's --nnodes/--rdzv-* flags)

Every process holds the whole synthetic set and draws the same head, the
same real indices and the same view seeds (identical generators). Per step:

1. each process renders all synthetic images and takes its contiguous shard
   of the N*A synthetic views and of the real batch;
2. the closed-form head-gradient *sums* of its shards are all-reduced, so every
   process holds the exact full-batch g_real and g_syn and the same meta loss;
3. each process backpropagates the meta loss through its own views only
   (the loss depends on them only through their head-gradient sums, whose
   gradient is known once g_syn is);
4. the parameter gradients are all-reduced (one flat buffer) and every process
   takes the same Adam step.

The result equals the single-process step up to floating-point summation
order. Only rank 0 writes the run directory. gloo on CPU, nccl on CUDA (one
GPU per process: cuda:LOCAL_RANK).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist

from lgm.errors import LgmError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place in the group; ``Shard()`` is the single-process case (no communication)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        """This process's contiguous slice [start, stop) of n items (sizes differ by at most one)."""
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the group, in place; returns it."""
        if self.active:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_grads(self, params: list[torch.Tensor]) -> None:
        """Sum the gradients of ``params`` over the group (one collective over a flat buffer)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = flat[offset: offset + k].view_as(p).clone()
            offset += k

    def broadcast_params_(self, params: list[torch.Tensor]) -> None:
        """Make every process hold rank 0's values (after init, resume and pyramid growth)."""
        if self.active:
            with torch.no_grad():
                for p in params:
                    dist.broadcast(p.data, src=0)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when ``flag`` is true on any (a host sync: call it sparingly)."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def run_on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, its (picklable) result sent to every process; an LgmError stops them all."""
        if not self.active:
            return fn()
        box: list = [None, None]
        error: LgmError | None = None
        if self.is_main:
            try:
                box = [fn(), None]
            except LgmError as e:
                error, box = e, [None, str(e)]
        dist.broadcast_object_list(box, src=0)
        if box[1] is not None:
            if error is not None:
                raise error
            raise LgmError(f"rank 0 failed: {box[1]}")
        return box[0]

    def build_main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on rank 0, then on the others (which find what rank 0 wrote, e.g. a per-run cache)."""
        if not self.active:
            return fn()
        built: list = []

        def on_main() -> bool:
            built.append(fn())
            return True

        self.run_on_main(on_main)  # the others wait here; an error on rank 0 reaches them
        return built[0] if self.is_main else fn()


SINGLE = Shard()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device_name: str) -> tuple[Shard, str]:
    """Join the process group torchrun describes (env://); returns the shard and the device to use.

    Outside torchrun (WORLD_SIZE unset or 1) nothing happens: ``(SINGLE, device_name)``.
    """
    if not launched_by_torchrun():
        return SINGLE, device_name
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise LgmError(f"--device {device_name} under torchrun but CUDA is not available; use --device cpu")
        if local >= torch.cuda.device_count():
            raise LgmError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) are visible; "
                           "start at most that many processes per node")
        torch.cuda.set_device(local)
        device_name = f"cuda:{local}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Shard(rank, world, local), device_name


def shutdown(shard: Shard) -> None:
    if shard.active and dist.is_initialized():
        dist.destroy_process_group()
