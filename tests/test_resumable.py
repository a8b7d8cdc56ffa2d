"""Tests for spikessl.resumable: atomic checkpoint files, RNG states, deferred signals."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from spikessl import resumable
from spikessl.resumable import atomic_save, deferred_signals, rng_state, set_rng_state

# ------------------------------------------------------------------------------------------
# atomic_save
# ------------------------------------------------------------------------------------------


def test_atomic_save_writes_a_loadable_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    obj = {"weights": torch.arange(6.0).reshape(2, 3), "epoch": 3, "config": {"a": [1, 2]}}
    atomic_save(obj, path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["weights"], obj["weights"])
    assert loaded["epoch"] == 3 and loaded["config"] == {"a": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    atomic_save({"epoch": 4}, path)  # overwriting works too
    assert torch.load(path, weights_only=True) == {"epoch": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_atomic_save_failure_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def failing_save(obj: object, fh: object) -> None:
        fh.write(b"half a checkpoint")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(resumable.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(3))


# ------------------------------------------------------------------------------------------
# rng_state / set_rng_state
# ------------------------------------------------------------------------------------------


def _draws() -> tuple:
    return (torch.rand(4).tolist(), random.random(), np.random.rand(3).tolist())


def test_rng_state_round_trip_repeats_every_generator() -> None:
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    _draws()  # move every generator away from its seed
    state = rng_state()
    first = _draws()
    _draws()
    set_rng_state(state)
    assert _draws() == first  # torch, python and numpy all resume at the saved point


def test_rng_state_survives_a_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    atomic_save({"rng": rng_state()}, tmp_path / "c.pt")
    first = _draws()
    set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])  # as fit loads it
    assert _draws() == first


# ------------------------------------------------------------------------------------------
# deferred_signals
# ------------------------------------------------------------------------------------------


def test_deferred_signals_record_sigterm_and_restore_the_handler() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with deferred_signals() as received:
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process if not deferred
        assert received == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before


def test_deferred_signals_off_the_main_thread_change_nothing() -> None:
    seen = []

    def worker() -> None:  # signal handlers can only be set on the main thread
        with deferred_signals() as received:
            seen.append((received, signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [([], before)]


def test_a_run_saved_with_more_gpus_resumes_on_fewer(monkeypatch) -> None:
    set_calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: set_calls.append((s, i)))
    state = {**rng_state(), "cuda": ["gpu0", "gpu1"]}  # saved on a 2-GPU machine
    set_rng_state(state)  # torch.cuda.set_rng_state_all raised IndexError here
    assert set_calls == [("gpu0", 0)]
