"""Configs for small real runs shared by test modules: the smallest (sweep, reproduce) and
``small_config`` (pipeline, labelled)."""

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


def small_config(tmp_path, **overrides):
    """``mnist-quick`` at T=4 on 3,000 training and 1,000 test images, on the CPU, writing under
    ``tmp_path``; ``overrides``: top-level values, or sections merged key by key."""
    from spikessl.config import load_config

    base = {
        "time_steps": 4,
        "device": "cpu",
        "out_dir": str(tmp_path),
        "data": {"train_limit": 3000, "test_limit": 1000},
        "pretrain": {"epochs": 9, "batch_size": 64},
        "finetune": {"epochs": 3, "batch_size": 64},
        "knn": {"k": 20},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            base.setdefault(key, {}).update(value)
        else:
            base[key] = value
    return load_config("mnist-quick", base)
