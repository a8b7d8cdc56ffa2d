"""Max-pooling on spikes, fused with the LIF layer that emits them.

A pooled unit spikes when any of its afferents spikes (paper section IV), i.e. ``max`` over
each k x k window of the spike map. On float32 CPU tensors the LIF time loop and the pooling
run in one C kernel (``spikessl._native``): the full-size spike map is never stored, and
backward recomputes which afferent won each window from the saved membrane, routing the
gradient exactly as ``F.max_pool2d`` does (to the first maximum). Elsewhere it is simply
``F.max_pool2d(LIF(current))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spikessl import _native
from spikessl.neurons import LIF, lif_multistep


class _LIFPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, beta, threshold, slope, T, constant, detach_reset, k):
        ctx.dtype = current.dtype
        current = current.float()  # bf16/fp16 inputs: the membrane integrates in float32
        b = float(beta.clamp(0.0, 1.0))
        # A constant input is T times smaller than the membrane trace: keep it instead and
        # recompute the membranes in backward (exactly: the same kernel does both).
        keep = not constant
        pooled, mem, count = _native.pool_forward(current, T, constant, b, threshold, k, keep)
        rate = current.new_tensor(count / (T * current.numel() if constant else current.numel()))
        ctx.mark_non_differentiable(rate)
        ctx.save_for_backward(mem if keep else current, beta)
        ctx.config = (threshold, slope, T, constant, detach_reset, b, k, keep)
        return pooled.to(ctx.dtype), rate

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pooled, _grad_rate):
        saved, beta = ctx.saved_tensors
        threshold, slope, T, constant, detach_reset, b, k, keep = ctx.config
        want_beta = ctx.needs_input_grad[1]
        grad, grad_beta = _native.pool_backward(
            saved,
            grad_pooled.float(),
            T,
            k,
            constant,
            detach_reset,
            b,
            threshold,
            slope,
            want_beta,
            keep,
        )
        if want_beta and not 0.0 <= float(beta) <= 1.0:
            grad_beta = grad_beta * 0.0
        return grad.to(ctx.dtype), grad_beta, None, None, None, None, None, None


def lif_maxpool(
    lif: LIF,
    current: Tensor,
    pool: int,
    T: int,
    constant: bool = False,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """``(max_pool(spikes of lif(current)), firing rate of lif)``, time folded into batch.

    ``current``: ``[T*B, C, H, W]`` (step t of image b at row ``t*B + b``), or with
    ``constant`` a ``[B, C, H, W]`` input held for T steps. Returns pooled spikes
    ``[T*B, C, H // pool, W // pool]`` (same memory format as ``current``) and the detached
    mean firing rate of the unpooled LIF layer.
    """
    if backend != "eager" and _native.usable(current, dtypes=_native.FLOATS):
        return _LIFPoolFunction.apply(
            current, lif.beta, lif.threshold, lif.slope, T, constant, lif.detach_reset, pool
        )
    B = current.shape[0] if constant else current.shape[0] // T
    seq = current if constant else current.unflatten(0, (T, B))
    spikes, _ = lif_multistep(
        seq, lif.beta, lif.threshold, lif.slope, T if constant else None, lif.detach_reset, backend
    )
    pooled = F.max_pool2d(spikes.flatten(0, 1), pool)  # (T*B, C, H', W')
    return pooled, spikes.detach().mean()
