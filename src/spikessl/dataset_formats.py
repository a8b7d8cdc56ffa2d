"""Readers of the datasets' on-disk formats, into uint8 arrays, without torchvision.

* IDX files (MNIST, Fashion-MNIST) are parsed with ``numpy.frombuffer``.
* CIFAR pickles are read with a restricted unpickler: a downloaded pickle is untrusted input,
  and a plain ``pickle.load`` would execute whatever it names.

Files are validated by *structure* (counts, dtype, shape, label range), never by checksum:
re-encoded copies such as the shared JPEG-decoded CIFAR-10 are legitimate. A file that fails
raises ``ValueError`` naming it and what is wrong; what to do about it (delete the files and
download again) is ``data.load_dataset``'s to add, as the one that knows where they came from.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import math
import pickle
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from spikessl.dataset_catalog import DatasetInfo

__all__ = ["idx_path", "load_cifar", "load_idx", "read_idx"]

_IDX_MAGIC_LABELS = 0x00000801  # unsigned bytes, 1 dimension
_IDX_MAGIC_IMAGES = 0x00000803  # unsigned bytes, 3 dimensions
_CIFAR_ROW = 3 * 32 * 32


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
            raise ValueError(f"{path}: not a valid gzip file or truncated ({exc})") from exc
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
    expected = math.prod(dims)  # Python ints: a forged header cannot wrap around
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: header announces shape {dims} ({expected} bytes of data) but the file holds "
            f"{len(raw) - header}: it is truncated or corrupt"
        )
    # Copy so the result is writable (torch.from_numpy warns on read-only buffers).
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def idx_path(path: Path) -> Path | None:
    """The existing plain or ``.gz`` variant of an IDX file (plain wins: it reads faster)."""
    gz = path.with_name(path.name + ".gz")
    for candidate in (path, gz):
        if candidate.is_file():
            return candidate
    return None


def _existing_idx(path: Path) -> Path:
    found = idx_path(path)
    if found is None:  # only if the file vanished after ensure_files looked
        raise FileNotFoundError(f"{path}[.gz] not found")
    return found


def load_idx(info: DatasetInfo, folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
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
            f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})"
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


def load_cifar(info: DatasetInfo, folder: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
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
