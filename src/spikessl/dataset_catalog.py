"""The datasets ``spikessl`` knows: shape, normalisation, file names and official downloads,
looked up by name (``get_info``), and the checks of a config against them that need no
loading (``check_encoder_fits``, ``check_pretraining_fills``).

No PyTorch here: a sweep's grid is checked before it loads. ``spikessl.data`` loads the
datasets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # spikessl.config imports this module
    from spikessl.config import Config

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "check_encoder_fits",
    "check_pretraining_fills",
    "get_info",
]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one dataset: shape, normalisation constants and where its files live.

    ``mean``/``std`` are per channel, for pixels scaled to [0, 1]. ``folder`` is relative to the
    data root; ``train_files``/``test_files`` are relative to ``folder`` (IDX files may also be
    present with a ``.gz`` suffix). ``downloads`` holds ``(url, md5)`` of the official sources.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    format: str  # "idx" or "cifar"
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    downloads: tuple[tuple[str, str], ...]
    train_size: int  # images in the official training split
    label_key: bytes = b"labels"  # CIFAR pickles only

    def files(self, train: bool = True) -> tuple[str, ...]:
        """File names (relative to ``folder``) holding the requested split."""
        return self.train_files if train else self.test_files


_IDX_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_IDX_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_KRIZ_URL = "https://www.cs.toronto.edu/~kriz/"


def _idx_downloads(base: str, md5s: tuple[str, str, str, str]) -> tuple[tuple[str, str], ...]:
    names = (*_IDX_TRAIN, *_IDX_TEST)
    return tuple((f"{base}{name}.gz", md5) for name, md5 in zip(names, md5s, strict=True))


DATASETS: Mapping[str, DatasetInfo] = MappingProxyType(
    {
        "mnist": DatasetInfo(
            name="mnist",
            train_size=60000,
            num_classes=10,
            channels=1,
            image_size=28,
            mean=(0.1307,),
            std=(0.3081,),
            format="idx",
            folder="MNIST/raw",
            train_files=_IDX_TRAIN,
            test_files=_IDX_TEST,
            downloads=_idx_downloads(
                _MNIST_URL,
                (
                    "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                    "d53e105ee54ea40749a09fcbcd1e9432",
                    "9fb629c4189551a2d022fa330f9573f3",
                    "ec29112dd5afa0611ce80d1b7f02629c",
                ),
            ),
        ),
        "fashion-mnist": DatasetInfo(
            name="fashion-mnist",
            train_size=60000,
            num_classes=10,
            channels=1,
            image_size=28,
            mean=(0.2860,),
            std=(0.3530,),
            format="idx",
            folder="FashionMNIST/raw",
            train_files=_IDX_TRAIN,
            test_files=_IDX_TEST,
            downloads=_idx_downloads(
                _FASHION_URL,
                (
                    "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                    "25c81989df183df01b3e8a0aad5dffbe",
                    "bef4ecab320f06d8554ea6380940ec79",
                    "bb300cfdad3c16e7a12a480ee83cd310",
                ),
            ),
        ),
        "cifar10": DatasetInfo(
            name="cifar10",
            train_size=50000,
            num_classes=10,
            channels=3,
            image_size=32,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            format="cifar",
            folder="cifar-10-batches-py",
            train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
            test_files=("test_batch",),
            downloads=((f"{_KRIZ_URL}cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        ),
        "cifar100": DatasetInfo(
            name="cifar100",
            train_size=50000,
            num_classes=100,
            channels=3,
            image_size=32,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            format="cifar",
            folder="cifar-100-python",
            train_files=("train",),
            test_files=("test",),
            downloads=(
                (f"{_KRIZ_URL}cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
            ),
            label_key=b"fine_labels",
        ),
    }
)


CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": (
        "T-shirt/top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    ),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}


def class_names(dataset: str, num_classes: int) -> tuple[str, ...]:
    """Human-readable class names of ``dataset``; ``"0"``, ``"1"``, ... when none are known."""
    names = CLASS_NAMES.get(dataset.strip().lower())
    if names is None or len(names) != num_classes:
        return tuple(str(i) for i in range(num_classes))
    return names


def get_info(name: str) -> DatasetInfo:
    """Look up a dataset by name, failing with the list of valid names on a typo."""
    info = DATASETS.get(name.strip().lower())
    if info is None:
        valid = ", ".join(DATASETS)
        raise ValueError(f"unknown dataset {name!r}: choose one of {valid}")
    return info


def check_encoder_fits(cfg: Config) -> None:
    """A ``ValueError`` when the encoder's input shape is not the dataset's, or a colour
    augmentation would see grey images (before loading, before any stage trains)."""
    from spikessl.views import COLOUR_ONLY

    info = get_info(cfg.data.name)
    if (cfg.encoder.in_channels, cfg.encoder.image_size) != (info.channels, info.image_size):
        raise ValueError(
            f"encoder expects {cfg.encoder.in_channels}x{cfg.encoder.image_size}px images but "
            f"{cfg.data.name} has {info.channels}x{info.image_size}: set encoder.in_channels="
            f"{info.channels} encoder.image_size={info.image_size} or use its preset"
        )
    for key, views in (
        ("augment.views", cfg.augment.views),
        ("finetune.augment", cfg.finetune.augment),
    ):
        if info.channels != 3 and (colour := [n for n in dict.fromkeys(views) if n in COLOUR_ONLY]):
            raise ValueError(
                f"{key}={'+'.join(views)}: {' and '.join(COLOUR_ONLY[n] for n in colour)} "
                f"need{'s' if len(colour) == 1 else ''} RGB images, and {cfg.data.name} has "
                f"{info.channels} channel(s): remove {' and '.join(map(repr, colour))} from {key}"
            )


def check_pretraining_fills(cfg: Config) -> None:
    """With ``data.train_limit``: a ``ValueError``, before loading, when the unlabelled part
    it leaves cannot fill one pretraining batch (the counts ``_limited`` and
    ``stratified_split`` give: the limit is split evenly over the classes)."""
    limit, lf, batch = cfg.data.train_limit, cfg.data.labelled_fraction, cfg.pretrain.batch_size
    if not limit:
        return
    info = get_info(cfg.data.name)
    classes = info.num_classes

    def unlabelled(per_class: int) -> int:
        return classes * (per_class - max(1, round(lf * per_class)))

    per_class = max(limit // classes, 1)
    have = unlabelled(per_class)
    if have >= batch:
        return
    # the fewest images a class for a batch: p - round(lf p) >= q holds from about
    # (q - 0.5) / (1 - lf) on; a step or two settles round()'s ties
    q = -(-batch // classes)
    need = max(per_class, math.floor((q - 0.5) / (1 - lf)))
    for _ in range(3):
        need += unlabelled(need) < batch
    fixes = [f"pretrain.batch_size={have}"] if have >= 2 else []
    if need * classes <= 0.9 * info.train_size:  # MNIST's smallest class: 90% of its share
        fixes.insert(0, f"data.train_limit={need * classes}")
    else:  # more than every class of the dataset holds
        fixes.append("a lower data.labelled_fraction")
    raise ValueError(
        f"data.train_limit={limit} keeps {per_class} image(s) of each of {classes} classes, "
        f"{have} unlabelled in all once data.labelled_fraction={lf} is labelled: fewer than "
        f"one pretraining batch (pretrain.batch_size={batch}); set " + ", or ".join(fixes)
    )
