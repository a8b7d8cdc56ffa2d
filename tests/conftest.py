"""Tests read the real datasets from ../shared/datasets unless SPIKESSL_DATA says otherwise;
``swept``: one real tiny grid that several test modules read."""

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
os.environ.setdefault("SPIKESSL_DATA", str(SHARED))


@pytest.fixture(scope="session")
def swept(tmp_path_factory):
    """A real two-cell grid over the fine-tuning lr, then the baseline added on a rerun
    (shared by the sweep, kept and dry-run tests: read it, copy what a test changes)."""
    from tiny import forbidden, tiny_base

    from spikessl import pipeline
    from spikessl.grid import expand_grid
    from spikessl.sweep import run_sweep

    tmp = tmp_path_factory.mktemp("sweep")
    cells = expand_grid(tiny_base(), ["finetune.lr=1e-3,1e-2"])
    logs: list[str] = []
    first = run_sweep(cells, tmp / "records", tmp / "runs", progress=False, log=logs.append)
    supervised_calls, real_finetune = [], pipeline.finetune

    def supervised_only(cfg, checkpoint, run_dir, progress, resume=None):
        assert checkpoint is None and resume is None
        supervised_calls.append(run_dir)
        return real_finetune(cfg, checkpoint, run_dir, progress, resume=resume)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "pretrain", forbidden)
        mp.setattr(pipeline, "finetune", supervised_only)
        second = run_sweep(
            cells, tmp / "records", tmp / "runs", baseline=True, progress=False, log=logs.append
        )
    return {
        "cells": cells,
        "first": first,
        "second": second,
        "tmp": tmp,
        "logs": logs,
        "supervised_calls": supervised_calls,
    }
