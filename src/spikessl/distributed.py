"""The device a run trains on (``resolve_device``), and multi-process training with
``torchrun``: one process per device, PyTorch's own engine.

    torchrun --nproc_per_node 4 -m spikessl pretrain --config paper-cifar10

Each process takes a disjoint slice of every global batch. What makes N processes with
batch B equal to one process with batch N*B: NT-Xent sees the latents of all processes
(gathered with the gradient flowing back through the gather), batch norm uses statistics
over the global batch (all-reduced, on any backend, CPU included), and
DistributedDataParallel averages the gradients. Rank 0 alone prints, writes metrics and
checkpoints.
"""

from __future__ import annotations

import inspect
import io
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn

# These autograd-aware collectives are the public ones; their suggested successors are
# private (torch.distributed._functional_collectives), so keep these and stay quiet.
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional", category=FutureWarning
)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """The ``device`` setting as a device: ``auto`` picks CUDA, then MPS, then the CPU."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = mps is not None and mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA GPU is visible; use device=cpu or auto")
    if name == "mps" and not has_mps:
        raise ValueError("device=mps but no Apple GPU (MPS) is available; use device=cpu or auto")
    return torch.device(name)


def setup(device: torch.device) -> World:
    """Join the process group that ``torchrun`` describes in the environment (if any)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    world = World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def is_main_process() -> bool:
    """Rank 0 of torchrun's process group, or the one process without it."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def shutdown(barrier: bool = True) -> None:
    """Leave the process group cleanly (an exiting process with live gloo threads aborts).
    ``barrier=False`` when the other processes may not get here (an error of this one)."""
    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def local_device(device: torch.device, world: World) -> torch.device:
    """Each process on its own GPU; CPU processes share the CPU."""
    return torch.device("cuda", world.local_rank) if device.type == "cuda" else device


def gather(z: Tensor, world: World) -> Tensor:
    """All processes' rows of ``z`` in rank order; gradients flow back to their owners."""
    if world.size == 1:
        return z
    return torch.cat(dist_nn.all_gather(z))


def broadcast_object(obj: object, world: World) -> object:
    """Rank 0's ``obj`` (picklable) on every process, e.g. a run directory named by the clock."""
    if world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: object, world: World) -> list:
    """Every process's ``obj`` (what a checkpoint may hold: tensors, numbers, strings...), in
    rank order, on every process. Sent as ``torch.save`` bytes: ``all_gather_object``'s own
    pickling of tensors fails in torch 2.13 ("UntypedStorage has no attribute 'dtype'")."""
    if world.size == 1:
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    out: list = [None] * world.size
    dist.all_gather_object(out, buffer.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in out]


def my_slice(batch: Tensor, world: World) -> Tensor:
    """This process's contiguous share of a global batch (in rank order, as ``gather``)."""
    if world.size == 1:
        return batch
    return torch.tensor_split(batch, world.size)[world.rank]


def _comm_device() -> torch.device:
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


class Traced(nn.Module):
    """``forward(x, T) -> (spike counts [, through head], firing rates)``: the module DDP wraps.

    The training losses need a model's ``trace`` (counts and per-layer firing rates), not
    its plain ``forward``; DDP synchronises gradients only for what runs through its own
    ``forward``, so this adapter makes the trace that forward.
    """

    def __init__(self, model: nn.Module, head: nn.Module | None = None) -> None:
        super().__init__()
        self.model, self.head = model, head if head is not None else nn.Identity()

    def forward(self, x: Tensor, T: int) -> tuple[Tensor, Tensor]:
        trace = self.model.trace(x, T)
        return self.head(trace.spikes.float().sum(0)), trace.rates


def data_parallel(module: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel under torchrun, else itself."""
    if world.size == 1:
        return module
    ids = [device.index] if device.type == "cuda" else None
    # batch-norm buffers are identical in every process already (global statistics); torch
    # 2.13 renamed broadcast_buffers (a FutureWarning), which older versions know alone
    ddp = nn.parallel.DistributedDataParallel
    name = "forward_sync_buffers"
    if name not in inspect.signature(ddp.__init__).parameters:
        name = "broadcast_buffers"
    return ddp(module, device_ids=ids, **{name: False})


def any_process(flag: bool, world: World) -> bool:
    """True on every process when ``flag`` is true on any (e.g. a signal arrived)."""
    if world.size == 1:
        return flag
    t = torch.tensor([float(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics cover the batch of every process.

    ``nn.SyncBatchNorm`` does this on GPUs only; this version all-reduces per-channel sums
    (accumulated in float64, so the statistics do not depend on how the batch is split)
    with autograd, on any backend, CPU/gloo included. Eval mode is plain batch norm.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        dims = [d for d in range(x.dim()) if d != 1]
        stats = torch.cat(
            [x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64)]
        )  # (2C,)
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float64)
        if dist.is_available() and dist.is_initialized():
            stats, count = dist_nn.all_reduce(stats), dist_nn.all_reduce(count)
        mean, sq = (stats / count).chunk(2)
        var = sq - mean * mean  # biased, as batch norm normalises with
        with torch.no_grad():
            n = count.item()
            self.num_batches_tracked += 1
            m = self.momentum if self.momentum is not None else 1 / float(self.num_batches_tracked)
            self.running_mean.mul_(1 - m).add_(mean.to(x.dtype), alpha=m)
            self.running_var.mul_(1 - m).add_((var * n / max(n - 1, 1)).to(x.dtype), alpha=m)
        shape = [1, -1] + [1] * (x.dim() - 2)
        inv = torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        y = (x - mean.to(x.dtype).view(shape)) * inv
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d in ``module`` by a ``GlobalBatchNorm`` with its state."""
    for name, child in module.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            new = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            new.load_state_dict(child.state_dict())
            state = [*child.parameters(), *child.buffers()]  # affine=False has no weight
            setattr(module, name, new.to(state[0].device if state else "cpu"))
        else:
            convert_batchnorm(child)
    return module


def all_mean(value: float, world: World) -> float:
    """Average of a Python number over processes (for logging only)."""
    if world.size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.item() / world.size
