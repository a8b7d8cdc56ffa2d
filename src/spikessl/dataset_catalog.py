"""The datasets ``spikessl`` knows: shape, normalisation, file names and official downloads.

Facts only; ``spikessl.data`` looks a dataset up by name and loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["DATASETS", "DatasetInfo"]


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
