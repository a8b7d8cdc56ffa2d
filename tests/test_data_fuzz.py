"""Property tests of the dataset parsers: random and mutated files raise ValueError, or parse.

No input may crash a parser with anything but the documented error (a ValueError naming
the file), and a file that parses must be what its header says.
"""

import gzip
import pickle
import tempfile
from pathlib import Path

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from spikessl.data import load_dataset, read_idx

SETTINGS = hypothesis.settings(
    max_examples=100,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)


def idx_bytes(images: np.ndarray) -> bytes:
    dims = images.shape
    head = bytes([0, 0, 8, len(dims)]) + b"".join(int(d).to_bytes(4, "big") for d in dims)
    return head + images.astype(np.uint8).tobytes()


VALID = idx_bytes(np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4))


def parse(data: bytes, name: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        try:
            return read_idx(path)
        except ValueError as err:
            assert name in str(err)  # the error names the file
            return None


@SETTINGS
@hypothesis.given(st.binary(max_size=200))
def test_random_bytes_as_idx(data):
    parse(data, "x-idx3-ubyte")
    parse(data, "x-idx3-ubyte.gz")


@SETTINGS
@hypothesis.given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    st.integers(0, len(VALID)),
)
def test_mutated_idx(flips, cut):
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    data = bytes(data[:cut])
    for name, blob in (("m-idx3-ubyte", data), ("m-idx3-ubyte.gz", gzip.compress(data))):
        out = parse(blob, name)
        if out is not None:  # whatever parses is consistent with its own header
            dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3]))
            assert out.shape == dims and out.dtype == np.uint8


@SETTINGS
@hypothesis.given(st.binary(max_size=300))
def test_random_bytes_as_cifar_batch(data):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cifar-10-batches-py"
        folder.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta"]:
            (folder / name).write_bytes(data)
        with pytest.raises(ValueError, match="cifar-10-batches-py"):
            load_dataset("cifar10", tmp, train=True, download=False)


@SETTINGS
@hypothesis.given(st.integers(0, 2000), st.integers(0, 255))
def test_mutated_cifar_batch(pos, value):
    rng = np.random.default_rng(0)
    batch = {
        b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
        b"labels": [1, 2, 3, 4],
        b"batch_label": b"x",
        b"filenames": [b"a"] * 4,
    }
    blob = bytearray(pickle.dumps(batch, protocol=2))
    pos %= len(blob)
    blob[pos] = value
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cifar-10-batches-py"
        folder.mkdir()
        for i in range(1, 6):
            (folder / f"data_batch_{i}").write_bytes(bytes(blob))
        (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}))
        try:
            images, labels = load_dataset("cifar10", tmp, train=True, download=False)
        except ValueError:
            return
        assert images.shape == (20, 3, 32, 32) and labels.shape == (20,)
        assert int(labels.min()) >= 0 and int(labels.max()) < 10
