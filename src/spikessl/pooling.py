"""Max-pooling on spikes, fused with the LIF layer that emits them.

A pooled unit spikes when any of its afferents spikes (paper section IV), i.e. ``max`` over
each k x k window of the spike map. On float32 CPU tensors the LIF time loop and the pooling
run in one C kernel (``spikessl._native``): the full-size spike map is never stored, and
backward recomputes which afferent won each window from the saved membrane, routing the
gradient exactly as ``F.max_pool2d`` does (to the first maximum). Elsewhere it is simply
``F.max_pool2d(LIF(current))``.

Memory: with ``overwrite`` the kernel writes the membrane over the input current (which the
caller no longer needs: in the encoder it is a batch norm's output, which its backward does
not use), and backward writes the input gradient over the membrane as it consumes it, so a
layer keeps one full-size float tensor from forward to backward instead of three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spikessl import _native
from spikessl.neurons import LIF, lif_multistep


class _LIFPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, current, beta, threshold, slope, T, constant, detach_reset, k, overwrite, fmt):
        ctx.dtype = current.dtype
        given = current
        current = current.float()  # bf16/fp16 inputs: the membrane integrates in float32
        b = float(beta.clamp(0.0, 1.0))
        # A constant input is T times smaller than the membrane trace: keep it instead and
        # recompute the membranes in backward (exactly: the same kernel does both).
        keep = not constant
        # The membrane may replace the input when the caller allows it, or when the input is
        # float() 's own copy; the gradient then replaces the membrane in backward.
        in_place = keep and (overwrite or current is not given)
        pooled, mem, count = _native.pool_forward(
            current, T, constant, b, threshold, k, keep, in_place, fmt
        )
        rate = current.new_tensor(count / (T * current.numel() if constant else current.numel()))
        ctx.mark_non_differentiable(rate)
        if in_place and current is given:
            # anything else that saved this tensor for backward now fails loudly
            torch.autograd.graph.increment_version(current)
        ctx.save_for_backward(mem if keep else current, beta)
        ctx.config = (threshold, slope, T, constant, detach_reset, b, k, keep, in_place)
        return pooled.to(ctx.dtype), rate

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pooled, _grad_rate):
        saved, beta = ctx.saved_tensors
        threshold, slope, T, constant, detach_reset, b, k, keep, in_place = ctx.config
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
            in_place,
        )
        if in_place:  # the membrane is gone: a second backward (retain_graph) must fail
            torch.autograd.graph.increment_version(saved)
        if want_beta and not 0.0 <= float(beta) <= 1.0:
            grad_beta = grad_beta * 0.0
        return grad.to(ctx.dtype), grad_beta, None, None, None, None, None, None, None, None


def lif_maxpool(
    lif: LIF,
    current: Tensor,
    pool: int,
    T: int,
    constant: bool = False,
    backend: str = "auto",
    overwrite: bool = False,
    memory_format: torch.memory_format | None = None,
) -> tuple[Tensor, Tensor]:
    """``(max_pool(spikes of lif(current)), firing rate of lif)``, time folded into batch.

    ``current``: ``[T*B, C, H, W]`` (step t of image b at row ``t*B + b``), or with
    ``constant`` a ``[B, C, H, W]`` input held for T steps. Returns pooled spikes
    ``[T*B, C, H // pool, W // pool]`` (in ``memory_format``; by default that of ``current``)
    and the detached mean firing rate of the unpooled LIF layer. ``overwrite``: the fused
    kernel may reuse ``current``'s memory (its contents are then undefined; pass it only
    when nothing else reads ``current`` afterwards, e.g. a batch norm's output).
    """
    _check_pool_input(current, pool, T, constant)
    if backend != "eager" and _native.usable(current, dtypes=_native.FLOATS):
        return _LIFPoolFunction.apply(
            current,
            lif.beta,
            lif.threshold,
            lif.slope,
            T,
            constant,
            lif.detach_reset,
            pool,
            overwrite,
            memory_format,
        )
    B = current.shape[0] if constant else current.shape[0] // T
    seq = current if constant else current.unflatten(0, (T, B))
    spikes, _ = lif_multistep(
        seq, lif.beta, lif.threshold, lif.slope, T if constant else None, lif.detach_reset, backend
    )
    pooled = F.max_pool2d(spikes.flatten(0, 1), pool)  # (T*B, C, H', W')
    if memory_format is None and current.dim() == 4:
        channels_last = current.is_contiguous(memory_format=torch.channels_last)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if memory_format is not None:
        pooled = pooled.contiguous(memory_format=memory_format)
    return pooled, spikes.detach().mean()


def _check_pool_input(current: Tensor, pool: int, T: int, constant: bool) -> None:
    """A ``ValueError`` for what the fused kernel would otherwise drop or mis-shape."""
    if current.dim() != 4:
        raise ValueError(f"current must be [T*B, C, H, W] (or [B, C, H, W]), got {current.dim()}-D")
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T={T!r}: give the number of time steps, an int >= 1")
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool={pool!r}: give the pooling window, an int >= 1")
    n, _, h, w = current.shape
    if min(h, w) < pool:
        raise ValueError(f"a {pool}x{pool} pooling window does not fit a {h}x{w} map")
    if not constant and n % T:
        raise ValueError(
            f"{n} rows are not T={T} steps of a batch: a time-varying current has T*B rows "
            "(step t of image b at row t*B + b)"
        )
