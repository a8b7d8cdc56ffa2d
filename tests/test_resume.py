"""Never lose a run: stop a real process (SIGTERM, SIGKILL), resume, get the same weights."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from spikessl import pipeline
from spikessl.checkpoints import load_checkpoint
from spikessl.cli import main
from spikessl.config import load_config

SETTINGS = [
    "time_steps=3",
    "pretrain.epochs=3",
    "pretrain.batch_size=32",
    "data.train_limit=1000",
    "data.test_limit=100",
    "knn.k=5",
    "checkpoint_every=4",
    "device=cpu",
]


def checkpoint_step(run_dir) -> int:
    try:
        return torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    except Exception:  # not there yet, or being replaced
        return -1


RUN = ["pretrain", "--config", "mnist-quick", *SETTINGS, "--no-progress", "--run-dir"]


def start(run_dir):
    cmd = [sys.executable, "-m", "spikessl", *RUN, str(run_dir)]
    # as many threads as the in-process reference: sums split over threads round differently
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(proc, run_dir, min_step: int) -> None:
    deadline = time.time() + 120
    while checkpoint_step(run_dir) < min_step:
        assert proc.poll() is None, f"run ended before step {min_step}: {proc.stderr.read()}"
        assert time.time() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    assert main([*RUN, str(run_dir)]) == 0
    return run_dir


def assert_same_run(run_dir, reference) -> None:
    a = load_checkpoint(run_dir)
    b = load_checkpoint(reference)
    assert a["step"] == b["step"] == 3 * (800 // 32)
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    metrics = [
        [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (run_dir, reference)
    ]
    assert [m["epoch"] for m in metrics[0]] == [1, 2, 3]
    assert [m["loss"] for m in metrics[0]] == [m["loss"] for m in metrics[1]]
    summaries = [json.loads((d / "summary.json").read_text()) for d in (run_dir, reference)]
    assert summaries[0]["knn_accuracy"] == summaries[1]["knn_accuracy"]


def test_sigterm_checkpoints_and_resume_matches(tmp_path, reference, capsys, monkeypatch):
    real, given = pipeline.pretrain, []

    def numbers(loop):  # what the loop had when it stopped (rates: a tensor, left out)
        sums = {k: v for k, v in loop["sums"].items() if k != "rates"}
        return json.dumps([loop["history"], sums])

    def pretrain(cfg, run_dir, progress, resume):  # keep what the caller hands over
        given.append((resume, numbers(resume["loop"])))
        return real(cfg, run_dir, progress, resume)

    monkeypatch.setattr(pipeline, "pretrain", pretrain)
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for_checkpoint(proc, run_dir, 4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert f"--resume {run_dir}" in err  # tells the user how to continue
    stopped_at = checkpoint_step(run_dir)
    assert 4 <= stopped_at < 75
    assert not (run_dir / "summary.json").exists()
    assert main(["pretrain", "--resume", str(run_dir), "--no-progress"]) == 0
    assert_same_run(run_dir, reference)
    # the loop resumed from copies: the caller's checkpoint dict is as it was loaded
    ((resume, before),) = given
    assert numbers(resume["loop"]) == before and len(json.loads(before)[0]) < 3


def test_sigkill_resumes_from_last_checkpoint(tmp_path, reference, capsys):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for_checkpoint(proc, run_dir, 8)
    proc.kill()
    proc.communicate(timeout=60)
    step = checkpoint_step(run_dir)
    assert step >= 8
    config_yaml = run_dir / "config.yaml"
    written = config_yaml.read_text()
    config_yaml.write_text(written.replace("epochs: 3", "epochs: 9", 1))  # edited by hand
    assert main(["pretrain", "--resume", str(run_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"pretrain: resuming {run_dir} after step {step} (epoch " in err
    assert f"{config_yaml} is not the config the run trains with (config.yaml -> " in err
    assert "checkpoint: pretrain.epochs: 9 -> 3): --resume continues with its checkpoint" in err
    assert_same_run(run_dir, reference)  # 3 epochs, as the checkpoint says
    assert config_yaml.read_text() == written


@pytest.mark.skipif(sys.platform == "win32", reason="no flock")
def test_a_run_another_process_is_writing_is_refused_untouched(tmp_path, reference, capsys):
    run_dir = tmp_path / "run"
    proc = start(run_dir)
    wait_for_checkpoint(proc, run_dir, 4)
    assert main([*RUN, str(run_dir)]) == 2  # the same command typed twice
    assert "another spikessl process is writing" in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "let it finish" in err and "resuming" not in err  # refused before it says so
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert_same_run(run_dir, reference)  # the refused attempts changed nothing


def test_unfinished_run_dir_is_not_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    torch.save({"model": {}, "config": {}}, run_dir / "checkpoint.pt")
    code = main(["pretrain", "--config", "mnist-quick", *SETTINGS, "--run-dir", str(run_dir)])
    assert code == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_refuses_overrides_and_wrong_command(tmp_path, reference, capsys):
    assert main(["pretrain", "--resume", str(reference), "time_steps=5"]) == 2
    assert "own config" in capsys.readouterr().err
    assert main(["supervised", "--resume", str(reference)]) == 2
    assert "pretrain run" in capsys.readouterr().err
    assert main(["finetune", "--resume", str(reference), "--pretrained", str(tmp_path)]) == 2
    assert f"which holds the weights it started from: drop --pretrained {tmp_path}" in (
        capsys.readouterr().err
    )


def test_resume_refuses_another_run_dir(tmp_path, reference, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.jsonl").write_text("kept\n")
    argv = ["pretrain", "--resume", str(reference), "--run-dir", str(other), "--no-progress"]
    assert main(argv) == 2
    assert "drop --run-dir" in capsys.readouterr().err
    assert (other / "metrics.jsonl").read_text() == "kept\n"  # the other run is untouched


def test_resume_names_the_directory_and_refuses_a_finished_run(reference, capsys):
    ckpt = reference / "checkpoint.pt"
    assert main(["pretrain", "--resume", str(ckpt), "--no-progress"]) == 2
    fix = f"not a file: spikessl pretrain --resume {reference}"
    assert fix in capsys.readouterr().err
    assert main(["pretrain", "--resume", str(reference), "--no-progress"]) == 2
    assert "is a finished run" in capsys.readouterr().err


def test_resume_says_what_it_needs_of_a_path_that_holds_no_run(tmp_path, capsys):
    def error(path) -> str:
        assert main(["pretrain", "--resume", str(path), "--no-progress"]) == 2
        return capsys.readouterr().err

    assert "no such folder; pass the folder of an interrupted run" in error(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("mine")
    err = error(tmp_path / "notes.txt")
    assert "takes a run's folder, not a file" in err and "--resume " + str(tmp_path) not in err
    (tmp_path / "empty").mkdir()
    assert "no checkpoint.pt in it, so nothing to resume" in error(tmp_path / "empty")


def test_a_run_stopped_by_on_divergence_resumes_only_with_warn(tmp_path, monkeypatch, capsys):
    real, calls = pipeline.nt_xent, []

    def jumps_after_epoch_1(z1, z2, t):  # 25 steps an epoch; a constant moves the loss only
        calls.append(1)
        return real(z1, z2, t) + (10.0 if len(calls) > 25 else 0.0)

    monkeypatch.setattr(pipeline, "nt_xent", jumps_after_epoch_1)
    run = tmp_path / "run"
    stop = [a for a in RUN if a != "checkpoint_every=4"] + [str(run)]
    with pytest.warns(RuntimeWarning, match="pretrain epoch 2: loss .* training is diverging"):
        assert main([*stop, "on_divergence=stop"]) == 2
    err = capsys.readouterr().err
    assert "pretrain: its loss diverged at epoch 2" in err and "stopped (on_divergence" in err
    assert len(calls) == 50 and not (run / "summary.json").exists()
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 2  # stops at once
    assert "diverged at epoch 2" in capsys.readouterr().err and len(calls) == 50
    resume = ["pretrain", "--resume", str(run), "--no-progress", "on_divergence=warn"]
    assert main(resume) == 0  # a setting that leaves the result as it is may change
    assert len(calls) == 75 and (run / "summary.json").exists()
    assert load_checkpoint(run)["epoch"] == 3


def test_nonfinite_loss_stops_or_skips(tmp_path, monkeypatch):
    real, calls = pipeline.nt_xent, []

    def third_step_nan(z1, z2, t):  # a loss that blows up at step 2
        calls.append(1)
        loss = real(z1, z2, t)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(pipeline, "nt_xent", third_step_nan)
    settings = [s for s in SETTINGS if "checkpoint" not in s] + ["pretrain.epochs=1"]
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, step 2.*lower lr"):
        pipeline.pretrain(load_config("mnist-quick", settings), tmp_path / "stop", progress=False)
    calls.clear()
    skip = load_config("mnist-quick", [*settings, "on_nonfinite=skip"])
    with pytest.warns(RuntimeWarning, match="step 2: loss is nan; step skipped"):
        pipeline.pretrain(skip, tmp_path / "skip", progress=False)
    record = json.loads((tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["skipped_steps"] == 1
    assert math.isfinite(record["loss"])  # the skipped step is left out of the mean


def test_resume_reads_the_checkpoint_again_once_the_run_is_claimed(
    tmp_path, reference, capsys, monkeypatch
):
    """Another process may checkpoint the run between --resume's first read and the lock:
    what resumes is the checkpoint there once the run is this process's."""
    import contextlib
    import shutil

    from spikessl import cli

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    (run_dir / "summary.json").unlink()  # unfinished, at its last step
    early = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    late_step = early["step"]
    early["step"] = early["loop"]["step"] = 5
    torch.save(early, tmp_path / "early.pt")
    late = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes((tmp_path / "early.pt").read_bytes())

    @contextlib.contextmanager
    def claimed_after_the_other_process_moved_on(command, where):
        (run_dir / "checkpoint.pt").write_bytes(late)  # the other process's last checkpoint
        yield

    resumed = []
    monkeypatch.setattr(cli, "_claimed", claimed_after_the_other_process_moved_on)
    monkeypatch.setattr(cli, "_dispatch", lambda *a: resumed.append(a[4]["step"]) or {})
    assert main(["pretrain", "--resume", str(run_dir), "--no-progress"]) == 0
    assert resumed == [late_step]
    assert f"resuming {run_dir} after step {late_step} " in capsys.readouterr().err
