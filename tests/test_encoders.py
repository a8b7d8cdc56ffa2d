"""Spiking encoder: shapes, direct encoding, and a per-step snntorch network as reference."""

import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from snntorch import surrogate

from spikessl import EncoderConfig, SpikingClassifier, _native, build_encoder
from spikessl.encoders import SpikingEncoder, conv_norm


def snntorch_forward(enc: SpikingEncoder, images, T):
    """The same weights stepped through time the paper's way (snn.Leaky, one step at a time)."""
    cfg = enc.cfg

    def leaky():  # its beta, threshold and membrane are buffers: on the images' device
        return snn.Leaky(
            beta=cfg.beta, threshold=cfg.threshold, spike_grad=surrogate.sigmoid(slope=cfg.slope)
        ).to(images.device)

    conv_lifs = [leaky() for _ in enc.convs]
    fc_lifs = [leaky() for _ in enc.fcs]
    mems = [lif.init_leaky() for lif in conv_lifs + fc_lifs]
    outputs = []
    for _ in range(T):
        x = images
        for i, (conv, lif) in enumerate(zip(enc.convs, conv_lifs)):
            spk, mems[i] = lif(conv(x), mems[i])
            x = F.max_pool2d(spk, cfg.pool)
        x = x.flatten(1)
        for j, (fc, lif) in enumerate(zip(enc.fcs, fc_lifs)):
            x, mems[len(conv_lifs) + j] = lif(fc(x), mems[len(conv_lifs) + j])
        outputs.append(x)
    return torch.stack(outputs).sum(0)


def encoder_pair(channels, image_size):
    """Two small encoders with the same weights, and images that make them spike."""
    torch.manual_seed(0)
    cfg = EncoderConfig(
        in_channels=channels,
        image_size=image_size,
        conv_channels=(6, 8),
        fc_sizes=(20,),
        beta=0.9,
        threshold=0.5,
        slope=2.0,
    )
    enc = SpikingEncoder(cfg)
    ref = SpikingEncoder(cfg)
    ref.load_state_dict(enc.state_dict())
    return enc, ref, torch.rand(4, channels, image_size, image_size) * 3


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("image_size,channels", [(28, 1), (32, 3)])
def test_matches_per_step_snntorch_network(image_size, channels, native, monkeypatch):
    if not native:  # the plain PyTorch path (GPUs, bf16, no compiler) must match too
        monkeypatch.setattr(_native, "usable", lambda *t, **kw: False)
    enc, ref, images = encoder_pair(channels, image_size)
    counts = enc(images, 8)
    counts_ref = snntorch_forward(ref, images, 8)
    assert torch.equal(counts, counts_ref)
    assert counts.sum() > 0, "the reference comparison must involve spikes"
    target = torch.randn_like(counts)
    ((counts - target) ** 2).sum().backward()
    ((counts_ref - target) ** 2).sum().backward()
    for (name, p), p_ref in zip(enc.named_parameters(), ref.parameters()):
        assert torch.isfinite(p_ref.grad).all()
        err = (p.grad - p_ref.grad).abs().max() / p_ref.grad.abs().max().clamp_min(1e-12)
        assert err < 1e-5, name


def test_bf16_autocast_on_the_cpu_tracks_float32():
    # precision=bf16 runs the convolutions and matmuls in bf16 (8-bit mantissas), the membranes
    # in float32: a membrane within rounding of the threshold flips a spike, and the flip
    # travels on, so in this small net (threshold 0.5, many neurons near it) 13-15% of the
    # counts differ, by ~9% of all spikes (measured on 32 images); the gradients keep their
    # direction (cosine > 0.999 measured)
    enc, ref, _ = encoder_pair(3, 32)
    images = torch.rand(32, 3, 32, 32) * 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        counts = enc(images, 8)
    counts_ref = ref(images, 8)
    assert counts.dtype == torch.float32 and counts_ref.sum() > 0  # counts summed exactly
    assert (counts.float() != counts_ref).float().mean() <= 0.25
    assert (counts.float() - counts_ref).abs().sum() <= 0.15 * counts_ref.sum()
    target = torch.randn_like(counts_ref)
    ((counts.float() - target) ** 2).sum().backward()
    ((counts_ref - target) ** 2).sum().backward()
    for (name, p), p_ref in zip(enc.named_parameters(), ref.parameters()):
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
        cos = torch.cosine_similarity(p.grad.flatten(), p_ref.grad.flatten(), dim=0)
        assert cos > 0.99, (name, cos)


def test_presets_shapes_and_counts():
    torch.manual_seed(0)
    for preset, shape in (("paper-mnist", (3, 1, 28, 28)), ("paper-cifar10", (3, 3, 32, 32))):
        enc = build_encoder(preset)
        counts = enc(torch.randn(*shape), 5)
        assert counts.shape == (3, enc.latent_dim) == (3, 128)
        assert counts.dtype == torch.float32
        assert torch.equal(counts, counts.round()) and counts.min() >= 0 and counts.max() <= 5
        assert enc.convs[0].out_channels == 12 and enc.convs[1].out_channels == 64


def test_first_convolution_runs_once_per_forward():
    enc = build_encoder(EncoderConfig())
    calls = []
    enc.convs[0].register_forward_hook(lambda *a: calls.append(1))
    enc.convs[1].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    enc(torch.rand(2, 1, 28, 28), T=7)
    assert calls == [1, 14]  # conv1 once (constant input); conv2 on all T*B spike maps


def test_architecture_is_configuration():
    cfg = EncoderConfig(
        in_channels=3,
        image_size=32,
        conv_channels=(4, 8, 16),
        kernel_sizes=(3, 3, 3),
        fc_sizes=(64, 32),
        norm="batch",
    )
    enc = build_encoder(cfg)
    assert [c.out_channels for c in enc.convs] == [4, 8, 16]
    assert enc.fcs[0].in_features == 16 * 2 * 2  # 32 -> 15 -> 6 -> 2
    trace = enc.trace(torch.rand(5, 3, 32, 32), 4)
    assert trace.spikes.shape == (4, 5, 32)
    assert trace.rates.shape == (5,)  # one firing rate per spiking layer
    assert build_encoder(dict(conv_channels=[4], kernel_sizes=[3], fc_sizes=[10])).latent_dim == 10


def test_batch_norm_keeps_every_layer_firing():
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(norm="batch", slope=5.0))
    rates = enc.trace(torch.randn(16, 1, 28, 28), 10).rates
    assert ((rates > 0.02) & (rates < 0.98)).all(), rates


@pytest.mark.parametrize("conv_bias", [False, True])
def test_eval_batch_norm_folds_into_the_convolution(conv_bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 3, bias=conv_bias)
    norm = torch.nn.BatchNorm2d(6)
    with torch.no_grad():  # statistics and affine far from the identity
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.2, 3)
        norm.weight.uniform_(0.5, 2), norm.bias.uniform_(-1, 1)
    x = torch.randn(4, 3, 9, 9)
    norm.eval()
    torch.testing.assert_close(conv_norm(conv, norm, x), norm(conv(x)), rtol=1e-5, atol=1e-5)
    norm.train()  # batch statistics: the modules themselves, running stats updated as usual
    before = norm.running_mean.clone()
    assert torch.equal(
        conv_norm(conv, norm, x),
        F.batch_norm(
            conv(x),
            before.clone(),
            norm.running_var.clone(),
            norm.weight,
            norm.bias,
            True,
            norm.momentum,
            norm.eps,
        ),
    )
    assert not torch.equal(norm.running_mean, before)


def test_folded_eval_encoder_counts_match_the_unfolded_network(monkeypatch):
    from spikessl import encoders

    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(norm="batch", slope=5.0))
    with torch.no_grad():
        enc(torch.rand(64, 1, 28, 28), 10)  # train mode: running statistics move off 0/1
        enc.eval()
        images = torch.rand(64, 1, 28, 28)
        calls = []
        for norm in enc.conv_norms:
            norm.register_forward_hook(lambda *a: calls.append(1))
        folded = enc(images, 10)
        assert calls == []  # no separate pass of batch norm over the convolutions' output
        monkeypatch.setattr(encoders, "conv_norm", lambda conv, norm, x: norm(conv(x)))
        plain = enc(images, 10)
    assert folded.sum() > 0
    # float rounding may move a membrane across the threshold, rarely
    assert (folded != plain).float().mean() < 1e-3


def test_classifier_outputs_class_spike_counts():
    enc = build_encoder(EncoderConfig())
    clf = SpikingClassifier(enc, 10)
    out = clf(torch.rand(4, 1, 28, 28), 6)
    assert out.shape == (4, 10)
    assert clf.trace(torch.rand(4, 1, 28, 28), 6).rates.shape == (4,)


def test_zero_time_steps_rejected():
    with pytest.raises(ValueError, match="time steps"):
        build_encoder(EncoderConfig())(torch.rand(1, 1, 28, 28), 0)


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (1, 28, 28)])
def test_images_that_do_not_fit_the_encoder_get_a_clear_error(shape):
    encoder = build_encoder("paper-mnist")  # [B, 1, 28, 28]
    with pytest.raises(ValueError, match=r"take.*\[B, 1, 28, 28\]"):
        encoder(torch.rand(*shape), 2)


def test_spike_counts_stay_exact_under_bf16_autocast_beyond_256_steps():
    torch.manual_seed(0)
    encoder, x = build_encoder("paper-mnist"), torch.rand(4, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spikes = encoder.trace(x, 300).spikes  # bf16 0/1 spikes
        counts = encoder(x, 300)
    assert counts.dtype == torch.float32 and counts.max() > 256  # bf16 sums round odd counts
    assert torch.equal(counts, spikes.float().sum(0))
