"""spikessl: self-supervised contrastive (SimCLR) pretraining of spiking neural networks.

Implements Bahari & Kheradpisheh, "Self-Supervised Contrastive Learning in Spiking Neural
Networks": LIF neurons with soft reset and a sigmoid surrogate gradient (eq. 6), NT-Xent on
spike-count latents (eq. 1), fine-tuning and kNN evaluation.

The names below load on first use (PEP 562): importing the package does not import
PyTorch, so the ``spikessl`` command parses its arguments before PyTorch loads (``--help``
answers at once) and a Ctrl-C during the seconds it takes reaches ``spikessl.cli.main``.
"""

from importlib import import_module

_WHERE = {
    "LIF": "spikessl.neurons",
    "EncoderConfig": "spikessl.architecture",
    "SpikingClassifier": "spikessl.encoders",
    "SpikingEncoder": "spikessl.encoders",
    "build_encoder": "spikessl.encoders",
    "nt_xent": "spikessl.losses",
}
__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'spikessl' has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
