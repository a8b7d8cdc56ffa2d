"""NT-Xent, eq. (1), against a straightforward double loop."""

import math

import pytest
import torch

from spikessl.losses import nt_xent


def loop_nt_xent(z1, z2, tau):
    """Eq. (1) term by term: every latent is an anchor, its other view the positive."""
    z = torch.cat([z1, z2]).double()
    n2 = z.shape[0]
    n = n2 // 2

    def sim(a, b):
        na, nb = a.norm(), b.norm()
        return 0.0 if na == 0 or nb == 0 else (a @ b / (na * nb)).item()

    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denom = sum(math.exp(sim(z[i], z[j]) / tau) for j in range(n2) if j != i)
        total += -math.log(math.exp(sim(z[i], z[pos]) / tau) / denom)
    return total / n2


@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (16, 128)])
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_matches_loop_reference(n, d, tau):
    torch.manual_seed(n * d)
    z1 = torch.poisson(torch.full((n, d), 3.0))  # spike counts: non-negative integers
    z2 = torch.poisson(torch.full((n, d), 3.0))
    assert nt_xent(z1, z2, tau).item() == pytest.approx(loop_nt_xent(z1, z2, tau), rel=1e-5)


def test_hand_computed_orthogonal_case():
    # two images, one-hot latents, positives identical, negatives orthogonal:
    # each anchor: -log(e^{1/t} / (e^{1/t} + 2)), t = 0.5
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert nt_xent(z1, z1.clone(), 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_scale_invariant_like_cosine():
    torch.manual_seed(0)
    z1, z2 = torch.rand(6, 10), torch.rand(6, 10)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(7 * z1, 3 * z2))


def test_silent_latents_are_an_absorbing_state():
    # all-zero spike counts: loss log(2N - 1) and no gradient to escape with
    z1 = torch.zeros(8, 4, requires_grad=True)
    z2 = torch.zeros(8, 4, requires_grad=True)
    loss = nt_xent(z1, z2)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(15), rel=1e-6)
    assert z1.grad.abs().max() == 0 and z2.grad.abs().max() == 0


def test_gradient_pulls_positives_together():
    torch.manual_seed(1)
    z1 = torch.rand(4, 5, requires_grad=True)
    z2 = torch.rand(4, 5)
    loss0 = nt_xent(z1, z2)
    loss0.backward()
    with torch.no_grad():
        z1 -= 0.1 * z1.grad
    assert nt_xent(z1, z2) < loss0


@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.rand(4, 3), torch.rand(4, 3), 0.0), "temperature"),
        ((torch.rand(4, 3), torch.rand(5, 3), 0.5), "shape"),
        ((torch.rand(1, 3), torch.rand(1, 3), 0.5), "at least 2"),
    ],
)
def test_bad_input_is_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        nt_xent(*args)


def test_nt_xent_is_float32_inside_a_bf16_autocast_region():
    torch.manual_seed(0)
    z1, z2 = torch.rand(16, 32) * 10, torch.rand(16, 32) * 10  # spike-count-like latents
    reference = nt_xent(z1, z2, 0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = nt_xent(z1, z2, 0.1)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, reference)


def test_a_silent_view_gets_a_bounded_gradient_and_the_others_theirs():
    # one all-zero row among spiking ones: F.normalize (eps 1e-12) gave it a 1e12-sized
    # gradient; here it is of the others' size, and the loss and other rows are unchanged
    torch.manual_seed(0)
    z1, z2 = torch.poisson(torch.full((4, 8), 3.0)), torch.poisson(torch.full((4, 8), 3.0))
    z1[1] = 0
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    nt_xent(a, b, 0.1).backward()
    assert a.grad.abs().max() < 10 and a.grad[1].abs().max() > 0

    def normalized(z1, z2):  # the cosine form for rows that spike: F.normalize
        z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
        logits = (z @ z.T / 0.1).fill_diagonal_(float("-inf"))
        return torch.nn.functional.cross_entropy(logits, torch.tensor([4, 5, 6, 7, 0, 1, 2, 3]))

    c, d = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = normalized(c, d)
    loss.backward()
    assert nt_xent(z1, z2, 0.1).item() == pytest.approx(loss.item(), rel=1e-6)
    spiking = [0, 2, 3]
    torch.testing.assert_close(a.grad[spiking], c.grad[spiking])
    torch.testing.assert_close(b.grad, d.grad)
    assert c.grad[1].abs().max() > 1e9  # what the gradient was
