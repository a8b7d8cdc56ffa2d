"""Tests for spikessl.data: parsers, corruption handling, downloads (faked), real data, splits.

No test touches the network: downloads go through ``dataset_downloads._fetch``, which is
monkeypatched.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spikessl import data, dataset_catalog, dataset_downloads
from spikessl.dataset_catalog import class_names

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ------------------------------------------------------------------------------------------
# Helpers that write small datasets in the standard layouts
# ------------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_idx_dataset(
    root: Path, folder: str = "MNIST/raw", n: int = 12, gz: bool = True, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write train and test IDX files; return the arrays written, per split."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(root / folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(root / folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        written[split] = (images, labels)
    return written


def write_batch(path: Path, batch: object, protocol: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return path


def cifar_batch(n: int, num_classes: int, rng: np.random.Generator, key: bytes = b"labels"):
    return {
        b"batch_label": b"testing batch",
        key: rng.integers(0, num_classes, size=n).tolist(),
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def make_cifar10(root: Path, n: int = 4, protocol: int = 2) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = cifar_batch(n, 10, rng)
        write_batch(folder / name, batches[name], protocol)
    write_batch(folder / "batches.meta", {b"label_names": [b"a"] * 10}, protocol)
    return batches


class RunsShell:
    """Unpickling this calls os.system: a refused load must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def md5_of(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


# ------------------------------------------------------------------------------------------
# Metadata and argument handling
# ------------------------------------------------------------------------------------------


def test_dataset_info_is_consistent():
    assert set(data.DATASETS) == {"mnist", "fashion-mnist", "cifar10", "cifar100"}
    for name, info in data.DATASETS.items():
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.channels
        assert all(0 < m < 1 and 0 < s < 1 for m, s in zip(info.mean, info.std, strict=True))
        assert info.files(True) and info.files(False)
        assert all(url.startswith("http") and len(md5) == 32 for url, md5 in info.downloads)
    assert data.DATASETS["cifar100"].num_classes == 100
    assert data.DATASETS["mnist"].mean == (0.1307,)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.DATASETS["mnist"].num_classes = 3  # type: ignore[misc]


def test_unknown_dataset_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'") as err:
        data.load_dataset("imagenet", tmp_path, download=False)
    for name in data.DATASETS:
        assert name in str(err.value)


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKESSL_DATA", str(tmp_path))
    assert data.default_data_root() == tmp_path
    monkeypatch.delenv("SPIKESSL_DATA")
    assert data.default_data_root() == Path("./data")
    monkeypatch.setenv("SPIKESSL_DATA", "~/datasets")  # quoted in a shell or a unit file
    assert data.default_data_root() == Path.home() / "datasets"


def test_root_none_uses_environment(monkeypatch, tmp_path):
    written = make_idx_dataset(tmp_path, n=3)
    monkeypatch.setenv("SPIKESSL_DATA", str(tmp_path))
    images, _ = data.load_dataset("mnist", download=False)
    np.testing.assert_array_equal(images[:, 0].numpy(), written["train"][0])


# ------------------------------------------------------------------------------------------
# Round trips through generated files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    out_images = data.read_idx(write_idx(tmp_path / "img", images, gz))
    out_labels = data.read_idx(str(write_idx(tmp_path / "lab", labels, gz)))
    assert out_images.dtype == np.uint8 and out_images.shape == (2, 3, 4)
    np.testing.assert_array_equal(out_images, images)
    np.testing.assert_array_equal(out_labels, labels)
    assert out_images.flags.writeable


@pytest.mark.parametrize(
    ("name", "folder", "gz"),
    [
        ("mnist", "MNIST/raw", True),
        ("fashion-mnist", "FashionMNIST/raw", False),
    ],
)
def test_load_idx_dataset(tmp_path, name, folder, gz):
    written = make_idx_dataset(tmp_path, folder, n=7, gz=gz)
    for train, split in ((True, "train"), (False, "test")):
        images, labels = data.load_dataset(name, tmp_path, train=train, download=False)
        assert images.shape == (7, 1, 28, 28) and images.dtype == torch.uint8
        assert images.is_contiguous()
        assert labels.shape == (7,) and labels.dtype == torch.int64
        np.testing.assert_array_equal(images[:, 0].numpy(), written[split][0])
        np.testing.assert_array_equal(labels.numpy(), written[split][1])


def test_load_idx_mixed_plain_and_gz(tmp_path):
    written = make_idx_dataset(tmp_path, n=5, gz=True)
    raw = tmp_path / "MNIST/raw"
    plain = raw / "train-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((raw / "train-labels-idx1-ubyte.gz").read_bytes()))
    (raw / "train-labels-idx1-ubyte.gz").unlink()
    _, labels = data.load_dataset("mnist", tmp_path, download=False)
    np.testing.assert_array_equal(labels.numpy(), written["train"][1])


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_load_cifar10_round_trip(tmp_path, protocol):
    batches = make_cifar10(tmp_path, n=4, protocol=protocol)
    images, labels = data.load_dataset("cifar10", tmp_path, train=True, download=False)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.uint8
    assert images.is_contiguous() and labels.dtype == torch.int64
    first = batches["data_batch_1"][b"data"][0]
    for channel in range(3):  # rows are R, G, B planes of 32x32
        plane = first[channel * 1024 : (channel + 1) * 1024].reshape(32, 32)
        np.testing.assert_array_equal(images[0, channel].numpy(), plane)
    last = batches["data_batch_5"]
    np.testing.assert_array_equal(images[-4:].reshape(4, -1).numpy(), last[b"data"])
    np.testing.assert_array_equal(labels[-4:].numpy(), last[b"labels"])
    test_images, test_labels = data.load_dataset("cifar10", tmp_path, train=False, download=False)
    assert test_images.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(test_labels.numpy(), batches["test_batch"][b"labels"])


def test_load_cifar100_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    batch = cifar_batch(6, 100, rng, key=b"fine_labels")
    batch[b"coarse_labels"] = [0] * 6
    write_batch(tmp_path / "cifar-100-python" / "train", batch)
    images, labels = data.load_dataset("cifar100", tmp_path, download=False)
    assert images.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(labels.numpy(), batch[b"fine_labels"])


# ------------------------------------------------------------------------------------------
# Corrupt files: every case is a ValueError that names the file
# ------------------------------------------------------------------------------------------


def test_truncated_gzip(tmp_path):
    path = tmp_path / "t.gz"
    full = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="gzip") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)
    # in a dataset folder, load_dataset says what to do about it, once
    make_idx_dataset(tmp_path, n=4)
    images = tmp_path / "MNIST/raw/train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:40])
    with pytest.raises(ValueError, match="gzip") as err:
        data.load_dataset("mnist", tmp_path, download=False)
    assert str(images) in str(err.value)
    assert str(err.value).count("download again") == 1


def test_not_gzip_bytes_in_gz(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip at all" * 10)
    with pytest.raises(ValueError, match="gzip") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_corrupt_gzip_stream(tmp_path):
    path = tmp_path / "c.gz"
    good = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8))))
    good[20:40] = bytes(20)  # damage the deflate stream behind a valid header
    path.write_bytes(bytes(good))
    with pytest.raises(ValueError) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("magic", [0x00000802, 0x12345678, 0x00000D03])
def test_wrong_magic(tmp_path, magic):
    path = tmp_path / "bad-magic"
    payload = bytearray(idx_bytes(np.zeros((2, 2, 2), np.uint8)))
    payload[:4] = magic.to_bytes(4, "big")
    path.write_bytes(bytes(payload))
    with pytest.raises(ValueError, match="magic") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("cut", [1, 100, 28 * 28 * 3 + 15])
def test_truncated_payload(tmp_path, cut):
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-cut])
    with pytest.raises(ValueError) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_a_header_whose_size_overflows_64_bits_names_the_file(tmp_path):
    path = tmp_path / "forged"  # dims 2^31 x 2^31 x 4: 2^64 bytes, which wraps to 0 in int64
    dims = b"".join(d.to_bytes(4, "big") for d in (2**31, 2**31, 4))
    path.write_bytes(bytes([0, 0, 8, 3]) + dims)
    with pytest.raises(ValueError, match="header announces") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_trailing_bytes_rejected(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(np.zeros(5, np.uint8)) + b"\x00")
    with pytest.raises(ValueError, match="corrupt") as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_idx_count_mismatch(tmp_path):
    make_idx_dataset(tmp_path, n=5)
    labels = tmp_path / "MNIST/raw/train-labels-idx1-ubyte"
    write_idx(labels, np.zeros(4, np.uint8), gz=True)
    with pytest.raises(ValueError, match="5 images but 4 labels") as err:
        data.load_dataset("mnist", tmp_path, download=False)
    assert "train-labels-idx1-ubyte" in str(err.value)
    assert "delete them and download again" in str(err.value)


def test_idx_label_out_of_range(tmp_path):
    make_idx_dataset(tmp_path, n=5)
    write_idx(tmp_path / "MNIST/raw/t10k-labels-idx1-ubyte", np.full(5, 10, np.uint8), gz=True)
    with pytest.raises(ValueError, match="10 classes") as err:
        data.load_dataset("mnist", tmp_path, train=False, download=False)
    assert "t10k-labels-idx1-ubyte" in str(err.value)
    assert "delete them and download again" in str(err.value)


def test_idx_wrong_image_size(tmp_path):
    make_idx_dataset(tmp_path, n=3)
    write_idx(tmp_path / "MNIST/raw/train-images-idx3-ubyte", np.zeros((3, 32, 32)), gz=True)
    with pytest.raises(ValueError, match="28, 28") as err:
        data.load_dataset("mnist", tmp_path, download=False)
    assert "train-images-idx3-ubyte" in str(err.value)
    assert "delete them and download again" in str(err.value)


def test_cifar_count_mismatch_and_label_range(tmp_path):
    make_cifar10(tmp_path, n=4)
    rng = np.random.default_rng(3)
    bad = cifar_batch(4, 10, rng)
    bad[b"labels"] = bad[b"labels"][:3]
    path = write_batch(tmp_path / "cifar-10-batches-py" / "data_batch_3", bad)
    with pytest.raises(ValueError, match="4 images but 3 labels") as err:
        data.load_dataset("cifar10", tmp_path, download=False)
    assert str(path) in str(err.value)

    bad = cifar_batch(4, 10, rng)
    bad[b"labels"][2] = 10
    path = write_batch(tmp_path / "cifar-10-batches-py" / "test_batch", bad)
    with pytest.raises(ValueError, match="10 classes") as err:
        data.load_dataset("cifar10", tmp_path, train=False, download=False)
    assert str(path) in str(err.value)
    assert "delete them and download again" in str(err.value)


def test_cifar_wrong_structure(tmp_path):
    make_cifar10(tmp_path, n=2)
    folder = tmp_path / "cifar-10-batches-py"
    write_batch(
        folder / "test_batch", {b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}
    )
    with pytest.raises(ValueError, match="uint8") as err:
        data.load_dataset("cifar10", tmp_path, train=False, download=False)
    assert "test_batch" in str(err.value)
    write_batch(folder / "test_batch", [1, 2, 3])
    with pytest.raises(ValueError, match="not a CIFAR batch"):
        data.load_dataset("cifar10", tmp_path, train=False, download=False)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_refused_not_executed(tmp_path, protocol):
    make_cifar10(tmp_path, n=2)
    marker = tmp_path / "pwned"
    batch = {b"data": RunsShell(marker), b"labels": [0]}
    path = write_batch(tmp_path / "cifar-10-batches-py" / "data_batch_2", batch, protocol)
    with pytest.raises(ValueError, match=r"refusing to unpickle \w+\.system") as err:
        data.load_dataset("cifar10", tmp_path, download=False)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_truncated_pickle(tmp_path):
    batches = make_cifar10(tmp_path, n=3)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(batches["test_batch"], protocol=2)[:5000])
    with pytest.raises(ValueError, match="corrupt or truncated pickle") as err:
        data.load_dataset("cifar10", tmp_path, train=False, download=False)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------
# Missing files and (faked) downloads
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_missing_files_message(tmp_path, name):
    info = data.DATASETS[name]
    with pytest.raises(FileNotFoundError) as err:
        data.load_dataset(name, tmp_path, download=False)
    message = str(err.value)
    for file_name in info.train_files:
        assert str(tmp_path / info.folder / file_name) in message
    assert "SPIKESSL_DATA" in message and "--data-dir" in message
    assert "download=False" in message
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_partially_missing_lists_only_what_is_asked(tmp_path):
    make_idx_dataset(tmp_path, n=2)
    (tmp_path / "MNIST/raw/t10k-images-idx3-ubyte.gz").unlink()
    data.load_dataset("mnist", tmp_path, train=True, download=False)  # train split still loads
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte\[\.gz\]  \(missing\)"):
        data.load_dataset("mnist", tmp_path, train=False, download=False)


def test_download_offline_raises_file_not_found(tmp_path, monkeypatch):
    urls = []

    def offline(url, dest, timeout=30.0):
        urls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(dataset_downloads, "_fetch", offline)
    with pytest.raises(FileNotFoundError, match="download failed: network is unreachable") as err:
        data.load_dataset("mnist", tmp_path, train=False, download=True)
    assert "SPIKESSL_DATA" in str(err.value)
    assert "t10k-images-idx3-ubyte" in str(err.value)
    assert urls == ["https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz"]
    assert list(tmp_path.iterdir()) == []  # no partial files, no empty folders left

    with pytest.raises(FileNotFoundError, match="download failed"):
        data.load_dataset("cifar10", tmp_path / "a" / "root", download=True)
    assert urls[-1] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)  # the user's own folders stay
    with pytest.raises(FileNotFoundError, match="download failed"):
        data.load_dataset("mnist", tmp_path, download=True)
    assert [p.name for p in tmp_path.rglob("*")] == ["MNIST", "raw"]


def test_download_md5_mismatch(tmp_path, monkeypatch):
    def wrong_bytes(url, dest, timeout=30.0):
        Path(dest).write_bytes(b"not the real file")

    monkeypatch.setattr(dataset_downloads, "_fetch", wrong_bytes)
    with pytest.raises(FileNotFoundError, match="MD5 mismatch") as err:
        data.load_dataset("fashion-mnist", tmp_path, download=True)
    assert "SPIKESSL_DATA" in str(err.value)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # bad download discarded


def test_download_idx_success(tmp_path, monkeypatch):
    source = tmp_path / "mirror"
    written = make_idx_dataset(source, n=4, gz=True)
    blobs = {p.name: p.read_bytes() for p in (source / "MNIST/raw").iterdir()}
    info = data.DATASETS["mnist"]
    downloads = tuple((url, md5_of(blobs[url.rsplit("/", 1)[-1]])) for url, _ in info.downloads)
    patched = dict(data.DATASETS, mnist=dataclasses.replace(info, downloads=downloads))
    monkeypatch.setattr(dataset_catalog, "DATASETS", patched)
    fetched = []

    def fake_fetch(url, dest, timeout=30.0):
        fetched.append(url.rsplit("/", 1)[-1])
        Path(dest).write_bytes(blobs[url.rsplit("/", 1)[-1]])

    monkeypatch.setattr(dataset_downloads, "_fetch", fake_fetch)
    root = tmp_path / "root"
    images, labels = data.load_dataset("mnist", root, train=True, download=True)
    np.testing.assert_array_equal(labels.numpy(), written["train"][1])
    assert sorted(fetched) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    np.testing.assert_array_equal(images[:, 0].numpy(), written["train"][0])
    assert sorted(p.name for p in (root / "MNIST/raw").iterdir()) == sorted(fetched)
    data.load_dataset("mnist", root, train=True, download=True)  # present now: no refetch
    assert len(fetched) == 2


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, payload in members.items():
            entry = tarfile.TarInfo(name)
            entry.size = len(payload)
            tar.addfile(entry, io.BytesIO(payload))
    return buffer.getvalue()


def patch_cifar10_download(monkeypatch, archive: bytes) -> None:
    info = data.DATASETS["cifar10"]
    url = info.downloads[0][0]
    replaced = dataclasses.replace(info, downloads=((url, md5_of(archive)),))
    monkeypatch.setattr(dataset_catalog, "DATASETS", dict(data.DATASETS, cifar10=replaced))
    monkeypatch.setattr(
        dataset_downloads, "_fetch", lambda url, dest, timeout=30.0: dest.write_bytes(archive)
    )


def test_download_cifar_archive_success(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {name: cifar_batch(3, 10, rng) for name in names}
    members = {f"cifar-10-batches-py/{n}": pickle.dumps(b, protocol=2) for n, b in batches.items()}
    patch_cifar10_download(monkeypatch, tar_gz(members))
    images, labels = data.load_dataset("cifar10", tmp_path, train=False, download=True)
    assert images.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(labels.numpy(), batches["test_batch"][b"labels"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-py"]  # temp removed


def tar_gz_link(name: str, target: str, kind: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        entry = tarfile.TarInfo(name)
        entry.type, entry.linkname = kind, target
        tar.addfile(entry)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("archive", "needle"),
    [  # one archive per case: the first unsafe member stops extraction
        (lambda: tar_gz({"../escaped": b"x"}), "unsafe member path"),
        (lambda: tar_gz({"/abs": b"y"}), "unsafe member path"),
        (lambda: tar_gz({"a/../../escaped": b"x"}), "unsafe member path"),
        (lambda: tar_gz_link("link", "/etc/passwd", tarfile.SYMTYPE), "non-regular member"),
        (lambda: tar_gz_link("hard", "../escaped", tarfile.LNKTYPE), "non-regular member"),
    ],
)
def test_download_cifar_archive_with_unsafe_path(tmp_path, monkeypatch, archive, needle):
    root = tmp_path / "root"
    root.mkdir()
    patch_cifar10_download(monkeypatch, archive())
    with pytest.raises(FileNotFoundError, match=needle):
        data.load_dataset("cifar10", root, download=True)
    assert not (tmp_path / "escaped").exists()
    assert list(root.iterdir()) == []


# ------------------------------------------------------------------------------------------
# Real shared datasets (must be present in CI: a missing copy is a failure, not a skip)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_root() -> Path:
    env = os.environ.get("SPIKESSL_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not (root / "MNIST").is_dir() or not (root / "cifar-10-batches-py").is_dir():
        pytest.fail(
            f"shared datasets not found at {root}: expected MNIST/raw/ and cifar-10-batches-py/ "
            "there; set SPIKESSL_DATA to the folder holding them"
        )
    return root


def test_real_mnist(shared_root):
    images, labels = data.load_dataset("mnist", shared_root, train=True, download=False)
    assert images.shape == (60000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert torch.bincount(labels).tolist() == MNIST_TRAIN_COUNTS
    assert 0.12 < images.float().mean().item() / 255 < 0.14  # matches DATASETS mean 0.1307
    images, labels = data.load_dataset("mnist", shared_root, train=False, download=False)
    assert images.shape == (10000, 1, 28, 28)
    assert torch.bincount(labels).tolist() == MNIST_TEST_COUNTS


def test_real_cifar10(shared_root):
    images, labels = data.load_dataset("cifar10", shared_root, train=True, download=False)
    assert images.shape == (50000, 3, 32, 32) and images.dtype == torch.uint8
    assert images.is_contiguous()
    assert torch.bincount(labels).tolist() == [5000] * 10
    means = images[::10].float().mean(dim=(0, 2, 3)) / 255
    expected = torch.tensor(data.DATASETS["cifar10"].mean)
    assert torch.allclose(means, expected, atol=0.02)  # channel order really is R, G, B
    images, labels = data.load_dataset("cifar10", shared_root, train=False, download=False)
    assert images.shape == (10000, 3, 32, 32)
    assert torch.bincount(labels).tolist() == [1000] * 10


def test_real_mnist_split(shared_root):
    _, labels = data.load_dataset("mnist", shared_root, train=True, download=False)
    unlabelled, labelled = data.stratified_split(labels, 0.1, seed=0)
    assert len(unlabelled) + len(labelled) == 60000
    counts = torch.bincount(labels[labelled], minlength=10)
    expected = torch.tensor(MNIST_TRAIN_COUNTS) * 0.1
    assert (counts - expected).abs().max() <= 1


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------


@pytest.fixture
def imbalanced_labels() -> torch.Tensor:
    counts = [50, 30, 7, 1, 13, 2]
    labels = np.repeat(np.arange(len(counts)), counts)
    return torch.from_numpy(np.random.default_rng(5).permutation(labels))


@pytest.mark.parametrize("fraction", [0.01, 0.2, 0.5, 0.9, 1.0])
def test_stratified_split_properties(imbalanced_labels, fraction):
    unlabelled, labelled = data.stratified_split(imbalanced_labels, fraction, seed=3)
    n = len(imbalanced_labels)
    for part in (unlabelled, labelled):
        assert part.dtype == torch.int64
        assert torch.equal(part, part.sort().values)
    assert len(np.intersect1d(unlabelled.numpy(), labelled.numpy())) == 0
    assert torch.equal(torch.cat([unlabelled, labelled]).sort().values, torch.arange(n))
    class_counts = torch.bincount(imbalanced_labels)
    picked = torch.bincount(imbalanced_labels[labelled], minlength=len(class_counts))
    assert (picked >= 1).all()
    assert ((picked - fraction * class_counts).abs() <= 1).all()
    if fraction == 1.0:
        assert len(unlabelled) == 0


def test_stratified_split_seeding(imbalanced_labels):
    first = data.stratified_split(imbalanced_labels, 0.3, seed=7)
    again = data.stratified_split(imbalanced_labels, 0.3, seed=7)
    other = data.stratified_split(imbalanced_labels, 0.3, seed=8)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[1], other[1])


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01, 2.0, float("nan")])
def test_stratified_split_rejects_bad_fraction(imbalanced_labels, fraction):
    with pytest.raises(ValueError, match="labelled_fraction"):
        data.stratified_split(imbalanced_labels, fraction)


def test_split_rejects_bad_labels():
    with pytest.raises(ValueError, match="1-D integer"):
        data.stratified_split(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="1-D integer"):
        data.subset_per_class(torch.zeros(4), 1)


def test_subset_per_class(imbalanced_labels):
    labels = imbalanced_labels[imbalanced_labels != 3]  # drop the single-sample class
    subset = data.subset_per_class(labels, 2, seed=1)
    assert subset.dtype == torch.int64 and torch.equal(subset, subset.sort().values)
    assert torch.bincount(labels[subset]).tolist() == [2, 2, 2, 0, 2, 2]
    assert torch.equal(subset, data.subset_per_class(labels, 2, seed=1))
    assert not torch.equal(subset, data.subset_per_class(labels, 2, seed=2))
    with pytest.raises(ValueError, match="class 5 has only 2 samples"):
        data.subset_per_class(labels, 3)
    with pytest.raises(ValueError, match="n_per_class"):
        data.subset_per_class(labels, 0)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_catalog_train_size_is_the_real_training_split(name):
    # SPIKESSL_DATA points at ../shared/datasets (conftest): the real files
    _, labels = data.load_dataset(name, download=False)
    assert len(labels) == data.get_info(name).train_size


@pytest.mark.parametrize("key", ["train_limit", "test_limit"])
def test_a_limit_beyond_the_smallest_class_says_which_limit_fits(tmp_path, key):
    from spikessl.config import load_config

    written = make_idx_dataset(tmp_path, n=100)
    split = "train" if key == "train_limit" else "test"
    fits = 10 * int(np.bincount(written[split][1], minlength=10).min())
    assert fits > 0  # seed 0 draws every class

    def load(limit: int) -> data.Data:
        limits = {"train_limit": 0, "test_limit": 0, key: limit}
        cfg = load_config("mnist-quick", {"data": {"root": str(tmp_path), **limits}})
        return data.load_data(cfg, torch.device("cpu"))

    fix = rf"data\.{key}={fits + 10} asks for .* set data\.{key} <= {fits}, or data\.{key}=0"
    with pytest.raises(ValueError, match=fix):
        load(fits + 10)
    assert len(getattr(load(fits), f"{split}_labels")) == fits


def test_class_names_known_and_fallback():
    assert class_names("cifar10", 10)[3] == "cat"
    assert class_names("MNIST", 10)[7] == "7"
    assert class_names("fashion-mnist", 10)[9] == "ankle boot"
    assert class_names("cifar100", 100)[42] == "42"


@pytest.mark.parametrize(
    ("limit", "fraction"), [(100, 0.2), (310, 0.2), (320, 0.2), (333, 0.2), (510, 0.5), (520, 0.5)]
)
def test_the_pretraining_batch_check_counts_what_loading_gives(limit, fraction):
    """``check_pretraining_fills`` predicts, without loading, the unlabelled part's size that
    ``load_data`` gives: it refuses exactly the limits whose part is under one batch, and
    names the smallest limit that fills one."""
    from spikessl.config import load_config

    overrides = [f"data.train_limit={limit}", f"data.labelled_fraction={fraction}"]
    cfg = load_config("mnist-quick", [*overrides, "pretrain.batch_size=256"])
    unlabelled = len(data.load_data(cfg, torch.device("cpu")).unlabelled)
    smallest = {0.2: 320, 0.5: 520}[fraction]  # 26 unlabelled a class: 32 - 6, 52 - 26
    if unlabelled >= 256:
        data.check_pretraining_fills(cfg)
    else:
        fix = f"; set data.train_limit={smallest}, or pretrain.batch_size={unlabelled}"
        with pytest.raises(ValueError, match=f", {unlabelled} unlabelled in all once.*{fix}"):
            data.check_pretraining_fills(cfg)
    assert (unlabelled >= 256) == (limit >= smallest)


def test_the_pretraining_batch_check_answers_at_once_past_what_the_dataset_holds():
    from spikessl.config import load_config

    cfg = load_config("mnist-quick", ["data.train_limit=100", "data.labelled_fraction=0.999999"])
    with pytest.raises(ValueError, match="unlabelled .* set a lower data.labelled_fraction$"):
        data.check_pretraining_fills(cfg)  # it searched ~10 s for a limit of 125,000,010
