"""Run directories: unique default names, refusals, the lock between processes, the summary."""

import json
import re
import threading

import pytest
import yaml

from spikessl.config import load_config
from spikessl.runs import claim_run_dir, default_run_dir, finished, new_run_dir, write_summary


@pytest.fixture
def cfg(tmp_path):
    return load_config("mnist-quick", [f"out_dir={tmp_path / 'runs'}"])


def test_default_run_dir_is_named_after_command_dataset_and_time_and_never_reused(
    cfg, tmp_path, monkeypatch
):
    first = default_run_dir(cfg, "pretrain")
    assert first.parent == tmp_path / "runs"
    assert re.fullmatch(r"pretrain-mnist-\d{8}-\d{6}", first.name)
    assert first.is_dir()  # claimed: a second process started now gets another name
    monkeypatch.setattr("spikessl.runs.time.strftime", lambda _: "20261205-101010")
    names = [default_run_dir(cfg, "pretrain").name for _ in range(3)]  # in the same second
    stem = "pretrain-mnist-20261205-101010"
    assert names == [stem, f"{stem}-2", f"{stem}-3"]


def test_new_run_dir_writes_the_resolved_config(cfg, tmp_path):
    run = new_run_dir(cfg, "pretrain", tmp_path / "run")
    assert run == tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["name"] == "mnist"
    assert not finished(run)


def test_new_run_dir_refuses_a_finished_run_and_an_unfinished_one_unless_resuming(cfg, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--resume"):
        new_run_dir(cfg, "pretrain", run)
    assert new_run_dir(cfg, "pretrain", run, resuming=True) == run
    summary = write_summary(run, {"command": "pretrain", "knn_accuracy": 90.0})
    assert finished(run) and summary["run_dir"] == str(run)
    assert json.loads((run / "summary.json").read_text()) == summary
    with pytest.raises(FileExistsError, match="already holds a finished run"):
        new_run_dir(cfg, "pretrain", run, resuming=True)
    assert (run / "checkpoint.pt").read_bytes() == b"x"  # refused, and nothing lost


def test_a_second_claim_is_refused_or_waits_until_the_first_lets_go(tmp_path):
    pytest.importorskip("fcntl")
    run = tmp_path / "run"
    held, release, done = threading.Event(), threading.Event(), []

    def first():
        with claim_run_dir(run):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    with pytest.raises(ValueError, match="another spikessl process is writing"), claim_run_dir(run):
        pass
    waited = []

    def wait():
        waited.append(True)
        release.set()  # the first holder finishes while this one waits

    with claim_run_dir(run, wait=wait):
        done.append(True)
    thread.join(10)
    assert waited == [True] and done == [True]
    assert (tmp_path / ".locks" / "run.lock").exists()  # beside the run, not in it
    assert not run.exists()
