"""Dataset loading (MNIST, Fashion-MNIST, CIFAR-10/100) and label splits.

Datasets are read straight from their standard on-disk layouts into uint8 tensors, without
torchvision, so that the loader stays small, fast and easy to audit:

* IDX files (MNIST, Fashion-MNIST) are parsed with ``numpy.frombuffer``.
* CIFAR pickles are read with a restricted unpickler: a downloaded pickle is untrusted input,
  and a plain ``pickle.load`` would execute whatever it names.

Local copies are validated by *structure* (counts, dtype, shape, label range), never by checksum:
re-encoded copies such as the shared JPEG-decoded CIFAR-10 are legitimate. Checksums are only
used to verify fresh *downloads*.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import http.client
import importlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "default_data_root",
    "get_info",
    "load_dataset",
    "read_idx",
    "stratified_split",
    "subset_per_class",
]

DOWNLOAD_TIMEOUT_S = 30.0
"""Socket timeout for downloads: long enough for slow mirrors, short enough to fail offline."""

_IDX_MAGIC_LABELS = 0x00000801  # unsigned bytes, 1 dimension
_IDX_MAGIC_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions
_CIFAR_ROW = 3 * 32 * 32


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


def get_info(name: str) -> DatasetInfo:
    """Look up a dataset by name, failing with the list of valid names on a typo."""
    info = DATASETS.get(name.strip().lower())
    if info is None:
        valid = ", ".join(DATASETS)
        raise ValueError(f"unknown dataset {name!r}: choose one of {valid}")
    return info


def default_data_root() -> Path:
    """Data folder used when none is given: ``$SPIKESSL_DATA`` if set, else ``./data``."""
    return Path(os.environ.get("SPIKESSL_DATA") or "./data")


# --------------------------------------------------------------------------------------------
# IDX (MNIST / Fashion-MNIST)
# --------------------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an unsigned-byte IDX file (gzip'd if the name ends in ``.gz``) into a uint8 array.

    The header is checked against the payload length so a truncated or padded file fails loudly
    instead of silently yielding garbage images.
    """
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise ValueError(
                f"{path}: not a valid gzip file or truncated ({exc}); delete it and download again"
            ) from exc
    if len(raw) < 4:
        raise ValueError(f"{path}: file too short for an IDX header ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in (_IDX_MAGIC_LABELS, _IDX_MAGIC_IMAGES):
        raise ValueError(
            f"{path}: bad IDX magic number 0x{magic:08x}; expected 0x{_IDX_MAGIC_LABELS:08x} "
            f"(labels) or 0x{_IDX_MAGIC_IMAGES:08x} (images) - is this really an IDX ubyte file?"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header truncated ({len(raw)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header announces shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header}; it is truncated or corrupt, delete it and download again"
        )
    # Copy so the result is writable (torch.from_numpy warns on read-only buffers).
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_path(path: Path) -> Path | None:
    """The existing plain or ``.gz`` variant of an IDX file (plain wins: it reads faster)."""
    gz = path.with_name(path.name + ".gz")
    for candidate in (path, gz):
        if candidate.is_file():
            return candidate
    return None


def _existing_idx(path: Path) -> Path:
    found = _idx_path(path)
    if found is None:  # only if the file vanished after _ensure_files looked
        raise FileNotFoundError(f"{path}[.gz] not found")
    return found


def _load_idx(info: DatasetInfo, folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    image_name, label_name = info.files(train)
    image_path, label_path = _existing_idx(folder / image_name), _existing_idx(folder / label_name)
    images, labels = read_idx(image_path), read_idx(label_path)
    size = info.image_size
    if images.ndim != 3 or images.shape[1:] != (size, size):
        raise ValueError(
            f"{image_path}: expected images of shape [N, {size}, {size}], got {images.shape}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{label_path}: expected a 1-D label file, got shape {labels.shape}")
    _check_labels(labels, len(images), info, f"{image_path} / {label_path}")
    return images[:, None], labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# CIFAR pickles
# --------------------------------------------------------------------------------------------


class _RefusedGlobal(ValueError):
    """A pickle named a global outside the allow-list (kept apart from corruption errors)."""


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    """Fetch ``name`` from the first importable module (numpy 2 renamed numpy.core to _core)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {modules} provides {name}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """Exactly the callables a CIFAR batch (numpy arrays in a dict) needs to be rebuilt."""
    reconstruct = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
    frombuffer = _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles bytes as _codecs.encode(str, "latin1") under protocol 2.
        ("_codecs", "encode"): codecs.encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else callable."""

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise _RefusedGlobal(
                f"{self._path}: refusing to unpickle {module}.{name}; a CIFAR batch only holds "
                "numpy arrays and lists, so this file is not a genuine CIFAR batch"
            )
        return found


def _load_pickle(path: Path) -> Any:
    """Unpickle ``path`` safely; any corruption becomes a ValueError naming the file."""
    try:
        with open(path, "rb") as file:
            return _RestrictedUnpickler(file, path).load()
    except _RefusedGlobal:
        raise
    except OSError:
        raise
    except Exception as exc:  # unpickling corrupt bytes can raise almost any exception type
        raise ValueError(
            f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc}); "
            "delete it and download again"
        ) from exc


def _read_cifar_batch(path: Path, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    key = info.label_key
    if not isinstance(batch, dict) or b"data" not in batch or key not in batch:
        raise ValueError(
            f"{path}: not a CIFAR batch: expected a dict with keys b'data' and {key!r}"
        )
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        raise ValueError(f"{path}: b'data' must be a uint8 numpy array")
    if data.ndim != 2 or data.shape[1] != _CIFAR_ROW:
        raise ValueError(f"{path}: b'data' must have shape [N, {_CIFAR_ROW}], got {data.shape}")
    try:
        labels = np.asarray(batch[key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{path}: {key!r} is not a list of integer labels ({exc})") from exc
    if labels.ndim != 1:
        raise ValueError(f"{path}: {key!r} must be 1-D, got shape {labels.shape}")
    _check_labels(labels, len(data), info, str(path))
    return data, labels


def _load_cifar(info: DatasetInfo, folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    batches = [_read_cifar_batch(folder / name, info) for name in info.files(train)]
    data = np.concatenate([b[0] for b in batches]) if len(batches) > 1 else batches[0][0]
    labels = np.concatenate([b[1] for b in batches])
    # Rows are R, G, B planes of 32x32 in row-major order, i.e. already CHW.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels


def _check_labels(labels: np.ndarray, count: int, info: DatasetInfo, source: str) -> None:
    """Structural validation shared by all formats; ``source`` names the offending file(s)."""
    if len(labels) != count:
        raise ValueError(f"{source}: {count} images but {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise ValueError(
            f"{source}: labels span [{labels.min()}, {labels.max()}] but {info.name} has "
            f"{info.num_classes} classes (valid range 0..{info.num_classes - 1})"
        )


# --------------------------------------------------------------------------------------------
# Locating and downloading files
# --------------------------------------------------------------------------------------------


def _fetch(url: str, dest: Path, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Write the body of ``url`` to ``dest``. The only function here touching the network."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, md5: str, dest: Path) -> None:
    """Download to a temp file beside ``dest`` and rename only once the MD5 matches.

    Readers therefore never see a partial or tampered file under the final name.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _fetch(url, tmp)
        actual = _md5(tmp)
        if actual != md5:
            raise ValueError(f"MD5 mismatch for {url}: got {actual}, expected {md5}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders only, refusing absolute paths, '..' and links."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            parts = PurePosixPath(member.name).parts
            if member.name.startswith(("/", "\\")) or ".." in parts or not parts:
                raise ValueError(f"{archive}: refusing unsafe member path {member.name!r}")
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise ValueError(f"{archive}: cannot read member {member.name!r}")
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
            else:
                raise ValueError(f"{archive}: refusing non-regular member {member.name!r}")


def _download_missing(info: DatasetInfo, root: Path, missing: list[Path]) -> None:
    """Fetch what is needed to create ``missing``: single IDX files, or a CIFAR archive."""
    if info.format == "idx":
        names = {path.name for path in missing}
        for url, md5 in info.downloads:
            file_name = url.rsplit("/", 1)[-1]
            if file_name.removesuffix(".gz") in names:
                _download(url, md5, root / info.folder / file_name)
        return
    root.mkdir(parents=True, exist_ok=True)
    for url, md5 in info.downloads:
        with tempfile.TemporaryDirectory(dir=root, prefix=".spikessl-download-") as tmp:
            archive = Path(tmp) / url.rsplit("/", 1)[-1]
            _download(url, md5, archive)
            extracted = Path(tmp) / "extracted"
            _safe_extract(archive, extracted)
            source, target = extracted / info.folder, root / info.folder
            if not source.is_dir():
                raise ValueError(f"{url}: archive has no {info.folder}/ folder")
            target.mkdir(parents=True, exist_ok=True)
            for item in source.iterdir():  # move, never overwrite files already present
                if not (target / item.name).exists():
                    os.replace(item, target / item.name)


def _missing_files(info: DatasetInfo, folder: Path, train: bool) -> list[Path]:
    paths = [folder / name for name in info.files(train)]
    if info.format == "idx":
        return [path for path in paths if _idx_path(path) is None]
    return [path for path in paths if not path.is_file()]


_DOWNLOAD_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zlib.error,
    tarfile.TarError,
    http.client.HTTPException,
)


def _ensure_files(info: DatasetInfo, root: Path, train: bool, download: bool) -> Path:
    """Return the dataset folder, downloading missing files if allowed, else explain the fix."""
    folder = root / info.folder
    missing = _missing_files(info, folder, train)
    if not missing:
        return folder
    reason = "automatic download is disabled (download=False)"
    cause: BaseException | None = None
    if download:
        try:
            _download_missing(info, root, missing)
        except _DOWNLOAD_ERRORS as exc:
            reason, cause = f"download failed: {exc}", exc
        else:
            missing = _missing_files(info, folder, train)
            if not missing:
                return folder
            reason = "the download did not produce them"
    suffix = "[.gz]" if info.format == "idx" else ""
    listing = "\n".join(
        f"  {folder / name}{suffix}{'  (missing)' if folder / name in missing else ''}"
        for name in info.files(train)
    )
    split = "train" if train else "test"
    raise FileNotFoundError(
        f"{info.name} ({split} split) not found under {root}; {reason}.\n"
        f"Expected files:\n{listing}\n"
        f"Point --data-dir or the SPIKESSL_DATA environment variable at a folder holding them "
        f"(the folder that contains {info.folder}/)."
    ) from cause


def load_dataset(
    name: str,
    root: str | Path | None = None,
    train: bool = True,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split as (images uint8 [N, C, H, W] contiguous, labels int64 [N]).

    Pixels stay uint8 so a dataset costs 1 byte per value in memory; scale and normalise on the
    device, per batch. Nothing is cached: callers that need the data twice should keep it.
    """
    info = get_info(name)
    root = Path(root).expanduser() if root is not None else default_data_root()
    folder = _ensure_files(info, root, train, download)
    loader = _load_idx if info.format == "idx" else _load_cifar
    images, labels = loader(info, folder, train)
    images = np.ascontiguousarray(images)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64, copy=False))


# --------------------------------------------------------------------------------------------
# Label splits
# --------------------------------------------------------------------------------------------


def _labels_array(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    array = torch.as_tensor(labels).detach().cpu().numpy()
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer tensor, got shape {tuple(array.shape)} "
            f"and dtype {array.dtype}"
        )
    return array


def _as_index_tensor(indices: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.sort(indices).astype(np.int64))


def stratified_split(
    labels: torch.Tensor,
    labelled_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (unlabelled, labelled), keeping class proportions in the labelled part.

    Semi-supervised runs compare label budgets, so every class gets ``round(fraction * count)``
    labelled samples (at least one), chosen by a seeded permutation for reproducibility. Both
    outputs are sorted int64 and together cover every index exactly once.
    """
    if not 0.0 < labelled_fraction <= 1.0:  # also rejects NaN
        raise ValueError(
            f"labelled_fraction must be in (0, 1], got {labelled_fraction}; "
            "use e.g. 0.1 for 10% labelled samples"
        )
    array = _labels_array(labels)
    rng = np.random.default_rng(seed)
    chosen = [np.empty(0, dtype=np.int64)]
    for cls in np.unique(array):
        members = np.flatnonzero(array == cls)
        count = max(1, round(labelled_fraction * members.size))
        chosen.append(rng.permutation(members)[:count])
    labelled = np.concatenate(chosen)
    is_unlabelled = np.ones(array.size, dtype=bool)
    is_unlabelled[labelled] = False
    return _as_index_tensor(np.flatnonzero(is_unlabelled)), _as_index_tensor(labelled)


def subset_per_class(labels: torch.Tensor, n_per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted int64 indices of ``n_per_class`` random samples from every class.

    Balanced subsets keep small tests and label-efficiency sweeps comparable across classes.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    array = _labels_array(labels)
    rng = np.random.default_rng(seed)
    chosen = [np.empty(0, dtype=np.int64)]
    for cls in np.unique(array):
        members = np.flatnonzero(array == cls)
        if members.size < n_per_class:
            raise ValueError(
                f"class {cls} has only {members.size} samples, fewer than n_per_class="
                f"{n_per_class}; lower n_per_class"
            )
        chosen.append(rng.permutation(members)[:n_per_class])
    return _as_index_tensor(np.concatenate(chosen))
