"""Fused C kernels against the plain PyTorch path: same spikes, same gradients."""

import pytest
import torch
import torch.nn.functional as F

from spikessl import _native
from spikessl.neurons import LIF, lif_multistep
from spikessl.pooling import lif_maxpool


@pytest.fixture(autouse=True)
def require_native():
    # CI machines have gcc; a silent fallback here would test eager against itself
    assert _native.load() is not None, "the C kernels failed to build"


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def run(backend, x, beta, steps, detach_reset, weight, slope=4.0):
    x = x.clone().requires_grad_()
    beta = torch.tensor(beta, requires_grad=True)
    s, m = lif_multistep(x, beta, 1.0, slope, steps, detach_reset, backend)
    ((s * weight).sum() + 0.1 * (m * weight).sum()).backward()
    return s, m, x.grad, beta.grad


@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("detach_reset", [True, False])
def test_lif_native_equals_eager(constant, detach_reset):
    torch.manual_seed(0)
    T, shape = 17, (5, 3, 37)  # odd sizes: blocks that do not divide evenly
    x = torch.randn(*shape) * 0.8 + 0.5 if constant else torch.randn(T, *shape) * 0.8 + 0.5
    weight = torch.randn(T, *shape)
    steps = T if constant else None
    eager = run("eager", x, 0.85, steps, detach_reset, weight)
    native = run("native", x, 0.85, steps, detach_reset, weight)
    assert torch.equal(eager[0], native[0]) and torch.equal(eager[1], native[1])
    assert rel_err(native[2], eager[2]) < 1e-5
    assert native[3].item() == pytest.approx(eager[3].item(), rel=1e-5)


def test_lif_native_handles_large_layers_in_parallel():
    torch.manual_seed(1)
    x = torch.rand(6, 4, 5000) * 1.5  # several blocks of 1024 neurons per thread
    weight = torch.randn(6, 4, 5000)
    eager = run("eager", x, 0.9, None, True, weight)
    native = run("native", x, 0.9, None, True, weight)
    assert torch.equal(eager[0], native[0])
    assert rel_err(native[2], eager[2]) < 1e-5


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("constant", [False, True])
@pytest.mark.parametrize("size,k", [(8, 2), (9, 2), (12, 3), (40, 2)])
@pytest.mark.parametrize("detach_reset,learn_beta", [(True, False), (False, True)])
def test_fused_lif_maxpool_equals_lif_then_max_pool2d(
    channels_last, constant, size, k, detach_reset, learn_beta
):
    torch.manual_seed(size * k)
    T, B, C = 7, 3, 4
    x = torch.rand(B if constant else T * B, C, size, size) * 1.2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    lifs = [LIF(0.8, 1.0, 5.0, detach_reset, learn_beta) for _ in range(2)]
    outs = []
    for backend, lif in zip(("eager", "native"), lifs):
        xi = x.clone().requires_grad_()
        pooled, rate = lif_maxpool(lif, xi, k, T, constant=constant, backend=backend)
        weight = torch.linspace(-1, 1, pooled.numel()).view_as(pooled)
        (pooled * weight).sum().backward()
        outs.append((pooled, rate, xi.grad, lif.beta.grad))
    (p_e, r_e, g_e, b_e), (p_n, r_n, g_n, b_n) = outs
    assert p_n.shape == (T * B, C, size // k, size // k)
    assert torch.equal(p_e, p_n)
    assert r_n.item() == pytest.approx(r_e.item(), rel=1e-6)
    assert 0 < r_n < 1
    assert g_n.shape == x.shape
    assert rel_err(g_n, g_e) < 1e-5
    if learn_beta:
        assert b_n.item() == pytest.approx(b_e.item(), rel=1e-5)


def test_fused_pool_routes_gradient_like_max_pool2d_on_ties():
    # windows with no spike, one spike and several spikes: max_pool2d picks the first maximum
    current = torch.tensor(
        [[0.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 2.0], [2.0, 2.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]]
    ).view(1, 1, 4, 4)
    grads = []
    for backend in ("eager", "native"):
        x = current.clone().requires_grad_()
        pooled, _ = lif_maxpool(LIF(0.5, 1.0, 1.0), x, 2, 1, constant=True, backend=backend)
        assert pooled.flatten().tolist() == [0.0, 1.0, 1.0, 0.0]
        pooled.sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)
    assert (grads[0] != 0).sum() == 4  # exactly one afferent per window


def test_fallback_when_disabled(monkeypatch):
    monkeypatch.setattr(_native, "_tried", True)
    monkeypatch.setattr(_native, "_lib", None)
    x = torch.rand(4 * 2, 3, 6, 6)
    pooled, _ = lif_maxpool(LIF(), x, 2, 4)  # silently uses PyTorch
    expected = F.max_pool2d(LIF()(x.unflatten(0, (4, 2))).flatten(0, 1), 2)
    assert torch.equal(pooled, expected)
    with pytest.raises(ValueError, match="native"):
        lif_multistep(x, 0.9, backend="native")


def test_native_declines_what_it_cannot_run():
    x64 = torch.rand(3, 4, dtype=torch.float64)
    assert not _native.usable(x64)
    s, _ = lif_multistep(x64, 0.9)  # auto: the eager path serves float64
    assert s.dtype == torch.float64
    assert not _native.usable(torch.rand(4, 3).T)  # non-contiguous
