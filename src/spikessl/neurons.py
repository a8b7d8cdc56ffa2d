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


def sigmoid_surrogate(u_minus_theta: Tensor, slope: float) -> Tensor:
    """k * sigmoid(kx) * (1 - sigmoid(kx)): finite for every x (no ratio of exponentials)."""
    sig = torch.sigmoid(slope * u_minus_theta)
    return slope * sig * (1.0 - sig)


class _LIFFunction(torch.autograd.Function):
    """Multi-step LIF. ``current`` is ``[T, ...]``, or ``[...]`` held constant for ``steps``."""

    @staticmethod
    def forward(ctx, current, beta, threshold, slope, steps, detach_reset):
        constant = steps is not None
        T = steps if constant else current.shape[0]
        shape = current.shape if constant else current.shape[1:]
        b = float(beta.clamp(0.0, 1.0))  # snntorch clamps beta to [0, 1] as well
        mem = current.new_empty((T, *shape))
        prev = current.new_zeros(shape)  # U[t-1]
        for t in range(T):
            u = mem[t]
            # eq. (6), op by op in snntorch's order so both give bit-identical membranes
            torch.mul(prev, b, out=u)
            u.add_(current if constant else current[t])
            u.sub_((prev > threshold).to(u.dtype), alpha=threshold)
            prev = u
        ctx.save_for_backward(mem, beta)
        ctx.config = (threshold, slope, constant, detach_reset, b)
        ctx.set_materialize_grads(False)  # an unused membrane output costs nothing in backward
        return (mem > threshold).to(current.dtype), mem

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_spikes, grad_mem):
        mem, beta = ctx.saved_tensors
        threshold, slope, constant, detach_reset, b = ctx.config
        T = mem.shape[0]
        # dL/dU[t] = dL/dS[t] * S'(U[t]) + dL/dU[t] (direct) + dL/dU[t+1] * dU[t+1]/dU[t]
        # S'(U) = k sig (1 - sig), sig = sigmoid(k (U - theta)): few full-size passes
        sig = mem.sub(threshold).mul_(slope).sigmoid_()
        surrogate = torch.addcmul(sig, sig, sig, value=-1.0).mul_(slope)
        local = torch.zeros_like(mem) if grad_spikes is None else surrogate * grad_spikes
        if grad_mem is not None:
            local.add_(grad_mem)
        need_beta = ctx.needs_input_grad[1]
        grad_beta = mem.new_zeros(()) if need_beta else None
        # Reverse-time adjoint, written in place into `local`: local[t] becomes dL/dU[t].
        for t in range(T - 2, -1, -1):
            if detach_reset:
                local[t].add_(local[t + 1], alpha=b)
            else:  # the reset path -theta * S[t] also carries gradient to U[t]
                local[t].addcmul_(local[t + 1], b - threshold * surrogate[t])
        if need_beta and T > 1:
            grad_beta = (local[1:] * mem[:-1]).sum()  # dU[t]/dbeta = U[t-1]
        grad_current = local.sum(0) if constant else local
        if need_beta and not 0.0 <= float(beta) <= 1.0:
            grad_beta = grad_beta * 0.0  # clamp(0, 1) passes no gradient outside its range
        return grad_current, grad_beta, None, None, None, None


def lif_multistep(
    current: Tensor,
    beta: Tensor | float,
    threshold: float = 1.0,
    slope: float = 25.0,
    steps: int | None = None,
    detach_reset: bool = True,
) -> tuple[Tensor, Tensor]:
    """Run eq. (6) over time; returns ``(spikes [T, ...], membrane [T, ...])``.

    With ``steps`` given, ``current`` ``[...]`` is a constant input (direct encoding): it is
    read T times but stored once, and its gradient arrives already summed over time.
    """
    if not torch.is_tensor(beta):
        beta = torch.tensor(float(beta), device=current.device)
    return _LIFFunction.apply(current, beta, float(threshold), float(slope), steps, detach_reset)


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
