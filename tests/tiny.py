"""Overrides for the smallest real run, shared by the sweep and reproduce tests."""

# A few seconds per stage on a busy 2-core CPU: 160 unlabelled images (5 steps), 40 labelled.
TINY = [
    "time_steps=2",
    "device=cpu",
    "data.train_limit=200",
    "data.test_limit=50",
    "encoder.conv_channels=[4,8]",
    "encoder.fc_sizes=[16]",
    "pretrain.epochs=1",
    "pretrain.batch_size=32",
    "finetune.epochs=1",
    "finetune.batch_size=32",
    "knn.k=5",
]


def tiny_base(*extra: str) -> dict:
    """The ``mnist-quick`` preset shrunk by ``TINY`` (and ``extra``), as a config tree."""
    from spikessl.config import load_config
    from spikessl.config_yaml import to_dict

    return to_dict(load_config("mnist-quick", [*TINY, *extra]))


def forbidden(*args, **kwargs):
    """Monkeypatched over a training function where a test must train nothing."""
    raise AssertionError("nothing should train here")
