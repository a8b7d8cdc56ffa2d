"""``spikessl reproduce``: one tiny end-to-end run through the command line that a second call
fully skips (the plan: ``test_protocol.py``; the reports: ``test_report.py``)."""

from __future__ import annotations

import contextlib
import io
import json

from tiny import TINY

from spikessl import cli, figures, pipeline, protocol, reproduce
from spikessl.paper import BEST, QUICK
from spikessl.readme import GENERATED_BY_REPRODUCE


def forbidden(*args, **kwargs):
    raise AssertionError("nothing should train here")


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """``cli.main(argv)`` -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------


def reproduce_untrained(tmp_path, monkeypatch, *args: str):
    """``spikessl reproduce ARGS`` with training forbidden: (code, out, err, records dir)."""
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", forbidden)
    records = tmp_path / "records"
    where = ["--records", str(records), "--run-dir", str(tmp_path / "runs")]
    return (*run_main(["reproduce", *args, *where]), records)


def test_dry_run_trains_and_writes_nothing(tmp_path, monkeypatch) -> None:
    code, out, err, records = reproduce_untrained(
        tmp_path, monkeypatch, "--dataset", "cifar10", "--budget", "paper", "--dry-run"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["dry_run"] is True and result["cells"] == 15 and len(result["to_run"]) == 15
    lines = err.splitlines()
    assert lines[0] == (
        "reproduce [1/15] tables: time_steps=30: pretraining to run, fine-tuning to run, "
        "supervised baseline to run"
    )
    # the label-efficiency cells of seed 0 share the best cell's pretraining, across sweeps
    assert "seed=0__finetune.label_fraction=0.01: pretraining shared with time_steps=30, " in err
    assert len(lines) == 15
    assert not records.exists() and not (tmp_path / "runs").exists()
    # --keep-pretrained: one export per pretraining, the seeds' fractions sharing theirs
    code, out, err, records = reproduce_untrained(
        tmp_path, monkeypatch, "--dataset", "cifar10", "--budget", "paper", "--dry-run",
        "--keep-pretrained",
    )  # fmt: skip
    assert code == 0, err
    exports = [line for line in err.splitlines() if "--keep-pretrained would write" in line]
    assert len(exports) == len(set(exports)) == 9  # 7 table cells, and seeds 1 and 2
    assert not records.exists() and not (tmp_path / "runs").exists()


def test_only_runs_just_the_chosen_cells_in_plan_order(tmp_path, monkeypatch) -> None:
    ran = []
    monkeypatch.setattr(
        reproduce.sweep, "run_sweep", lambda cells, *a, **k: ran.extend(c.name for c in cells)
    )
    mnist_paper = ["--dataset", "mnist", "--budget", "paper"]
    code, _, err, _ = reproduce_untrained(
        tmp_path, monkeypatch, *mnist_paper, "--only", "seed=1__*,time_steps=10"
    )
    assert code == 0, err
    assert ran == [
        "time_steps=10",
        "seed=1__finetune.label_fraction=0.01",
        "seed=1__finetune.label_fraction=0.1",
    ]
    _, out, err, _ = reproduce_untrained(
        tmp_path, monkeypatch, *mnist_paper, "--dry-run", "--only", "time_steps=20"
    )
    assert json.loads(out)["to_run"] == ["time_steps=20"]
    assert "time_steps=10: to run, not in --only" in err


def test_keep_pretrained_reaches_every_sweep_and_the_readmes_command(tmp_path, monkeypatch):
    kept = []
    monkeypatch.setattr(
        reproduce.sweep, "run_sweep", lambda *a, **k: kept.append(k["keep_pretrained"])
    )
    mnist_paper = ["--dataset", "mnist", "--budget", "paper", "--keep-pretrained"]
    code, _, err, records = reproduce_untrained(tmp_path, monkeypatch, *mnist_paper)
    assert code == 0, err
    assert kept and all(kept)
    assert f"--records {records} --keep-pretrained\n" in (records / "README.md").read_text()


def test_a_cell_that_stops_on_its_numbers_leaves_the_other_steps_and_the_report(
    tmp_path, monkeypatch
) -> None:
    ran = []

    def run_sweep(cells, *args, **kwargs):
        ran.extend(c.name for c in cells)
        if cells[0].name == "time_steps=30":  # the first step: the best cell and its baseline
            raise reproduce.sweep.CellsFailed(["time_steps=30"], [], tmp_path / "records")

    monkeypatch.setattr(reproduce.sweep, "run_sweep", run_sweep)
    code, out, err, records = reproduce_untrained(
        tmp_path, monkeypatch, "--dataset", "mnist", "--budget", "paper"
    )
    assert code == 2 and out == ""
    assert "1 cell(s) stopped: time_steps=30 (why" in err
    assert len(ran) == 15 and "time_steps=10" in ran  # every other step ran
    assert "| 10 | 78.21% | — | — | — |" in (records / "tables.md").read_text()


def test_report_only_tabulates_what_is_recorded_and_trains_nothing(tmp_path, monkeypatch):
    code, out, err, records = reproduce_untrained(
        tmp_path, monkeypatch, "--dataset", "mnist", "--budget", "paper", "--report-only"
    )
    assert code == 0, err
    assert json.loads(out)["recorded"] == 0
    assert f"{records} holds no record of this grid's cells: the report shows the paper" in err
    tables = (records / "tables.md").read_text()
    assert "| 10 | 78.21% | — | — | — |" in tables  # the paper's number, none of ours yet
    readme = (records / "README.md").read_text()
    assert readme.startswith(GENERATED_BY_REPRODUCE + "\n# MNIST: the paper's Tables")
    assert "0 of 15 cells recorded" in readme
    assert not (tmp_path / "runs").exists()
    # a README edited by hand (its first line gone) is kept, the tables are rewritten
    (records / "README.md").write_text("# MNIST, with my notes\n")
    (records / "tables.md").write_text("stale")
    code, out, err, _ = reproduce_untrained(
        tmp_path, monkeypatch, "--dataset", "mnist", "--budget", "paper", "--report-only"
    )
    assert code == 0 and "kept" in err and "written by hand" in err
    assert (records / "README.md").read_text() == "# MNIST, with my notes\n"
    assert (records / "tables.md").read_text() == tables
    assert str(records / "README.md") not in json.loads(out)["outputs"]


def test_records_made_with_other_settings_stop_before_training(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    records = tmp_path / "records"
    records.mkdir()
    (records / "time_steps=10.json").write_text(json.dumps({"cell": "time_steps=10", "key": "x"}))
    code, out, err = run_main(
        ["reproduce", "--dataset", "mnist", "--budget", "quick", "--records", str(records)]
    )
    assert code == 2 and out == ""
    assert "spikessl reproduce: error:" in err and "time_steps=10" in err
    # the dry-run lists every cell, then stops as the run would
    code, out, err = run_main(
        ["reproduce", "--dataset", "mnist", "--budget", "quick", "--records", str(records)]
        + ["--run-dir", str(tmp_path / "runs"), "--dry-run"]
    )
    assert code == 2 and out == ""
    assert f"tables: time_steps=10: refused: {records / 'time_steps=10.json'} was recorded" in err
    assert "error: reproduce would refuse time_steps=10 (why: the lines above)" in err
    assert len([line for line in err.splitlines() if line.startswith("reproduce [")]) == 15


def test_end_to_end_then_every_cell_is_skipped(tmp_path, monkeypatch) -> None:
    # fewer cells than the real protocol (one table row, one fraction), the same machinery
    monkeypatch.setattr(
        protocol, "TABLES", {("I", "time steps", "time_steps"): {"3": (1.0, 2.0), "4": BEST}}
    )
    monkeypatch.setattr(protocol, "FRACTIONS", (0.01,))
    monkeypatch.setattr(protocol, "SEED_FRACTIONS", (0.01,))
    records, runs = tmp_path / "records", tmp_path / "runs"
    argv = ["reproduce", "--dataset", "mnist", "--budget", "quick", *TINY, "--seeds", "0,1"]
    argv += ["--records", str(records), "--run-dir", str(runs), "--no-progress"]

    code, out, err = run_main(argv)
    assert code == 0, err
    result = json.loads(out)
    cells = [
        "time_steps=2",
        "time_steps=3",
        "time_steps=4",  # the paper's best T, off this run's base: measured all the same
        "seed=0__finetune.label_fraction=0.01",
        "seed=1__finetune.label_fraction=0.01",
    ]
    assert (result["budget"], result["cells"], result["recorded"]) == ("quick", 5, 5)
    assert result["overrides"] == TINY
    assert result["table_iv"]["cell"] == "time_steps=2"
    assert 0 <= result["table_iv"]["finetune_test_accuracy"] <= 100
    assert "supervised_test_accuracy" in json.loads((records / "time_steps=2.json").read_text())
    assert err.count("pretrain: finished earlier, reusing") == 1  # seed 0 shares the best's
    assert len(list(runs.glob("pretrain-*"))) == 4  # T=2 (and seed 0), T=3, T=4, seed 1
    outputs = [
        "tables.md",
        "tables.csv",
        "label-efficiency.md",
        "label-efficiency.csv",
        "label-efficiency.png",
        "fig5-neighbors.png",
        "fig6-mnist-ssl-vs-supervised.png",
        "README.md",
        "results.md",
        "results.csv",
    ]
    for name in [*outputs, *(f"{c}.json" for c in cells)]:
        assert (records / name).is_file(), name
    assert not (records / "seeds.md").exists()  # one step's seeds: label-efficiency has all
    assert sorted(result["outputs"]) == sorted(str(records / n) for n in outputs)
    texts = {n: (records / n).read_text() for n in outputs if not n.endswith(".png")}
    assert "budget `quick`, overrides `time_steps=2" in texts["tables.md"]
    assert (
        "| 3 | 1.00% |" in texts["tables.md"]
        and "| 4 | 94.23% |" in texts["tables.md"]
        and "| 4 | 94.23% | — |" not in texts["tables.md"]
    )
    assert "| 2 (this run's base) | — |" in texts["tables.md"]
    assert "| 1% |" in texts["label-efficiency.md"] and "(n=2)" in texts["label-efficiency.md"]
    readme = texts["README.md"]
    assert "spikessl reproduce --dataset mnist --budget quick time_steps=2" in readme
    assert "--seeds 0,1" in readme and " ".join(QUICK["mnist"]) in readme
    assert f"--records {records}\n" in readme and "--run-dir" not in readme  # machine-local
    assert "| pretrain | 4 |" in readme and "| supervised | 3 |" in readme
    assert "device cpu" in readme and "](fig5-neighbors.png)" in readme
    assert len(texts["results.csv"].splitlines()) == 1 + 5

    # again: every cell recorded, nothing trains, the same tables
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", forbidden)
    fig5 = records / "fig5-neighbors.png"
    drawn, drawn_at = fig5.read_bytes(), fig5.stat().st_mtime_ns
    code, out, err = run_main(argv)
    assert code == 0, err
    assert err.count("recorded, skipping") == 5
    for name, text in texts.items():
        assert (records / name).read_text() == text, name
    assert fig5.stat().st_mtime_ns == drawn_at  # it names this checkpoint: not drawn again

    # a newer Fig. 5 that names no checkpoint, or another one, is drawn again from this one
    assert figures.png_source(fig5).startswith("spikessl checkpoint sha256 ")
    from PIL import Image, PngImagePlugin

    other = PngImagePlugin.PngInfo()
    other.add_text("Source", "spikessl checkpoint sha256 " + "0" * 64)
    for write in (
        lambda: fig5.write_bytes((records / "label-efficiency.png").read_bytes()),  # none
        lambda: Image.open(records / "label-efficiency.png").save(fig5, pnginfo=other),
    ):
        write()
        code, out, err = run_main(argv)
        assert code == 0, err
        assert fig5.read_bytes() == drawn

    # records moved to a machine without the run directories: Fig. 5 is kept, then asked for
    for run_dir in runs.glob("pretrain-*"):
        (run_dir / "checkpoint.pt").unlink()
    code, out, err = run_main(argv)
    assert code == 0 and "keeping" in err and fig5.exists()
    fig5.unlink()
    code, out, err = run_main(argv)
    assert code == 0 and "needs the best cell's pretraining run" in err and not fig5.exists()
    assert (
        "Fig. 5: nearest neighbours in spike-count latent space: not drawn yet."
        in (records / "README.md").read_text()
    )

    code, out, err = run_main([*argv, "--dry-run"])
    assert code == 0 and json.loads(out)["to_run"] == []
