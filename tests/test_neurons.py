"""LIF neuron, eq. (6): hand traces, a plain autograd reference, and snntorch itself."""

import re

import pytest
import snntorch as snn
import torch
from snntorch import surrogate

from spikessl import _native
from spikessl.neurons import LIF, lif_multistep, sigmoid_surrogate


class _RefSpike(torch.autograd.Function):
    """Heaviside forward, sigmoid-derivative backward: the textbook surrogate."""

    @staticmethod
    def forward(ctx, x, k):
        ctx.save_for_backward(x)
        ctx.k = k
        return (x > 0).float()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(ctx.k * x)
        return g * ctx.k * sig * (1 - sig), None


def reference_lif(current, beta, theta, k, detach_reset=True):
    """Eq. (6) written the obvious way, one autograd node per operation."""
    u = torch.zeros_like(current[0])
    s = torch.zeros_like(current[0])
    spikes, mems = [], []
    for i_t in current:
        reset = s.detach() if detach_reset else s
        u = beta * u + i_t - theta * reset
        s = _RefSpike.apply(u - theta, k)
        spikes.append(s)
        mems.append(u)
    return torch.stack(spikes), torch.stack(mems)


def snntorch_lif(current, beta, theta, k, learn_beta=False):
    """The paper's stack: snn.Leaky stepped in a Python loop."""
    leaky = snn.Leaky(
        beta=beta,
        threshold=theta,
        spike_grad=surrogate.sigmoid(slope=k),
        reset_mechanism="subtract",
        learn_beta=learn_beta,
    )
    mem = leaky.init_leaky()
    spikes, mems = [], []
    for i_t in current:
        s, mem = leaky(i_t, mem)
        spikes.append(s)
        mems.append(mem)
    return torch.stack(spikes), torch.stack(mems), leaky


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def test_hand_computed_trace_with_reset():
    # beta=0.5, theta=1; values chosen to be exact in binary floating point
    current = torch.tensor([1.5, 0.5, 0.25, 0.0, 1.0, 0.5]).view(6, 1)
    spikes, mem = LIF(beta=0.5, threshold=1.0)(current, return_membrane=True)
    # t0: 1.5 > 1 spikes; t1: .75+.5-1 = .25; t2: .125+.25 = .375; t3: .1875;
    # t4: .09375+1 = 1.09375 spikes; t5: .546875+.5-1 = .046875
    expected_mem = [1.5, 0.25, 0.375, 0.1875, 1.09375, 0.046875]
    assert mem.flatten().tolist() == expected_mem
    assert spikes.flatten().tolist() == [1, 0, 0, 0, 1, 0]


def test_membrane_equal_to_threshold_does_not_spike():
    spikes, mem = LIF(beta=1.0, threshold=1.0)(torch.tensor([[1.0], [0.0]]), return_membrane=True)
    assert mem.flatten().tolist() == [1.0, 1.0]
    assert spikes.sum() == 0


def test_surrogate_is_the_derivative_of_a_steep_sigmoid():
    # independent reference: autograd's derivative of sigmoid(k x), the smooth step it stands for
    for k in (1.0, 4.0, 25.0):
        x = torch.tensor([0.0, 0.1, -0.3, 2.0], dtype=torch.float64, requires_grad=True)
        (derivative,) = torch.autograd.grad(torch.sigmoid(k * x).sum(), x)
        torch.testing.assert_close(sigmoid_surrogate(x.detach(), k), derivative)
    assert sigmoid_surrogate(torch.tensor(0.0), 25.0).item() == pytest.approx(25.0 / 4)


def test_single_step_gradient_is_the_surrogate():
    u = torch.tensor([[0.3, 1.0, 1.2, -5.0]], requires_grad=True)  # (T=1, 4)
    spikes = LIF(beta=0.9, threshold=1.0, slope=4.0)(u)
    spikes.sum().backward()
    torch.testing.assert_close(u.grad, sigmoid_surrogate(u.detach() - 1.0, 4.0))


def test_two_step_gradient_by_hand():
    # dS1/dI0 = S'(U1) * beta (detached reset): the leak carries the gradient back in time
    current = torch.tensor([[0.5], [0.2]], requires_grad=True)
    beta, k = 0.8, 3.0
    spikes = LIF(beta=beta, threshold=1.0, slope=k)(current)
    spikes[1].sum().backward()
    u1 = beta * 0.5 + 0.2
    d = sigmoid_surrogate(torch.tensor(u1 - 1.0), k).item()
    assert current.grad.flatten().tolist() == pytest.approx([beta * d, d], rel=1e-6)


@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("beta,theta,k", [(0.9, 1.0, 4.0), (0.5, 0.7, 25.0), (1.0, 1.0, 1.0)])
def test_matches_plain_reference(detach_reset, beta, theta, k):
    torch.manual_seed(0)
    x = torch.randn(12, 5, 7) * 0.8 + 0.5
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    weight = torch.randn(12, 5, 7)  # an arbitrary downstream loss on spikes and membrane
    s1, m1 = lif_multistep(x1, beta, theta, k, detach_reset=detach_reset)
    s2, m2 = reference_lif(x2, beta, theta, k, detach_reset)
    assert torch.equal(s1, s2)
    torch.testing.assert_close(m1, m2, rtol=1e-6, atol=1e-6)
    ((s1 * weight).sum() + 0.1 * (m1 * weight).sum()).backward()
    ((s2 * weight).sum() + 0.1 * (m2 * weight).sum()).backward()
    assert rel_err(x1.grad, x2.grad) < 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("steps", [None, 6])
def test_low_precision_current_integrates_in_float32(dtype, steps):
    # under precision=bf16 the convolutions hand the LIF bf16 currents: the membrane must be
    # integrated in float32 (a bf16 membrane rounds 0.9 * u to 3 significant digits) and the
    # result equal the float32 run on the same (rounded) values; spikes and grads come back in
    # the input's dtype
    torch.manual_seed(4)
    shape = (6, 4, 9) if steps is None else (4, 9)
    low = (torch.randn(shape) * 0.8 + 0.5).to(dtype).requires_grad_()
    full = low.detach().float().requires_grad_()
    s_low, m_low = lif_multistep(low, 0.9, 1.0, 5.0, steps=steps)
    s_full, m_full = lif_multistep(full, 0.9, 1.0, 5.0, steps=steps)
    assert s_low.dtype == dtype and m_low.dtype == torch.float32
    assert torch.equal(s_low.float(), s_full) and torch.equal(m_low, m_full)
    w = torch.randn(s_full.shape).to(dtype).float()  # exact in dtype: equal upstream grads
    (s_low.float() * w).sum().backward()
    (s_full * w).sum().backward()
    assert low.grad.dtype == dtype
    assert torch.equal(low.grad, full.grad.to(dtype))  # float32 backward, rounded once


def test_constant_input_equals_repeated_input():
    torch.manual_seed(1)
    x = (torch.rand(4, 3, 5) * 1.5).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    s1, m1 = lif_multistep(x, 0.9, 1.0, 5.0, steps=9)
    s2, m2 = lif_multistep(xr.expand(9, *xr.shape), 0.9, 1.0, 5.0)
    assert torch.equal(s1, s2) and torch.equal(m1, m2)
    w = torch.randn(9, 4, 3, 5)
    (s1 * w).sum().backward()
    (s2 * w).sum().backward()
    assert x.grad.shape == x.shape
    assert rel_err(x.grad, xr.grad) < 1e-6


@pytest.mark.parametrize("backend", ["eager", "native"])
@pytest.mark.parametrize("beta,theta,k", [(0.9, 1.0, 4.0), (0.95, 0.5, 25.0), (0.6, 1.0, 10.0)])
def test_equals_snntorch_exactly(beta, theta, k, backend):
    """Same weights and inputs: identical spikes and membranes, gradients within 1e-5."""
    torch.manual_seed(2)
    x = torch.rand(25, 16, 40)  # (T, B, features)
    lin = torch.nn.Linear(40, 30)
    lin_ref = torch.nn.Linear(40, 30)
    lin_ref.load_state_dict(lin.state_dict())
    # positive currents keep k (U - theta) > -88, where snntorch's surrogate is finite
    s_ref, m_ref, _ = snntorch_lif(torch.sigmoid(2 * lin_ref(x)), beta, theta, k)
    s, m = lif_multistep(torch.sigmoid(2 * lin(x)), beta, theta, k, backend=backend)
    assert torch.equal(s, s_ref)
    assert torch.equal(m, m_ref)
    assert 0.05 < s.mean() < 0.95  # the comparison exercised both spikes and resets
    target = torch.randn_like(s)
    ((s - target) ** 2).sum().backward()
    ((s_ref - target) ** 2).sum().backward()
    assert torch.isfinite(lin_ref.weight.grad).all(), "pick inputs where snntorch is finite"
    assert rel_err(lin.weight.grad, lin_ref.weight.grad) < 1e-5
    assert rel_err(lin.bias.grad, lin_ref.bias.grad) < 1e-5


@pytest.mark.parametrize("native", [False, True])
def test_learnable_beta_gradient_equals_snntorch(native, monkeypatch):
    if not native:
        monkeypatch.setattr(_native, "usable", lambda *t, **kw: False)
    torch.manual_seed(3)
    x = torch.rand(20, 8, 30) * 1.5
    s_ref, m_ref, leaky = snntorch_lif(x, 0.8, 1.0, 4.0, learn_beta=True)
    lif = LIF(0.8, 1.0, 4.0, learn_beta=True)
    s, m = lif(x, return_membrane=True)
    scale = torch.arange(1.0, 21.0).view(20, 1, 1)
    (s * scale + 0.1 * m).sum().backward()
    (s_ref * scale + 0.1 * m_ref).sum().backward()
    assert isinstance(lif.beta, torch.nn.Parameter)
    assert rel_err(lif.beta.grad, leaky.beta.grad) < 1e-5


def test_gradients_stay_finite_far_from_threshold():
    # k (U - theta) far below -88 overflows a ratio-of-exponentials surrogate to NaN
    x = torch.tensor([[-1e4, -50.0, 0.0, 50.0, 1e4]]).repeat(3, 1).requires_grad_()
    spikes = LIF(beta=0.9, threshold=1.0, slope=25.0)(x)
    spikes.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[:, 0].abs().max() < 1e-30  # sigmoid derivative vanishes far from theta


def test_without_grad_the_spikes_are_binary_and_keep_the_input_dtype():
    x = torch.rand(5, 2, 3)
    with torch.no_grad():
        s = LIF()(x)
    assert s.shape == x.shape and s.dtype == x.dtype
    assert set(s.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "kwargs", [{"beta": 1.5}, {"beta": -0.1}, {"threshold": 0.0}, {"slope": -1.0}]
)
def test_invalid_parameters_are_rejected(kwargs):
    with pytest.raises(ValueError, match="|".join(kwargs)):
        LIF(**kwargs)


@pytest.mark.parametrize(
    ("current", "kwargs", "needle"),
    [
        (torch.rand(3, 4), {"steps": 0}, "steps=0"),
        (torch.rand(3, 4), {"steps": -1}, "steps=-1"),
        (torch.rand(3, 4), {"steps": 2.5}, "steps=2.5"),
        (torch.ones(3, 4, dtype=torch.long), {}, "float tensor"),
        (torch.rand(0, 4), {}, "no time steps"),
        (torch.rand(3, 4), {"threshold": -1.0}, "threshold=-1.0"),
        (torch.rand(3, 4), {"beta": torch.full((4,), 0.9)}, "one number"),
    ],
)
def test_lif_multistep_rejects_bad_input_with_a_clear_error(current, kwargs, needle):
    args = {"beta": 0.9, **kwargs}
    with pytest.raises(ValueError, match=re.escape(needle)):
        lif_multistep(current, **args)


def test_float64_spike_gradients_stay_float64():
    # float64 runs the eager loop: dL/dS must not be rounded through float32 on the way
    x = torch.linspace(0.5, 1.5, 7, dtype=torch.float64)[None].requires_grad_()  # T=1
    w = torch.rand(1, 7, dtype=torch.float64) / 3.0  # many digits below float32's
    spikes, _ = lif_multistep(x, 0.9, 1.0, 4.0)
    (spikes * w).sum().backward()
    expected = sigmoid_surrogate(x.detach() - 1.0, 4.0) * w
    assert x.grad.dtype == torch.float64
    torch.testing.assert_close(x.grad, expected, rtol=1e-14, atol=0.0)
