"""``spikessl.heads``: the prototype head against every image's spike train through it, one at
a time (its effect on fine-tuning's start: ``test_pipeline.py``)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from spikessl.config import load_config
from spikessl.encoders import SpikingClassifier, SpikingEncoder
from spikessl.evaluate import class_prototypes
from spikessl.heads import prototype_head


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_prototype_head_centres_and_scales_the_currents_it_gives(norm):
    """Reference: every image's spike train through the head, one at a time, in float64."""
    cfg = load_config("mnist-quick", {"time_steps": 5, "eval_batch_size": 7})
    torch.manual_seed(0)
    # threshold 0.3: without batch norm, default initialisation leaves the last layer silent
    small = replace(cfg.encoder, norm=norm, conv_channels=(4, 8), fc_sizes=(16,), threshold=0.3)
    encoder = SpikingEncoder(small)
    model = SpikingClassifier(encoder, 3)
    images = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(30) % 3
    data = SimpleNamespace(prepare=lambda x: x.float() / 255.0, num_classes=3)
    prototype_head(model, images, labels, data, cfg)
    assert model.training  # left in the caller's mode (train), though it encodes in eval
    model.eval()
    with torch.no_grad():
        trains = [encoder.trace(data.prepare(img[None]), 5).spikes[:, 0] for img in images]
    steps = torch.cat(trains).double()  # (30 * 5, 16)
    currents = steps @ model.head.weight.double().T
    if norm == "none":  # the bias does the centring and the weights the scaling
        currents = currents + model.head.bias.double()
        torch.testing.assert_close(currents.mean(0), torch.zeros(3, dtype=torch.float64))
        torch.testing.assert_close(currents.var(0), torch.ones(3, dtype=torch.float64))
    else:  # the batch norm's running statistics do both
        stats = model.head_norm.running_mean, model.head_norm.running_var
        expected = currents.mean(0), currents.var(0)
        for got, want in zip(stats, expected):
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
        counts = torch.stack([t.sum(0) for t in trains])
        torch.testing.assert_close(model.head.weight, class_prototypes(counts, labels, 3))
