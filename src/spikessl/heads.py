"""Fine-tuning's classifier head: what learns at which rate (``param_groups``), and its start:
with ``finetune.head_init=prototypes`` it is a nearest-class-mean classifier of the pretrained
spike counts before the first step, so the first steps refine a head that already classifies
instead of moving a random one (and the encoder with it)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from spikessl.config import Config, FinetuneConfig
from spikessl.data import Data
from spikessl.encoders import SpikingClassifier
from spikessl.evaluate import class_prototypes, precision


def param_groups(
    model: SpikingClassifier, ft: FinetuneConfig, pretrained: bool
) -> tuple[list[dict], bool]:
    """The optimiser's parameter groups, and whether the encoder is frozen. The supervised
    baseline trains every layer at ``ft.lr``; a pretrained encoder learns at ``ft.lr`` times
    ``ft.encoder_lr_factor`` beside the head at ``ft.lr``, or not at all (a linear probe, or
    a factor of 0)."""
    if not pretrained:
        return [{"params": model.parameters(), "lr": ft.lr}], False
    frozen = ft.linear_probe or ft.encoder_lr_factor == 0
    head = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [{"params": head, "lr": ft.lr}]
    if not frozen:
        groups.append({"params": model.encoder.parameters(), "lr": ft.lr * ft.encoder_lr_factor})
    return groups, frozen


@torch.no_grad()
def prototype_head(
    model: SpikingClassifier, images: Tensor, labels: Tensor, data: Data, cfg: Config
) -> None:
    """``finetune.head_init=prototypes``: a nearest-class-mean classifier before the first step.

    Row c of the head is class c's mean spike-count direction (``class_prototypes``), and the
    currents it gives on these images are centred and scaled to unit variance, by the batch
    norm's running statistics (``encoder.norm=batch``) or by its bias and weights (``none``):
    the class whose prototype is most similar gets the largest current and spikes most, in eval
    mode too.
    One pass of the encoder: the currents' mean and variance over images and time steps follow
    from the spikes' (``W m`` and ``w_c' S w_c``), so the spike trains are never kept.
    """
    T, bs, D = cfg.time_steps, cfg.eval_batch_size, model.encoder.latent_dim
    counts, total = [], torch.zeros(D, dtype=torch.float64, device=images.device)
    outer = torch.zeros(D, D, dtype=torch.float64, device=images.device)
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(images), bs):
            with precision(cfg, images.device):  # the encoder only: the sums stay float64
                spikes = model.encoder.trace(data.prepare(images[i : i + bs]), T).spikes
            counts.append(spikes.float().sum(0))
            steps = spikes.flatten(0, 1).double()  # (T*b, D)
            total += steps.sum(0)
            outer += steps.T @ steps
    finally:
        model.train(was_training)
    weight = class_prototypes(torch.cat(counts), labels, data.num_classes)
    n = T * len(images)
    m = total / n
    covariance = (outer - n * torch.outer(m, m)) / max(n - 1, 1)
    w = weight.double()
    mean = (w @ m).float()
    var = torch.einsum("cd,de,ce->c", w, covariance, w).clamp_min(0).float()
    if isinstance(model.head_norm, nn.BatchNorm1d):
        model.head.weight.copy_(weight)
        model.head_norm.running_mean.copy_(mean)
        model.head_norm.running_var.copy_(var)
    else:
        std = var.clamp_min(1e-12).sqrt()
        model.head.weight.copy_(weight / std[:, None])
        model.head.bias.copy_(-mean / std)
