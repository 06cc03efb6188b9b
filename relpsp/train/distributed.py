"""Data parallel over ``torch.distributed`` (see the package docstring): this process's rank, reductions of
plain numbers over the ranks, this rank's slice of a batch and the gradient-summing DDP hook. Every
function is the identity (or nothing) in a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DistInfo", "all_reduce", "barrier", "dist_info", "init_distributed", "shard", "sum_gradients_hook"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "cpu") -> bool:
    """Under ``torchrun`` (``WORLD_SIZE > 1``), initialise the default process group from the environment
    (gloo on CPU, nccl on CUDA, after selecting GPU ``LOCAL_RANK``) unless one exists. Return whether this
    call created it (the caller then ends it with ``torch.distributed.destroy_process_group()``)."""
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return False
    if device.startswith("cuda"):
        torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return True


def dist_info() -> DistInfo:
    """Rank and world size of the initialised process group, or a single process.

    Raises ``ValueError`` when ``WORLD_SIZE > 1`` is set but no group exists: each process would then
    train alone and they would overwrite each other's files.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return DistInfo(rank, world, _env_int("LOCAL_RANK", rank), _env_int("LOCAL_WORLD_SIZE", world))
    if _env_int("WORLD_SIZE", 1) > 1:
        raise ValueError(
            "WORLD_SIZE > 1 (torchrun?) but no torch.distributed process group is initialised; "
            "run `relpsp train` or call relpsp.train.init_distributed() before fit()"
        )
    return DistInfo()


def all_reduce(values: list[float], ctx: DistInfo, device: str, op: str = "sum") -> list[float]:
    """Element-wise sum / max / min of ``values`` over the ranks (float64; identity on one process)."""
    if ctx.world_size == 1:
        return list(values)
    import torch.distributed as dist

    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=ops[op])
    return t.tolist()


def barrier(ctx: DistInfo) -> None:
    if ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def shard(n: int, ctx: DistInfo) -> tuple[int, int]:
    """Bounds of this rank's contiguous slice of ``n`` items (sizes differ by at most one)."""
    return ctx.rank * n // ctx.world_size, (ctx.rank + 1) * n // ctx.world_size


def sum_gradients_hook(_state, bucket):  # no annotations: DDP checks them against its own types
    """DDP communication hook: sum the gradients over the ranks (the default hook averages them). Each
    rank's loss is already its share of the global mean, so the sum is the global gradient."""
    import torch.distributed as dist

    fut = dist.all_reduce(bucket.buffer(), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])
