"""What the paper measures and reports, as data: its datasets, the settings Tables I-III vary
around its best one with their accuracies, Table IV's, and the budgets ``spikessl reproduce``
runs that protocol at (``spikessl.protocol`` turns them into sweep cells).

Free of PyTorch, so ``spikessl --help`` lists the choices without loading it.
"""

from __future__ import annotations

DATASETS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
BUDGETS = ("quick", "paper")
# budget "quick": the preset plus these (a first look, not the paper's numbers). MNIST
# fine-tunes for 2 epochs so that its grid takes about an hour on 2 CPU cores
# (docs/results/README.md, "Reading `mnist-quick`"); CIFAR-10's records are of 3.
QUICK = {
    "mnist": ["pretrain.epochs=1", "finetune.epochs=2"],
    "cifar10": ["pretrain.epochs=1", "finetune.epochs=3"],
}
FRACTIONS = (0.01, 0.05, 0.1, 0.2, 1.0)  # label efficiency, first seed
SEED_FRACTIONS = (0.01, 0.1)  # every other seed: where a margin over the baseline matters most
DEFAULT_SEEDS = (0, 1, 2)

# The paper's accuracies in %, (MNIST, CIFAR-10). Tables I-III: setting -> accuracy.
BEST = (94.23, 62.24)  # T=30, batch 256, rotate-noise: "Ours" in Table IV
TABLES = {
    ("I", "time steps", "time_steps"): {"10": (78.21, 51.63), "20": (91.54, 57.84), "30": BEST},
    ("II", "pretraining batch size", "pretrain.batch_size"): {
        "64": (87.45, 52.76),
        "128": (90.87, 57.58),
        "256": BEST,
    },
    ("III", "augmentations", "augment.views"): {
        "crop-rotate": (92.43, 61.21),
        "crop-noise": (93.86, 60.12),
        "rotate-noise": BEST,
    },
}
CITED = {"[21] spiking self-supervised": (93.06, None), "[22] SimCLR ANN": (None, 60.1)}
