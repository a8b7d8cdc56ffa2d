"""spikessl: self-supervised contrastive (SimCLR) pretraining of spiking neural networks.

Implements Bahari & Kheradpisheh, "Self-Supervised Contrastive Learning in Spiking Neural
Networks": LIF neurons with soft reset and a sigmoid surrogate gradient (eq. 6), NT-Xent on
spike-count latents (eq. 1), fine-tuning and kNN evaluation.
"""

from spikessl.encoders import EncoderConfig, SpikingClassifier, SpikingEncoder, build_encoder
from spikessl.losses import nt_xent
from spikessl.neurons import LIF

__all__ = [
    "LIF",
    "EncoderConfig",
    "SpikingClassifier",
    "SpikingEncoder",
    "build_encoder",
    "nt_xent",
]
__version__ = "0.1.0"
