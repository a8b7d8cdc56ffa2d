"""Fused C kernels against the plain PyTorch path: same spikes, same gradients."""

import copy
import functools
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spikessl import _native, build_encoder, encoders
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


CL, NCHW = torch.channels_last, torch.contiguous_format


def conv_bn_pool(overwrite, memory_format=None, backend="auto", detach_reset=False, seed=0):
    """conv -> batch norm -> lif_maxpool on a time-varying channels-last [T*B, C, H, W] input,
    as in the encoder's later layers; returns the outputs, every gradient, and the current."""
    torch.manual_seed(seed)
    T, B = 4, 3
    x = (torch.rand(T * B, 3, 10, 10) * 2).contiguous(memory_format=CL).requires_grad_()
    conv = nn.Conv2d(3, 8, 3, bias=False).to(memory_format=CL)
    norm = nn.BatchNorm2d(8)
    lif = LIF(0.8, 1.0, 5.0, detach_reset, learn_beta=True)
    current = norm(conv(x))
    assert current.is_contiguous(memory_format=CL) and not current.is_contiguous()
    before = current.detach().clone()
    pooled, rate = lif_maxpool(
        lif, current, 2, T, backend=backend, overwrite=overwrite, memory_format=memory_format
    )
    # the same values in pooled's layout, so the gradient reaching the kernel has it too
    ramp = torch.linspace(-1, 1, pooled.numel()).view(pooled.shape)
    weight = torch.empty_like(pooled).copy_(ramp)
    (pooled * weight).sum().backward()
    grads = {
        "x": x.grad,
        "conv": conv.weight.grad,
        "norm.weight": norm.weight.grad,
        "norm.bias": norm.bias.grad,
        "beta": lif.beta.grad,
    }
    return pooled, rate, grads, (before, current)


@pytest.mark.parametrize("memory_format", [None, NCHW], ids=["default", "nchw"])
@pytest.mark.parametrize("detach_reset", [True, False])
def test_overwrite_gives_bit_identical_spikes_and_gradients(memory_format, detach_reset):
    ref = conv_bn_pool(False, memory_format, detach_reset=detach_reset)
    out = conv_bn_pool(True, memory_format, detach_reset=detach_reset)
    assert 0 < ref[1] < 1 and ref[0].sum() > 0, "the comparison must involve spikes"
    assert torch.equal(out[0], ref[0]) and out[1].item() == ref[1].item()
    for name, g in ref[2].items():
        assert g is not None and g.abs().sum() > 0, name
        assert torch.equal(out[2][name], g), name
    # without overwrite the current is left alone; with it, its memory held the membrane
    # (and then the gradient): not a silent copy
    assert torch.equal(ref[3][1], ref[3][0])
    assert not torch.equal(out[3][1], out[3][0])


@pytest.mark.parametrize("overwrite", [False, True])
def test_memory_format_sets_the_pooled_layout_only(overwrite):
    default, _, g_default, _ = conv_bn_pool(overwrite)
    last, _, g_last, _ = conv_bn_pool(overwrite, CL)
    nchw, _, g_nchw, _ = conv_bn_pool(overwrite, NCHW)
    assert default.is_contiguous(memory_format=CL) and not default.is_contiguous()
    assert last.is_contiguous(memory_format=CL) and not last.is_contiguous()
    assert nchw.is_contiguous() and not nchw.is_contiguous(memory_format=CL)
    assert nchw.shape == last.shape == (12, 8, 4, 4)
    assert torch.equal(nchw, last) and torch.equal(default, last)
    for name, g in g_last.items():
        assert torch.equal(g_nchw[name], g) and torch.equal(g_default[name], g), name


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("memory_format", [None, CL, NCHW], ids=["default", "cl", "nchw"])
def test_eager_path_honours_memory_format_and_ignores_overwrite(overwrite, memory_format):
    native, rate_n, g_n, _ = conv_bn_pool(False, memory_format)
    eager, rate_e, g_e, (before, current) = conv_bn_pool(overwrite, memory_format, "eager")
    if memory_format is not None:  # (None: the current's layout, tested below)
        assert eager.is_contiguous(memory_format=memory_format)
        assert not eager.is_contiguous(memory_format=CL if memory_format == NCHW else NCHW)
    assert torch.equal(eager, native)
    assert rate_e.item() == pytest.approx(rate_n.item(), rel=1e-6)
    for name, g in g_n.items():
        assert rel_err(g_e[name], g) < 1e-5, name
    assert torch.equal(current, before)  # overwrite is only a permission: eager never writes


def test_eager_path_default_layout_is_the_inputs():
    eager, *_ = conv_bn_pool(False, None, "eager")
    assert eager.is_contiguous(memory_format=CL) and not eager.is_contiguous()


@pytest.mark.parametrize("overwrite", [False, True])
def test_second_backward_fails_loudly_after_overwrite(overwrite):
    torch.manual_seed(3)
    T, B = 4, 2
    x = (torch.rand(T * B, 5, 8, 8) * 1.5).contiguous(memory_format=CL).requires_grad_()
    lif = LIF(0.8, 1.0, 5.0, detach_reset=False, learn_beta=True)
    current = x * 1.0  # not a leaf: overwrite may take its memory
    pooled, _ = lif_maxpool(lif, current, 2, T, overwrite=overwrite)
    assert pooled.sum() > 0
    weight = torch.linspace(-1, 1, pooled.numel()).view(pooled.shape)
    loss = (pooled * weight).sum()
    loss.backward(retain_graph=True)
    first, first_beta = x.grad.clone(), lif.beta.grad.clone()
    assert first.abs().sum() > 0
    if overwrite:  # the membrane now holds the gradient: recomputing from it would be wrong
        with pytest.raises(RuntimeError, match="inplace"):
            loss.backward()
    else:
        loss.backward()
        assert torch.equal(x.grad, 2 * first) and torch.equal(lif.beta.grad, 2 * first_beta)


def test_encoder_overwrite_is_bit_identical_to_keeping_the_current(monkeypatch):
    # paper-mnist: batch norm after each convolution; the second conv layer overwrites its
    # current and outputs NCHW. The reference is a copy whose layers may not overwrite.
    torch.manual_seed(0)
    enc = build_encoder("paper-mnist")
    ref = copy.deepcopy(enc)
    images = torch.rand(4, 1, 28, 28)
    target = torch.randn(4, enc.latent_dim)
    calls = []

    def spy(*args, keep=False, **kwargs):
        calls.append(kwargs.get("overwrite", False))
        return lif_maxpool(*args, **{**kwargs, "overwrite": False} if keep else kwargs)

    runs = []
    for model, keep in ((enc, False), (ref, True)):
        monkeypatch.setattr(encoders, "lif_maxpool", functools.partial(spy, keep=keep))
        x = images.clone().requires_grad_()
        trace = model.trace(x, 3)
        counts = trace.spikes.sum(0)
        ((counts - target) ** 2).sum().backward()
        runs.append((counts, trace.rates, x.grad))
    assert calls == [False, True, False, True], "the encoder no longer overwrites its current"
    (counts, rates, g_x), (counts_ref, rates_ref, g_x_ref) = runs
    assert counts.sum() > 0 and (rates[:2] > 0).all(), "the comparison must involve spikes"
    assert torch.equal(counts, counts_ref) and torch.equal(rates, rates_ref)
    assert torch.equal(g_x, g_x_ref) and g_x.abs().sum() > 0
    for (name, p), p_ref in zip(enc.named_parameters(), ref.parameters()):
        assert torch.equal(p.grad, p_ref.grad), name
    for (name, b), b_ref in zip(enc.named_buffers(), ref.buffers()):
        assert torch.equal(b, b_ref), name


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


@pytest.mark.parametrize(
    ("shape", "T", "pool", "constant", "needle"),
    [
        ((7, 2, 4, 4), 2, 2, False, "7 rows are not T=2 steps"),  # the kernel would drop row 6
        ((2, 4, 4), 2, 2, False, "3-D"),
        ((4, 2, 4, 4), 0, 2, False, "T=0"),
        ((4, 2, 4, 4), 2, 0, False, "pool=0"),
        ((4, 2, 3, 3), 2, 4, True, "does not fit a 3x3 map"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "eager"])
def test_lif_maxpool_rejects_inputs_it_would_mis_shape(shape, T, pool, constant, needle, backend):
    x = torch.rand(*shape)
    with pytest.raises(ValueError, match=re.escape(needle)):
        lif_maxpool(LIF(), x, pool, T, constant=constant, backend=backend, overwrite=True)


def test_the_kernels_are_built_beside_their_cache_file(monkeypatch, tmp_path):
    # os.replace cannot cross filesystems (a tmpfs /tmp, an NFS home): build next to the target
    def fake_compiler(cmd, **_):
        Path(cmd[cmd.index("-o") + 1]).write_bytes(b"built")

    moved, real_replace = [], os.replace

    def replace(src, dst):
        moved.append(Path(src))
        real_replace(src, dst)

    monkeypatch.setattr(_native.subprocess, "run", fake_compiler)
    monkeypatch.setattr(_native.os, "replace", replace)
    target = tmp_path / "cache" / "spikessl" / "lif.so"
    _native._build("int unused;", target)
    assert target.read_bytes() == b"built"
    assert moved[0].parent.parent == target.parent  # a temporary folder inside the cache's
    assert sorted(p.name for p in target.parent.iterdir()) == ["lif.so"]  # and it is gone
