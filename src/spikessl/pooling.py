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
    def forward(ctx, current, beta, threshold, slope, steps, detach_reset, k):
        b = float(beta.clamp(0.0, 1.0))
        pooled, mem, count = _native.pool_forward(current, steps, b, threshold, k)
        rate = current.new_tensor(count / mem.numel())
        ctx.mark_non_differentiable(rate)
        ctx.save_for_backward(mem, beta)
        ctx.config = (threshold, slope, steps is not None, detach_reset, b, k)
        return pooled, rate

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pooled, _grad_rate):
        mem, beta = ctx.saved_tensors
        threshold, slope, constant, detach_reset, b, k = ctx.config
        want_beta = ctx.needs_input_grad[1]
        grad, grad_beta = _native.pool_backward(
            mem,
            grad_pooled.contiguous(),
            k,
            constant,
            detach_reset,
            b,
            threshold,
            slope,
            want_beta,
        )
        if want_beta and not 0.0 <= float(beta) <= 1.0:
            grad_beta = grad_beta * 0.0
        return grad, grad_beta, None, None, None, None, None


def lif_maxpool(
    lif: LIF, current: Tensor, pool: int, steps: int | None = None, backend: str = "auto"
) -> tuple[Tensor, Tensor]:
    """``(max_pool(spikes of lif(current)), firing rate of lif)``.

    ``current``: ``[T, B, C, H, W]``, or ``[B, C, H, W]`` held constant for ``steps`` steps.
    Returns pooled spikes ``[T, B, C, H // pool, W // pool]`` and the (detached) mean
    firing rate of the unpooled LIF layer.
    """
    if backend != "eager" and _native.usable(current):
        return _LIFPoolFunction.apply(
            current, lif.beta, lif.threshold, lif.slope, steps, lif.detach_reset, pool
        )
    spikes, _ = lif_multistep(
        current, lif.beta, lif.threshold, lif.slope, steps, lif.detach_reset, backend
    )
    T, B = spikes.shape[:2]
    pooled = F.max_pool2d(spikes.flatten(0, 1), pool).unflatten(0, (T, B))
    return pooled, spikes.detach().mean()
