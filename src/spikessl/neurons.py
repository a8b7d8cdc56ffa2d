"""Leaky integrate-and-fire neurons, paper eq. (6), stepped through time in one place.

    U[t] = beta * U[t-1] + I[t] - theta * S[t-1]        (soft reset, U[-1] = S[-1] = 0)
    S[t] = H(U[t] - theta)                              (spike when U[t] > theta)
    dS/dU := k * sigmoid(k (U - theta)) * (1 - sigmoid(k (U - theta)))   (surrogate)

Symbols: I input current, U membrane potential, S spikes, beta leak factor in [0, 1],
theta firing threshold, k surrogate slope. Shapes: ``[T, B, ...]`` (time first).

The whole time loop lives in one ``autograd.Function``: forward saves the membrane trace
(the only thing backward needs: spikes are ``U > theta`` again), backward runs the adjoint
recurrence in reverse, so autograd stores one tensor per layer instead of a graph of
~5 ops per time step. Numerically it is the same computation as snntorch's
``Leaky(reset_mechanism="subtract")`` with ``surrogate.sigmoid`` (tested).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikessl import _native


def sigmoid_surrogate(u_minus_theta: Tensor, slope: float) -> Tensor:
    """k * sigmoid(kx) * (1 - sigmoid(kx)): finite for every x (no ratio of exponentials)."""
    sig = torch.sigmoid(slope * u_minus_theta)
    return slope * sig * (1.0 - sig)


def _eager_forward(current: Tensor, T: int, constant: bool, b: float, threshold: float):
    """Eq. (6) step by step in PyTorch: the reference path, and the one for GPUs and bf16."""
    mem = current.new_empty((T, *(current.shape if constant else current.shape[1:])))
    prev = torch.zeros_like(mem[0])  # U[t-1]
    for t in range(T):
        u = mem[t]
        # op by op in snntorch's order (mul, add, sub) so the membranes are bit-identical
        torch.mul(prev, b, out=u)
        u.add_(current if constant else current[t])
        u.sub_((prev > threshold).to(u.dtype), alpha=threshold)
        prev = u
    return (mem > threshold).to(current.dtype), mem


def _eager_backward(
    mem, grad_spikes, grad_mem, constant, detach_reset, b, threshold, slope, want_beta
):
    # dL/dU[t] = dL/dS[t] S'(U[t]) + dL/dU[t] (direct) + dL/dU[t+1] (beta - theta S'(U[t]) keep)
    sig = mem.sub(threshold).mul_(slope).sigmoid_()
    surrogate = torch.addcmul(sig, sig, sig, value=-1.0).mul_(slope)  # k sig (1 - sig)
    local = torch.zeros_like(mem) if grad_spikes is None else surrogate * grad_spikes
    if grad_mem is not None:
        local.add_(grad_mem)
    for t in range(mem.shape[0] - 2, -1, -1):  # in place: local[t] becomes dL/dU[t]
        if detach_reset:
            local[t].add_(local[t + 1], alpha=b)
        else:  # the reset path -theta * S[t] also carries gradient to U[t]
            local[t].addcmul_(local[t + 1], b - threshold * surrogate[t])
    grad_beta = (local[1:] * mem[:-1]).sum() if want_beta else None  # dU[t]/dbeta = U[t-1]
    return (local.sum(0) if constant else local), grad_beta


class _LIFFunction(torch.autograd.Function):
    """Multi-step LIF. ``current`` is ``[T, ...]``, or ``[...]`` held constant for ``steps``."""

    @staticmethod
    def forward(ctx, current, beta, threshold, slope, steps, detach_reset, backend):
        ctx.dtype = current.dtype
        if current.dtype in _native.LOW_PRECISION:  # bf16/fp16 inputs: integrate in float32
            current = current.float()
        constant = steps is not None
        T = steps if constant else current.shape[0]
        b = float(beta.clamp(0.0, 1.0))  # snntorch clamps beta to [0, 1] as well
        native = backend != "eager" and _native.usable(current)  # float32 by now
        if backend == "native" and not native:
            raise ValueError("backend='native' needs float32 CPU tensors and a C compiler")
        if native:
            spikes, mem = _native.forward(current, steps, b, threshold)
        else:
            spikes, mem = _eager_forward(current, T, constant, b, threshold)
        ctx.save_for_backward(mem, beta)
        ctx.config = (threshold, slope, constant, detach_reset, b, native)
        ctx.set_materialize_grads(False)  # an unused membrane output costs nothing in backward
        return spikes.to(ctx.dtype), mem  # spikes are 0/1: exact in any float type

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes, grad_mem):
        mem, beta = ctx.saved_tensors
        threshold, slope, constant, detach_reset, b, native = ctx.config
        want_beta = ctx.needs_input_grad[1]
        args = (constant, detach_reset, b, threshold, slope, want_beta)
        grad_spikes = None if grad_spikes is None else grad_spikes.to(mem.dtype)
        if native:
            grads = [None if g is None else g.contiguous() for g in (grad_spikes, grad_mem)]
            grad_current, grad_beta = _native.backward(mem, *grads, *args)
        else:
            grad_current, grad_beta = _eager_backward(mem, grad_spikes, grad_mem, *args)
        if want_beta and not 0.0 <= float(beta) <= 1.0:
            grad_beta = grad_beta * 0.0  # clamp(0, 1) passes no gradient outside its range
        return grad_current.to(ctx.dtype), grad_beta, None, None, None, None, None


def lif_multistep(
    current: Tensor,
    beta: Tensor | float,
    threshold: float = 1.0,
    slope: float = 25.0,
    steps: int | None = None,
    detach_reset: bool = True,
    backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Run eq. (6) over time; returns ``(spikes [T, ...], membrane [T, ...])``.

    With ``steps`` given, ``current`` ``[...]`` is a constant input (direct encoding): it is
    read T times but stored once, and its gradient arrives already summed over time.
    ``backend``: "auto" (fused C kernels for float32 on the CPU when they build, else
    PyTorch), "native" or "eager" (the step-by-step PyTorch loop).
    """
    if backend not in ("auto", "native", "eager"):
        raise ValueError(f"backend={backend!r}; use 'auto', 'native' or 'eager'")
    if not current.is_floating_point():
        raise ValueError(f"current must be a float tensor, got {current.dtype}; use .float()")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps={steps!r}: give the number of time steps, an int >= 1")
    if steps is None and (current.dim() < 1 or current.shape[0] < 1):
        raise ValueError(f"current {list(current.shape)} has no time steps: expected [T, ...]")
    if not threshold > 0 or not slope > 0:
        raise ValueError(f"threshold={threshold} and slope={slope} must both be > 0")
    if not torch.is_tensor(beta):
        beta = torch.tensor(float(beta), device=current.device)
    if beta.numel() != 1:
        raise ValueError(
            f"beta must be one number (the layer's leak), got shape {list(beta.shape)}"
        )
    return _LIFFunction.apply(
        current, beta, float(threshold), float(slope), steps, detach_reset, backend
    )


class LIF(nn.Module):
    """Leaky integrate-and-fire layer; ``forward(current [T, B, ...]) -> spikes [T, B, ...]``.

    Args:
        beta: leak factor per step (``1 - 1/tau``), clamped to [0, 1] as in snntorch.
        threshold: firing threshold theta.
        slope: surrogate slope k; snntorch's default is 25 (steep gradients only near theta).
        detach_reset: if True (default, as in snntorch) the reset term carries no gradient.
        learn_beta: make beta a trainable scalar of this layer.
    """

    def __init__(
        self,
        beta: float = 0.9,
        threshold: float = 1.0,
        slope: float = 25.0,
        detach_reset: bool = True,
        learn_beta: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta={beta} is outside [0, 1]; use e.g. beta=0.9 (tau = 10 steps)")
        if threshold <= 0 or slope <= 0:
            raise ValueError(f"threshold={threshold} and slope={slope} must both be > 0")
        beta_t = torch.tensor(float(beta))
        if learn_beta:
            self.beta = nn.Parameter(beta_t)
        else:
            self.register_buffer("beta", beta_t)
        self.threshold, self.slope, self.detach_reset = float(threshold), float(slope), detach_reset

    def forward(
        self, current: Tensor, steps: int | None = None, return_membrane: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        spikes, mem = lif_multistep(
            current, self.beta, self.threshold, self.slope, steps, self.detach_reset
        )
        return (spikes, mem) if return_membrane else spikes

    def extra_repr(self) -> str:
        return (
            f"beta={float(self.beta):.3g}, threshold={self.threshold}, slope={self.slope}, "
            f"detach_reset={self.detach_reset}, learn_beta={isinstance(self.beta, nn.Parameter)}"
        )
