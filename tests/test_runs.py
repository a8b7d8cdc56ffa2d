"""Run directories: unique default names, refusals, the lock between processes, the summary."""

import json
import re
import sys
import threading
import time

import pytest
import torch
import yaml

from spikessl.config import load_config
from spikessl.runs import (
    claim_run_dir,
    default_run_dir,
    finished,
    new_run_dir,
    run_stage,
    write_summary,
)


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


def forbidden(*_args, **_kwargs):
    raise AssertionError("nothing should train here")


def test_a_corrupt_summary_without_a_checkpoint_is_kept_not_retrained(tmp_path):
    run_dir = tmp_path / "pretrain-abc"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text('{"command": "pre')  # cut short, checkpoint gone
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(ValueError, match="no checkpoint.pt to redo"):
        run_stage("pretrain", run_dir, lambda _: None, forbidden)
    assert (run_dir / "metrics.jsonl").exists()  # the run's files are all still there


def test_a_run_killed_before_its_first_checkpoint_is_started_afresh(tmp_path):
    run_dir = tmp_path / "pretrain-abc"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 1\n")  # what a run writes before training
    (run_dir / ".metrics.jsonl.123-abcd.tmp").write_text("{")  # and a write cut short

    def run(resume):
        assert resume is None and not run_dir.exists()  # the leftovers were removed
        run_dir.mkdir()
        return write_summary(run_dir, {"wall_seconds": 1.0})

    assert run_stage("pretrain", run_dir, lambda _: None, run)["wall_seconds"] == 1.0


@pytest.mark.parametrize("stray", ["notes.txt", "data"])
def test_a_folder_holding_other_files_is_never_deleted(tmp_path, stray):
    run_dir = tmp_path / "pretrain"  # e.g. `pipeline --run-dir .` in a project of the user's
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 1\n")
    (run_dir / stray).mkdir() if stray == "data" else (run_dir / stray).write_text("mine")
    with pytest.raises(ValueError, match=f"not a spikessl run's \\({stray}\\).*move them away"):
        run_stage("pretrain", run_dir, lambda _: None, forbidden)
    assert (run_dir / stray).exists() and (run_dir / "config.yaml").exists()


def test_a_file_where_the_stage_folder_belongs_is_refused(tmp_path):
    (tmp_path / "pretrain").write_text("mine")
    with pytest.raises(ValueError, match="is a file, where a run folder belongs"):
        run_stage("pretrain", tmp_path / "pretrain", lambda _: None, forbidden)
    assert (tmp_path / "pretrain").read_text() == "mine"


def test_resumed_wall_time_counts_each_epoch_once(tmp_path):
    # a run may change the state it resumes from (fit() extended it in place before it took
    # copies): the seconds before the interruption are read before it runs, or the resumed
    # epochs would count twice
    # epoch 1 trained 10 s and was evaluated in 2 s (eval_seconds); then 5 s of epoch 2
    loop = {
        "history": [{"epoch": 1, "seconds": 10.0, "eval_seconds": 2.0}],
        "sums": {"seconds": 5.0},
    }
    checkpoint = {"model": {}, "config": {}, "step": 3, "loop": loop}
    torch.save(checkpoint, tmp_path / "checkpoint.pt")

    def resumed_run(resume):  # what fit() once did to the state it resumes from
        resume["loop"]["history"].append({"epoch": 2, "seconds": 7.0})
        resume["loop"]["sums"]["seconds"] = 7.0
        return {"wall_seconds": 8.0}

    summary = run_stage("pretrain", tmp_path, lambda _: None, resumed_run)
    assert summary["wall_seconds"] == 10.0 + 2.0 + 5.0 + 8.0 and summary["resumed"] is True
    assert json.loads((tmp_path / "summary.json").read_text())["wall_seconds"] == 25.0


@pytest.mark.skipif(sys.platform == "win32", reason="no flock")
def test_a_stage_another_process_is_running_is_waited_for_not_deleted(tmp_path):
    run_dir, logs, reran, got = tmp_path / "pretrain-abc", [], [], []

    def run(resume):
        reran.append(resume)
        return {"wall_seconds": 1.0}

    second = threading.Thread(
        target=lambda: got.append(run_stage("pretrain", run_dir, logs.append, run))
    )
    with claim_run_dir(run_dir):  # the first process, in its 1st epoch
        run_dir.mkdir()
        (run_dir / "metrics.jsonl").write_text("")  # no checkpoint yet: looks killed
        second.start()
        for _ in range(500):
            if logs:
                break
            time.sleep(0.01)
        assert logs == [
            f"  pretrain: another process is running {run_dir}; waiting for it to finish"
        ]
        assert run_dir.is_dir() and not got  # waiting, not deleting
        (run_dir / "summary.json").write_text('{"wall_seconds": 2.0}')  # the first one ends
    second.join(10)
    assert got == [{"wall_seconds": 2.0}] and reran == []  # its run reused, not redone
    assert logs[-1] == f"  pretrain: finished earlier, reusing {run_dir}"
