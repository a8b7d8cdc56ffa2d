"""Tests for the command line: help, clear errors (exit 2), and a real run on tiny MNIST.

The smoke runs go through ``spikessl.cli.main`` on a few hundred real MNIST images at T=2,
so every subcommand is exercised end to end in a few seconds on a CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from spikessl import arguments, cli, command_config, distributed, pipeline
from spikessl.config import load_config
from spikessl.readme import GENERATED

# tests/conftest.py points SPIKESSL_DATA at ../shared/datasets; absolute, since tests chdir
DATA = Path(os.environ["SPIKESSL_DATA"]).resolve()

TINY = [
    "time_steps=2",
    "pretrain.epochs=1",
    "pretrain.batch_size=32",
    "data.train_limit=400",
    "data.test_limit=100",
    "knn.k=5",
    "eval_batch_size=256",
]


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``cli.main(argv)`` -> (exit code, stdout, stderr); SystemExit counts as a return."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def result_json(stdout: str) -> dict:
    """The JSON object printed on stdout, tolerating other lines around it.

    (Whether stdout holds nothing but the JSON is tested on its own.)
    """
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    result, _ = json.JSONDecoder().raw_decode("\n".join(lines[start:]))
    return result


# ------------------------------------------------------------------------------------------
# --help
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *arguments.COMMANDS])
def test_help(command: str | None) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    code, out, err = run_main(argv)
    assert code == 0, err
    assert "usage:" in out
    if command is None:
        for name in arguments.COMMANDS:
            assert name in out
    else:
        reads_a_run = command in ("finetune", "knn", "probe", "neighbors")
        assert "key=value" in out and "--config" in out
        assert ("--pretrained" in out) == reads_a_run
        assert ("pretrained run's own config" in out) == reads_a_run
        # only the commands that write runs take a place to write them
        assert ("--run-dir" in out) == (command not in ("knn", "probe", "neighbors"))
        assert ("grid axis" in out) == (command == "sweep")


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--help"], ""),
        (["sweep", "--help"], ""),
        (["pretrain", "--bogus"], "unrecognized arguments: --bogus"),
        (["pretrain", "pretrain.lrr=1"], "unknown config key 'pretrain.lrr'"),
        (["sweep", "time_steps=10", "seed=0,x"], "grid cell seed=x: seed='x' has the wrong type"),
        (["pipeline", "encoder.in_channels=3"], "encoder expects 3x28px images but mnist"),
        (["pipeline", "finetune.augment=crop+gray"], "remove 'gray' from finetune.augment"),
        (["pretrain", "data.train_limit=20"], "fewer than one pretraining batch"),
        (["finetune", "--pretrained", "run", "--config", "paper-mnist", "knn.k=0"], "knn.k=0 is"),
        (["finetune", "data.name=cifar10"], "finetune needs --pretrained RUN_DIR"),
    ],
)
def test_help_and_usage_errors_answer_before_pytorch_loads(argv, said, tmp_path) -> None:
    # a fresh interpreter: this one has PyTorch loaded already
    probe = f"""import sys
from spikessl.cli import main
try:
    code = main({argv!r})
except SystemExit as stop:
    code = stop.code
print(code, sorted(m for m in ("torch", "kornia", "numpy") if m in sys.modules))"""
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}  # this spikessl
    run = [sys.executable, "-c", probe]  # in tmp_path: a command that ran writes nothing here
    done = subprocess.run(run, capture_output=True, text=True, env=env, cwd=tmp_path)
    helps = "--help" in argv
    assert done.stdout.splitlines()[-1] == f"{0 if helps else 2} []", done.stderr
    assert said in done.stderr and (helps or "error: " in done.stderr)


def test_a_data_override_that_is_not_a_section_with_data_dir(tmp_path) -> None:
    code, _, err = run_main(["knn", "data=3", "--data-dir", str(tmp_path), "--no-progress"])
    assert code == 2 and "data is a section" in err and "Traceback" not in err


def test_reproduce_with_a_data_override_that_is_not_a_section(tmp_path) -> None:
    argv = ["reproduce", "--dataset", "mnist", "--budget", "quick", "--dry-run"]
    assert_error([*argv, "--data-dir", str(tmp_path), "data=foo"], "data is a section")


def test_an_unknown_option_shows_the_commands_own_usage() -> None:
    code, _, err = run_main(["knn", "--bogus"])
    assert code == 2 and err.startswith("usage: spikessl knn") and "--bogus" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (
            ["sweep", "paper-mnist", "time_steps=10,30"],
            "must look like key=value or key=v1,v2: --config paper-mnist",
        ),
        (["sweep", "time_steps="], "'time_steps=' must look like key=value"),
        (["pretrain", "--config", ""], "--config is empty"),
    ],
)
def test_arguments_that_name_nothing_say_what_to_write(argv, needle) -> None:
    assert_error([*argv, "--no-progress"], needle)


def test_device_option_wins_over_a_device_override_in_every_command(monkeypatch) -> None:
    from spikessl import commands, sweep

    args = arguments.parser().parse_args(["pretrain", "--device", "cpu", "device=cuda"])
    assert command_config.config(args, None).device == "cpu"
    grids = []
    monkeypatch.setattr(sweep, "run_sweep", lambda cells, *_args, **_kw: grids.append(cells) or [])
    args = arguments.parser().parse_args(["sweep", "--device", "cpu", "device=cuda", "seed=0,1"])
    commands.sweep(args, command_config.config(args, None), progress=False)
    assert [c.config.device for c in grids[0]] == ["cpu", "cpu"]


def test_pipeline_refuses_torchrun(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_main(["pipeline", "--config", "mnist-quick", "--no-progress"])
    assert code == 2 and "pipeline runs in one process" in err


def test_sweep_and_its_dry_run_refuse_torchrun(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = ["sweep", *TINY, "seed=0,1", "--records", str(tmp_path / "r")]
    for dry in ([], ["--dry-run"]):
        code, _, err = run_main([*argv, "--run-dir", str(tmp_path / "runs"), *dry])
        assert code == 2 and "sweep runs in one process" in err
    assert not any(tmp_path.iterdir())


def test_a_command_that_writes_no_run_refuses_run_dir() -> None:
    code, _, err = run_main(["knn", "--run-dir", "runs/x", "--no-progress"])
    assert code == 2 and "unrecognized arguments: --run-dir" in err


def test_python_dash_m_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "spikessl", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "pretrain" in proc.stdout and "finetune" in proc.stdout


def test_no_command_is_a_usage_error() -> None:
    code, _, err = run_main([])
    assert code == 2 and "usage:" in err


def test_a_key_set_twice_on_the_command_line_is_named_and_the_last_wins() -> None:
    args = arguments.parser().parse_args(["pretrain", "time_steps=2", "knn.k=3", " time_steps=6"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert command_config.config(args, None).time_steps == 6
    assert err.getvalue() == "pretrain: time_steps is set 2 times:  time_steps=6 wins\n"
    args = arguments.parser().parse_args(["knn", "knn.k=1", "knn.k=2", "knn.k=3"])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert command_config.config(args, None).knn.k == 3
    assert err.getvalue() == "knn: knn.k is set 3 times: knn.k=3 wins\n"  # said once


def test_overrides_may_follow_options(monkeypatch) -> None:
    # `spikessl pretrain time_steps=2 --no-progress pretrain.epochs=1` is the natural way to
    # type a command; argparse's nargs="*" positional takes only the first run of overrides.
    seen = {}

    def fake_pretrain(cfg, run_dir, progress, resume=None):
        seen["cfg"], seen["run_dir"] = cfg, run_dir
        return {"command": "pretrain"}

    monkeypatch.setattr(pipeline, "pretrain", fake_pretrain)
    code, out, err = run_main(
        [
            "pretrain",
            "time_steps=2",
            "--no-progress",
            "pretrain.epochs=1",
            "--run-dir",
            "somewhere",
            "knn.k=5",
        ]
    )
    assert code == 0, err
    cfg = seen["cfg"]
    assert (cfg.time_steps, cfg.pretrain.epochs, cfg.knn.k) == (2, 1, 5)
    assert seen["run_dir"] == "somewhere"
    assert json.loads(out) == {"command": "pretrain"}


def test_finetune_requires_pretrained() -> None:
    code, _, err = run_main(["finetune", "--no-progress"])
    assert code == 2 and "--pretrained" in err


# ------------------------------------------------------------------------------------------
# Clear errors, exit status 2, nothing on stdout
# ------------------------------------------------------------------------------------------


def assert_error(argv: list[str], *needles: str) -> str:
    code, out, err = run_main(argv)
    assert code == 2, (code, out, err)
    assert out == ""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert lines, err
    assert lines[0].startswith(f"spikessl {argv[0]}: error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["pretrain", "tim_steps=3"], ["tim_steps", "Did you mean 'time_steps'?"]),
        (["pretrain", "pretrain.epoch=1"], ["pretrain.epoch", "epochs"]),
        (["pretrain", "time_steps=abc"], ["time_steps"]),
        (["pretrain", "time_steps=0"], ["time_steps"]),
        (["pretrain", "pretrain.batch_size=1"], ["pretrain.batch_size"]),
        (["pretrain", "time_steps"], ["key=value"]),
        (["pretrain", "augment.views=crop-rotat"], ["crop-rotate"]),
        (["supervised", "encoder.norm=foo"], ["encoder.norm"]),
        (["knn", "knn.k=0"], ["knn.k"]),
        (["pretrain", "--config", "paper-mnst"], ["paper-mnst", "Did you mean 'paper-mnist'?"]),
        (["pipeline", "--config", "nope"], ["nope", "paper-mnist"]),
        (["pretrain", "--device", "gpu"], ["device", "gpu"]),
        (["pretrain", "device=cuda:3"], ["CUDA_VISIBLE_DEVICES=3 and device=cuda"]),
    ],
)
def test_bad_settings_exit_2(argv: list[str], needles: list[str]) -> None:
    assert_error(argv, *needles)


def test_a_checkpoint_passed_as_config(runs: dict) -> None:
    checkpoint = str(runs["root"] / "pre" / "checkpoint.pt")
    assert_error(["pretrain", "--config", checkpoint], "is not a YAML text file")


def test_a_run_dir_that_cannot_be_written(tmp_path) -> None:
    (tmp_path / "file").write_text("")
    run_dir = str(tmp_path / "file" / "run")  # below a file: no folder can be made
    assert_error(["pretrain", *TINY, "--run-dir", run_dir], "Not a directory", "--run-dir")


def test_mps_where_there_is_none(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device=mps but no Apple GPU"):
        distributed.resolve_device("mps")


def test_missing_config_file(tmp_path) -> None:
    assert_error(["pretrain", "--config", str(tmp_path / "mine.yaml")], "mine.yaml", "not found")


def test_invalid_yaml_config_file(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("time_steps: [1, 2\n")
    assert_error(["pretrain", "--config", str(path)], "bad.yaml", "YAML")


@pytest.mark.parametrize("command", ["finetune", "knn"])
@pytest.mark.parametrize("name", ["no-such-run", "no-such-run/checkpoint.pt"])
def test_missing_pretrained_checkpoint(tmp_path, command: str, name: str) -> None:
    missing = tmp_path / name
    assert_error(
        [command, "--pretrained", str(missing), "--no-progress"],
        f"no such file or folder as {missing}",
    )
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("time_steps: 4\n")
    assert_error([command, "--pretrained", str(tmp_path / "run")], "no checkpoint.pt in")
    assert_error(
        [command, "--pretrained", str(tmp_path / "run" / "config.yaml")],
        f"config.yaml is a yaml file, not a checkpoint: pass the run's folder, {tmp_path / 'run'}",
    )


def test_pretrained_file_that_is_not_a_checkpoint(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    path.write_text("not a checkpoint\n")
    assert_error(["knn", "--pretrained", str(path)], str(path))


@pytest.mark.parametrize(
    "payload",
    [{"weights": torch.zeros(2)}, torch.zeros(3), {"model": {}, "config": "paper-mnist"}],
    ids=["dict-without-config", "bare-tensor", "config-not-a-dict"],
)
def test_foreign_torch_file_as_pretrained(tmp_path, payload: object) -> None:
    # A valid torch file that is not one of our checkpoints must give a clear error, not a
    # KeyError/IndexError traceback from checkpoint["config"].
    path = tmp_path / "other.pt"
    torch.save(payload, path)
    assert_error(["knn", "--pretrained", str(path)], str(path))


# ------------------------------------------------------------------------------------------
# Smoke runs on tiny real MNIST
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """pretrain, then finetune/supervised/knn on its checkpoint; each (code, out, err)."""
    root = tmp_path_factory.mktemp("cli-runs")
    data = ["--data-dir", str(DATA), "--no-progress"]
    results = {"root": root}
    results["pretrain"] = run_main(["pretrain", *TINY, *data, "--run-dir", str(root / "pre")])
    assert results["pretrain"][0] == 0, results["pretrain"][2]
    results["finetune"] = run_main(
        [
            "finetune",
            "--pretrained",
            str(root / "pre"),
            "finetune.epochs=1",
            "--no-progress",
            "--run-dir",
            str(root / "fin"),
        ]
    )
    results["supervised"] = run_main(
        ["supervised", *TINY, "finetune.epochs=1", *data, "--run-dir", str(root / "sup")]
    )
    results["knn"] = run_main(
        ["knn", "--pretrained", str(root / "pre" / "checkpoint.pt"), "--no-progress"]
    )
    results["probe"] = run_main(["probe", "--pretrained", str(root / "pre"), "--no-progress"])
    return results


def check_run_dir(run_dir: Path, epochs: int, layers: int) -> tuple[dict, dict]:
    """The four files of a run; returns (summary, checkpoint)."""
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
    ]
    cfg = load_config(str(run_dir / "config.yaml"))
    assert cfg.time_steps == 2 and cfg.data.train_limit == 400

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == epochs
    for epoch, line in enumerate(lines, 1):
        record = json.loads(line)
        assert record["epoch"] == epoch
        assert isinstance(record["loss"], float) and math.isfinite(record["loss"])
        rates = record["firing_rates"]
        assert len(rates) == layers and all(0.0 <= r <= 1.0 for r in rates)

    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"model", "config"} <= set(ckpt)
    assert load_config(ckpt["config"]) == cfg
    assert all(torch.is_tensor(v) for v in ckpt["model"].values())

    summary = json.loads((run_dir / "summary.json").read_text())
    assert Path(summary["run_dir"]) == run_dir
    return summary, ckpt


def assert_accuracy(value: object) -> None:
    assert isinstance(value, float) and 0.0 <= value <= 100.0


def test_pretrain_run(runs: dict) -> None:
    out = runs["pretrain"][1]
    run_dir = runs["root"] / "pre"
    summary, ckpt = check_run_dir(run_dir, epochs=1, layers=3)  # conv, conv, fc
    assert summary == result_json(out)
    for key in ("knn_accuracy", "knn_accuracy_at_init"):
        assert_accuracy(summary[key])
    assert summary["command"] == "pretrain" and summary["epochs"] == 1
    assert math.isfinite(summary["final_loss"])
    assert all(k.startswith("encoder.") for k in ckpt["model"])
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["knn"]["k"] == 5


@pytest.mark.parametrize("command", ["finetune", "supervised"])
def test_finetune_and_supervised_runs(runs: dict, command: str) -> None:
    code, out, err = runs[command]
    assert code == 0, err
    run_dir = runs["root"] / ("fin" if command == "finetune" else "sup")
    summary, ckpt = check_run_dir(run_dir, epochs=1, layers=4)  # + the classifier layer
    assert summary == result_json(out)
    assert summary["command"] == command
    for key in ("test_accuracy", "best_test_accuracy"):
        assert_accuracy(summary[key])
    cfg = load_config(ckpt["config"])
    assert cfg.finetune.epochs == 1
    if command == "finetune":  # settings come from the pretraining run's own config
        pre = load_config(str(runs["root"] / "pre" / "config.yaml"))
        assert cfg.encoder == pre.encoder and cfg.data == pre.data


def test_knn_reports_the_k_it_voted_with() -> None:
    code, out, err = run_main(["knn", *TINY, "knn.k=1000", "--no-progress"])
    assert code == 0, err
    result = result_json(out)  # 400 training images, 20% labelled: a bank of 80
    assert (result["k"], result["bank"], result["bank_size"]) == (80, "labelled", 80)


def test_knn_on_pretrained(runs: dict) -> None:
    code, out, err = runs["knn"]
    assert code == 0, err
    result = result_json(out)
    assert result["command"] == "knn" and result["pretrained"] is True and result["k"] == 5
    assert_accuracy(result["knn_accuracy"])
    assert_accuracy(result["pixel_knn_accuracy"])
    # the same encoder on the same images: exactly what pretraining reported at its end
    pre = json.loads((runs["root"] / "pre" / "summary.json").read_text())
    assert result["knn_accuracy"] == pytest.approx(pre["knn_accuracy"])


def test_finetune_refuses_what_is_not_a_finished_pretraining(runs: dict, tmp_path) -> None:
    sup = runs["root"] / "sup"
    assert_error(["finetune", "--pretrained", str(sup)], "is a supervised run, not a pretraining")
    unfinished = tmp_path / "pre"  # the pretraining run as it stood before its summary
    unfinished.mkdir()
    shutil.copy(runs["root"] / "pre" / "checkpoint.pt", unfinished)
    assert_error(
        ["finetune", "--pretrained", str(unfinished)],
        "unfinished pretraining run (epoch 1 of 1)",
        f"spikessl pretrain --resume {unfinished}",
    )
    # a checkpoint file named on purpose is taken as given; knn reads any encoder
    check_pretrained(["finetune", "--pretrained", str(unfinished / "checkpoint.pt")])
    check_pretrained(["knn", "--pretrained", str(sup)])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):  # ... and says so when the run is unfinished
        check_pretrained(["knn", "--pretrained", str(unfinished)])
    assert err.getvalue() == (
        f"knn: {unfinished} is an unfinished run (saved after step 10): this reads its last "
        "saved weights\n"
    )


def check_pretrained(argv: list[str]) -> None:
    """``named_runs.check_pretrained`` on these arguments (raises if it refuses them)."""
    from spikessl import checkpoints, named_runs

    args = arguments.parser().parse_args(argv)
    named_runs.check_pretrained(args, checkpoints.load_checkpoint(args.pretrained))


def test_probe_on_pretrained(runs: dict) -> None:
    code, out, err = runs["probe"]
    assert code == 0, err
    result = result_json(out)
    assert result["command"] == "probe" and result["pretrained"] is True
    assert result["labelled_images"] == 80  # 20% of the 400 training images
    for name in ("probe", "pixel_probe"):
        assert_accuracy(result[f"{name}_accuracy"])
        held_out = result[f"{name}_held_out_accuracy"]
        assert result[f"{name}_weight_decay"] in [float(k) for k in held_out]
        assert all(0.0 <= v <= 100.0 for v in held_out.values())
    assert result["pixel_probe_accuracy"] > 50  # 10 MNIST classes, 80 labelled images


@pytest.mark.parametrize("command", ["pretrain", "finetune", "supervised", "knn", "probe"])
def test_stdout_is_only_the_json_result(runs: dict, command: str) -> None:
    # `spikessl pretrain ... | jq .knn_accuracy` must work: progress goes to stderr.
    code, out, err = runs[command]
    assert code == 0, err
    json.loads(out)


def test_finished_run_dir_is_not_overwritten(runs: dict) -> None:
    run_dir = runs["root"] / "pre"
    before = (run_dir / "summary.json").read_text()
    assert_error(
        ["pretrain", *TINY, "--data-dir", str(DATA), "--no-progress", "--run-dir", str(run_dir)],
        "already holds a finished run",
    )
    assert (run_dir / "summary.json").read_text() == before


def test_data_dir_is_taken_literally(tmp_path, monkeypatch) -> None:
    # --data-dir is a path, not YAML: a folder named 2024 must not become the int 2024.
    for name in ("2024", "yes"):
        raw = tmp_path / name / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for src in (DATA / "MNIST" / "raw").iterdir():
            (raw / src.name).symlink_to(src)
    monkeypatch.chdir(tmp_path)
    for name in ("2024", "yes"):
        code, out, err = run_main(["knn", *TINY, "--data-dir", name, "--no-progress"])
        assert code == 0, err
        assert result_json(out)["pretrained"] is False


def test_pipeline_with_baseline(tmp_path) -> None:
    code, out, err = run_main(
        [
            "pipeline",
            *TINY,
            "finetune.epochs=1",
            "--baseline",
            "--data-dir",
            str(DATA),
            "--no-progress",
            "--run-dir",
            str(tmp_path / "all"),
        ]
    )
    assert code == 0, err
    result = result_json(out)
    for key in (
        "knn_accuracy",
        "knn_accuracy_at_init",
        "finetune_test_accuracy",
        "supervised_test_accuracy",
    ):
        assert_accuracy(result[key])
    assert Path(result["run_dir"]) == tmp_path / "all"
    for part in ("pretrain", "finetune", "supervised"):
        check_run_dir(tmp_path / "all" / part, epochs=1, layers=3 if part == "pretrain" else 4)
    assert json.loads(out) == result  # nothing but the JSON on stdout (summaries: stderr)


def test_a_pipeline_that_fails_before_its_first_stage_writes_leaves_no_run_folder(
    tmp_path, monkeypatch
) -> None:
    from spikessl import pipeline

    out_dir = tmp_path / "runs"
    argv = ["pipeline", *TINY, "--no-progress", f"out_dir={out_dir}"]
    code, _, err = run_main([*argv, "--data-dir", str(tmp_path / "none")])
    assert code == 2 and "not found under" in err
    assert list(out_dir.iterdir()) == []  # the folder it made for its stages is gone

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # a Ctrl-C while the data loads

    monkeypatch.setattr(pipeline, "load_data", stopped)
    code, _, err = run_main([*argv, "--data-dir", str(DATA)])
    assert code == 130 and list(out_dir.iterdir()) == []
    monkeypatch.undo()  # a stage that wrote: its folder stays, to be continued
    monkeypatch.setattr(pipeline, "nt_xent", stopped)
    code, _, err = run_main([*argv, "--data-dir", str(DATA)])
    (kept,) = out_dir.iterdir()
    assert code == 130 and kept.name.startswith("pipeline-")
    assert (kept / "pretrain" / "config.yaml").is_file()


def test_pipeline_rerun_reuses_finished_stages_and_resumes_the_interrupted_one(
    tmp_path, monkeypatch
) -> None:
    from spikessl import pipeline

    argv = ["pipeline", *TINY, "finetune.epochs=1", "--data-dir", str(DATA), "--no-progress"]
    argv += ["--run-dir", str(tmp_path / "all")]
    code, out, err = run_main(argv)
    assert code == 0, err
    first = result_json(out)
    (tmp_path / "all" / "finetune" / "summary.json").unlink()  # as if killed before its end

    def forbidden(*_args, **_kwargs):
        raise AssertionError("a finished stage was run again")

    resumed = []
    real_finetune = pipeline.finetune

    def finetune(cfg, checkpoint, run_dir, progress, resume=None):
        resumed.append(resume is not None)
        return real_finetune(cfg, checkpoint, run_dir, progress, resume=resume)

    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", finetune)
    code, out, err = run_main(argv)
    assert code == 0, err
    assert resumed == [True] and "finished earlier, reusing" in err
    again = result_json(out)
    for key in ("knn_accuracy", "knn_accuracy_at_init", "finetune_test_accuracy"):
        assert again[key] == first[key], key
    code, _, err = run_main([*argv, "finetune.lr=0.5"])  # not what the runs were made with
    assert code == 2 and "other settings" in err
    assert f"{tmp_path / 'all' / 'finetune'} holds a run" in err  # the stage that differs
    assert f"{tmp_path / 'all' / 'pretrain'} holds" not in err  # pretraining reads no finetune.*
    assert "(its config.yaml -> this command: finetune.lr: " in err and " -> 0.5)" in err
    code, _, err = run_main([*argv, "pretrain.lr=0.5"])
    assert code == 2 and f"{tmp_path / 'all' / 'pretrain'} holds a run with other settings" in err
    config_yaml = tmp_path / "all" / "pretrain" / "config.yaml"
    whole = config_yaml.read_text()
    config_yaml.write_text(whole[: whole.index("\npretrain:")])  # cut short: settings absent
    code, _, err = run_main(argv)
    assert code == 2 and "pretrain.epochs: absent -> 1; pretrain.batch_size: absent" in err, err
    for damage in (b"time_steps: [4", b"\xff\xfe\x00", b""):
        config_yaml.write_bytes(damage)
        code, _, err = run_main(argv)
        assert code == 2 and f"{config_yaml} is damaged (" in err, err


def test_an_interrupted_pipeline_says_how_to_continue_it(tmp_path, monkeypatch) -> None:
    from spikessl import pipeline
    from spikessl.resumable import Interrupted

    def stopped(cfg, run_dir, progress, resume=None):
        raise Interrupted(
            15, f"pretrain: stopped by signal 15 at epoch 1, step 3; checkpoint saved in {run_dir}"
        )

    monkeypatch.setattr(pipeline, "pretrain", stopped)
    root = tmp_path / "all"
    code, _, err = run_main(["pipeline", *TINY, "--no-progress", "--run-dir", str(root)])
    assert code == 128 + 15
    assert f"spikessl pipeline with the same arguments and --run-dir {root} (finished" in err


def test_neighbors_writes_the_figure(runs: dict) -> None:
    out = runs["root"] / "figs" / "nb.png"
    code, stdout, err = run_main(
        ["neighbors", "--pretrained", str(runs["root"] / "pre"), "--out", str(out), "-k", "3"]
    )
    assert code == 0, err
    result = result_json(stdout)
    assert result["png"] == str(out) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_accuracy(result["top1_label_agreement"])
    import hashlib

    from spikessl.figures import png_source

    digest = hashlib.sha256((runs["root"] / "pre" / "checkpoint.pt").read_bytes()).hexdigest()
    assert png_source(out) == f"spikessl checkpoint sha256 {digest}"  # the PNG names its run


def test_neighbors_checks_the_output_name_before_encoding(runs: dict, monkeypatch) -> None:
    from spikessl import neighbours

    def encode(*args, **kwargs):
        raise AssertionError("the test set was encoded before the name was checked")

    monkeypatch.setattr(neighbours, "neighbours_figure", encode)
    pre = str(runs["root"] / "pre")
    assert_error(["neighbors", "--pretrained", pre, "--out", "nb.pdf"], "name the output *.png")


def test_neighbors_requires_pretrained() -> None:
    assert_error(["neighbors"], "needs --pretrained")


def test_compare_plots_the_per_epoch_accuracy_of_runs(runs: dict) -> None:
    out = runs["root"] / "figs" / "cmp.png"
    fin, sup = runs["root"] / "fin", runs["root"] / "sup"
    code, stdout, err = run_main(["compare", str(fin), str(sup), "--out", str(out)])
    assert code == 0, err
    result = json.loads(stdout)
    assert out.read_bytes()[:4] == b"\x89PNG"
    finetuned = json.loads((fin / "summary.json").read_text())["test_accuracy"]
    supervised = json.loads((sup / "summary.json").read_text())["test_accuracy"]
    assert result["final"] == {
        "SSL pretrained + fine-tuned": finetuned,
        "supervised only": supervised,
    }


def test_compare_errors(runs: dict, tmp_path) -> None:
    out = str(tmp_path / "x.png")
    assert_error(["compare", str(tmp_path / "nope"), "--out", out], "metrics.jsonl")
    fin = str(runs["root"] / "fin")
    assert_error(["compare", fin, "--labels", "a", "b", "--out", out], "one label per curve")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.jsonl").write_text("{not json\n")
    assert_error(["compare", str(tmp_path / "bad"), "--out", out], "corrupt")


def test_compare_draws_a_sweep_records_two_curves(tmp_path) -> None:
    record = tmp_path / "base.json"
    curves = {"finetune_accuracy_by_epoch": [50.0, 61.5], "supervised_accuracy_by_epoch": [38, 40]}
    record.write_text(json.dumps({"config": {"finetune": {"epochs": 2}}, **curves}))
    out = tmp_path / "fig7.png"
    code, stdout, err = run_main(["compare", str(record), "--out", str(out)])
    assert code == 0, err
    assert out.read_bytes()[:4] == b"\x89PNG"
    finals = {"SSL pretrained + fine-tuned": 61.5, "supervised only": 40.0}
    assert json.loads(stdout)["final"] == finals
    # two records: the same methods twice, each curve named after its record
    code, stdout, err = run_main(["compare", str(record), str(record), "--out", str(out)])
    assert code == 0, err
    assert set(json.loads(stdout)["final"]) == {f"{k} ({record})" for k in finals}
    code, stdout, err = run_main(
        ["compare", str(record), "--labels", "ssl", "sup", "--out", str(out)]
    )
    assert code == 0, err
    assert json.loads(stdout)["final"] == {"ssl": 61.5, "sup": 40.0}


def test_compare_rejects_a_file_that_is_not_a_record(runs: dict, tmp_path) -> None:
    out = str(tmp_path / "x.png")
    fin = runs["root"] / "fin"
    for name in ("checkpoint.pt", "metrics.jsonl"):  # a run's file: its folder is meant
        assert_error(["compare", str(fin / name), "--out", out], f"pass the run's folder, {fin}")
    binary = tmp_path / "weights.bin"
    binary.write_bytes((fin / "checkpoint.pt").read_bytes())  # binary, not JSON
    assert_error(["compare", str(binary), "--out", out], "is not a sweep record")
    fin = str(runs["root"] / "fin")
    (tmp_path / "d.png").mkdir()  # a folder where the PNG belongs
    assert_error(["compare", fin, "--out", str(tmp_path / "d.png")], "choose another --out")
    for name in ("results.csv", "README.md"):  # a records folder's other files
        (tmp_path / name).write_text("| cell | knn |\n")
        assert_error(["compare", str(tmp_path / name), "--out", out], "is not a sweep record")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert_error(["compare", str(bad), "--out", out], "is a damaged record (")
    bad.write_text(json.dumps({"knn_accuracy": 90.0, "finetune_accuracy_by_epoch": 3}))
    assert_error(["compare", str(bad), "--out", out], "finetune_accuracy_by_epoch")
    bad.write_text(json.dumps({"cell": "x", "finetune_accuracy_by_epoch": [50.0, 61.5]}))
    assert_error(["compare", str(bad), "--out", out], "does not say at which epochs its 2")
    bad.write_text(json.dumps({"config": None, "finetune_accuracy_by_epoch": [50.0]}))
    assert_error(["compare", str(bad), "--out", out], "does not say at which epochs its 1")
    assert not (tmp_path / "x.png").exists()


def test_sweep_runs_a_grid_and_skips_recorded_cells(tmp_path) -> None:
    records, runs = tmp_path / "records", tmp_path / "runs"
    argv = ["sweep", *TINY, "time_steps=2,3", "finetune.epochs=1", "--data-dir", str(DATA)]
    argv += ["--no-progress", "--records", str(records), "--run-dir", str(runs)]
    code, out, err = run_main(argv)
    assert code == 0, err
    result = json.loads(out)
    # only the multi-valued key is a grid axis; the single values are settings of every cell
    assert [r["cell"] for r in result["results"]] == ["time_steps=2", "time_steps=3"]
    assert sorted(p.name for p in records.glob("*.json")) == [
        "time_steps=2.json",
        "time_steps=3.json",
    ]
    table = (records / "results.md").read_text()
    assert "| time_steps |" in table and table.count("\n") == 4
    readme = (records / "README.md").read_text()
    assert readme.startswith(GENERATED + "\n# Sweep of `paper-mnist` over time_steps\n")
    overrides = argv[1 : len(TINY) + 3]
    command = shlex.join(["spikessl", "sweep", "--config", "paper-mnist", *overrides])
    assert f"    {command} --records {records}\n" in readme  # no --data-dir, --run-dir
    assert "2 of 2 cells recorded (one JSON each here). 1 pretraining and 1 fine-tuning" in readme
    assert "| total | 4 |" in readme  # 2 pretrainings, 2 fine-tunings
    assert table in readme and "device cpu" in readme and "speed probe" in readme
    code, out, err = run_main([*argv, "--dry-run"])
    assert code == 0 and err.count(": recorded\n") == 2 and json.loads(out)["to_run"] == []
    assert "sweep: time_steps=2 is replaced by the grid axis of that key" in err  # TINY's
    code, out, err = run_main(argv)  # everything recorded: nothing trains again
    assert code == 0 and err.count("recorded, skipping") == 2, err
    assert json.loads(out)["results"] == result["results"]
    assert (records / "README.md").read_text() == readme  # rewritten, the same
    assert "cells not in this grid" not in err
    one = [a if a != "time_steps=2,3" else "time_steps=3" for a in argv]  # a one-cell grid
    code, out, err = run_main(one)  # its runs are there: it records base.json from them
    assert code == 0 and "also holds 2 record(s) of cells not in this grid" in err, err
    assert "(time_steps=2.json, time_steps=3.json)" in err and "its own --records" in err
    (records / "base.json").unlink()
    (records / "README.md").write_text("# my notes\n")
    code, out, err = run_main(argv)
    assert code == 0 and "kept" in err and "written by hand" in err, err
    assert (records / "README.md").read_text() == "# my notes\n"
    # --keep-pretrained: each recorded cell's pretraining goes into the records folder
    code, out, err = run_main([*argv, "--keep-pretrained"])
    assert code == 0 and err.count("pretrain: kept as") == 2, err
    assert len(list(records.glob("pretrain-*.safetensors"))) == 2
    (records / "README.md").unlink()
    code, out, err = run_main([*argv, "--keep-pretrained"])  # already kept: not again
    assert code == 0 and "kept as" not in err, err
    assert f"--records {records} --keep-pretrained\n" in (records / "README.md").read_text()


def test_sweep_records_default_beside_the_runs_in_out_dir(tmp_path, monkeypatch) -> None:
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # not where the records go
    argv = ["sweep", *TINY, "time_steps=2", f"out_dir={tmp_path / 'out'}", "--data-dir", str(DATA)]
    code, out, err = run_main([*argv, "--no-progress"])
    assert code == 0, err
    records = tmp_path / "out" / "sweep" / "records"
    assert json.loads(out)["records"] == str(records)
    assert (records / "base.json").is_file() and list((tmp_path / "cwd").iterdir()) == []


def test_ctrl_c_outside_a_training_step_says_what_is_kept(monkeypatch, tmp_path) -> None:
    from spikessl import pipeline

    def knn_at_init(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. while the kNN before the first step encodes the images

    monkeypatch.setattr(pipeline, "pretrain", knn_at_init)
    monkeypatch.setattr(pipeline, "knn", knn_at_init)
    code, out, err = run_main(["pretrain", *TINY, "--no-progress"])
    assert code == 130 and out == "" and "Traceback" not in err
    assert "spikessl pretrain: interrupted (Ctrl-C) outside a training step" in err
    assert "Continue with the same command, or --resume RUN_DIR" in err
    code, out, err = run_main(["pipeline", *TINY, "--no-progress", "--run-dir", str(tmp_path)])
    assert code == 130 and f"and --run-dir {tmp_path}: finished stages are reused" in err
    code, out, err = run_main(["knn", *TINY])
    assert code == 130 and "nothing was written. Run it again" in err and "--resume" not in err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["knn", "--pretrained", "."], "spikessl: interrupted (Ctrl-C) while starting; nothing"),
        (["export", "."], "spikessl export: interrupted (Ctrl-C); nothing was written"),
    ],
)
def test_ctrl_c_while_pytorch_loads_exits_130_without_a_traceback(tmp_path, argv, said) -> None:
    import signal

    # the child says when it starts importing torch, then takes its time: the Ctrl-C lands
    # inside the import however fast the machine is
    child = (
        "import signal, sys, time\n"
        # as a terminal gives it: a test run in the background (`pytest &`) ignores SIGINT
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "class Slow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            print('importing torch', flush=True)\n"
        "            time.sleep(60)\n"
        "sys.meta_path.insert(0, Slow())\n"
        f"sys.argv = {['spikessl', *argv]!r}\n"
        "import runpy\n"
        "runpy.run_module('spikessl', run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", child],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout.readline() == "importing torch\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert said in err


def test_sweep_with_a_stopped_cell_exits_2_and_still_writes_its_readme(
    tmp_path, monkeypatch
) -> None:
    from spikessl import sweep

    real = sweep._run_cell

    def second_diverges(cell, *args):
        if cell.config.time_steps == 3:
            raise FloatingPointError("pretrain: its loss diverged at epoch 1")
        return real(cell, *args)

    monkeypatch.setattr(sweep, "_run_cell", second_diverges)
    records = tmp_path / "records"
    argv = ["sweep", *TINY, "time_steps=2,3", "--data-dir", str(DATA), "--no-progress"]
    code, out, err = run_main([*argv, "--records", str(records), "--run-dir", str(tmp_path)])
    assert code == 2 and out == ""
    assert "time_steps=3: stopped, going on with the other cells" in err
    assert "error: 1 cell(s) stopped: time_steps=3 (why: the log above" in err
    assert "1 of 2 cells recorded" in (records / "README.md").read_text()


def test_sweep_dry_run_lists_the_cells_and_trains_nothing(tmp_path, monkeypatch) -> None:
    from spikessl import pipeline

    monkeypatch.setattr(pipeline, "staged", None)  # a call would fail
    records, runs = tmp_path / "records", tmp_path / "runs"
    argv = ["sweep", *TINY, "time_steps=2,3", "finetune.lr=1e-3,1e-2", "--baseline", "--dry-run"]
    code, out, err = run_main([*argv, "--records", str(records), "--run-dir", str(runs)])
    assert code == 0, err
    assert json.loads(out) == {
        "command": "sweep",
        "dry_run": True,
        "cells": 4,
        "to_run": [f"time_steps={t}__finetune.lr={lr}" for t in (2, 3) for lr in ("1e-3", "1e-2")],
    }
    lines = [line for line in err.splitlines() if "replaced by the grid axis" not in line]
    assert lines[0] == (
        "sweep [1/4] time_steps=2__finetune.lr=1e-3: pretraining to run, fine-tuning to run, "
        "supervised baseline to run"
    )
    assert lines[1].startswith(
        "sweep [2/4] time_steps=2__finetune.lr=1e-2: pretraining shared "
        "with time_steps=2__finetune.lr=1e-3, "
    )
    assert len(lines) == 4 and not any(tmp_path.iterdir())
    # with --keep-pretrained: one export per pretraining the sweep would run, after the cells
    code, out, err = run_main(
        [*argv, "--records", str(records), "--run-dir", str(runs), "--keep-pretrained"]
    )
    assert code == 0, err
    exports = [line for line in err.splitlines() if "by the grid axis" not in line][4:]
    assert len(exports) == 2 and len(set(exports)) == 2
    assert all(
        e.startswith(f"sweep: --keep-pretrained would write {records}/pretrain-")
        and e.endswith(".safetensors")
        for e in exports
    )
    assert not any(tmp_path.iterdir())
    # a record the sweep would refuse: listed, then exit 2 as the sweep itself would
    records.mkdir()
    (records / "time_steps=3__finetune.lr=1e-2.json").write_text("{")
    code, out, err = run_main([*argv, "--records", str(records), "--run-dir", str(runs)])
    assert code == 2 and out == "", err
    assert "sweep [4/4] time_steps=3__finetune.lr=1e-2: refused: sweep record " in err
    assert "the sweep would refuse time_steps=3__finetune.lr=1e-2 (why: the lines above)" in err
    (records / "x").write_text("")
    code, _, err = run_main([*argv, "--records", str(records / "x"), "--run-dir", str(runs)])
    assert code == 2 and "is a file, not a folder" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "records",
        "time_steps=3__finetune.lr=1e-2.json",
        "x",
    ]


def test_sweep_rejects_a_bad_grid_value_before_running(tmp_path) -> None:
    assert_error(["sweep", "time_steps=4,x", "--records", str(tmp_path)], "time_steps", "int")
    assert not any(tmp_path.iterdir())


def test_a_checkpoint_whose_saved_config_this_version_cannot_read(runs: dict, tmp_path) -> None:
    checkpoint = torch.load(runs["root"] / "pre" / "checkpoint.pt", weights_only=True)
    checkpoint["config"]["encoder"]["dendrites"] = 3  # a key from another version
    (tmp_path / "old").mkdir()
    torch.save(checkpoint, tmp_path / "old" / "checkpoint.pt")
    assert_error(
        ["knn", "--pretrained", str(tmp_path / "old")],
        f"the config saved in {tmp_path / 'old'} does not load in this spikessl version",
        "encoder.dendrites",
    )
    # the user's own mistake is still reported as theirs
    err = assert_error(["knn", "--pretrained", str(runs["root"] / "pre"), "knn.kk=3"], "knn.kk")
    assert "does not load in this spikessl version" not in err


def test_error_lines_say_what_to_check_for_the_operating_systems_failures(capsys) -> None:
    from spikessl.cli import _error

    assert _error("knn", FileExistsError("runs/x already holds a finished run; choose ...")) == 2
    assert capsys.readouterr().err == (
        "spikessl knn: error: runs/x already holds a finished run; choose ...\n"
    )  # spikessl's own message (no errno) as it is
    _error("export", FileNotFoundError(2, "No such file or directory", "/nope/m.safetensors"))
    err = capsys.readouterr().err
    assert "No such file or directory: /nope/m.safetensors; check the path" in err
    _error("export", PermissionError(13, "Permission denied", "/root/m.safetensors"))
    err = capsys.readouterr().err
    assert "Permission denied: /root/m.safetensors (" in err and "choose another --out" in err


def test_spikessls_warnings_print_as_one_line() -> None:
    import warnings

    ours = pipeline.__file__  # where the loop's warnings point, with their stacklevel
    with cli._short_warnings():
        text = warnings.formatwarning("layer 0 silent", RuntimeWarning, ours, 131)
        other = warnings.formatwarning("a peer's warning", UserWarning, "/x/peer.py", 7)
    assert text == "spikessl: warning: layer 0 silent\n"
    assert other.startswith("/x/peer.py:7: UserWarning: a peer's warning")
    assert warnings.formatwarning("w", UserWarning, ours, 1).startswith(ours)  # restored
    with cli._short_warnings():  # _native's own prefix is not doubled; torch's keep theirs
        native = warnings.formatwarning("spikessl: kernels off", RuntimeWarning, ours, 1)
        torchs = warnings.formatwarning("deprecated", UserWarning, ours, 1)
    assert native == "spikessl: warning: kernels off\n" and "UserWarning" in torchs


def test_reproduce_refuses_dry_run_with_report_only() -> None:
    code, _, err = run_main(
        ["reproduce", "--dataset", "mnist", "--budget", "quick", "--dry-run", "--report-only"]
    )
    assert code == 2 and "not allowed with argument --dry-run" in err


def test_pipeline_prints_the_validation_numbers_it_has(tmp_path) -> None:
    argv = ["pipeline", *TINY, "finetune.val_fraction=0.2", "--baseline", "--no-progress"]
    code, out, err = run_main([*argv, "--run-dir", str(tmp_path)])
    assert code == 0, err
    result = result_json(out)
    for stage in ("finetune", "supervised"):
        summary = json.loads((tmp_path / stage / "summary.json").read_text())
        assert result[f"{stage}_val_accuracy"] == summary["val_accuracy"]
        assert result[f"{stage}_test_accuracy_at_best_val"] == summary["test_accuracy_at_best_val"]


def test_a_sweeps_sigterm_outside_a_training_step_exits_143(tmp_path, monkeypatch) -> None:
    import signal

    def loading_data(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # a scheduler's stop while the data loads

    monkeypatch.setattr(pipeline, "staged", loading_data)
    argv = ["sweep", *TINY, "--no-progress", "--records", str(tmp_path / "r")]
    code, _, err = run_main([*argv, "--run-dir", str(tmp_path / "runs")])
    assert code == 128 + signal.SIGTERM, err  # as a SIGTERM inside a training step
    assert "spikessl sweep: interrupted (SIGTERM) outside a training step" in err
