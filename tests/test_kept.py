"""Kept pretrainings: exported beside the records, they rebuild the run on another machine."""

import json
import os
import shutil
import signal
import threading

import pytest
import torch
from tiny import forbidden, tiny_base

from spikessl import kept, pipeline
from spikessl.checkpoints import load_checkpoint
from spikessl.dryrun import plan_cells, planned_exports
from spikessl.grid import FINETUNE, SUPERVISED, expand_grid, pretrain_key
from spikessl.kept import export_path, parked_path
from spikessl.records import records_held
from spikessl.resumable import Interrupted
from spikessl.runs import claim_run_dir
from spikessl.sweep import run_sweep


def test_a_kept_pretraining_stands_in_for_its_run_on_another_machine(swept, tmp_path, monkeypatch):

    cells = swept["cells"]
    here = tmp_path / "here"
    shutil.copytree(swept["tmp"] / "records", here / "records")
    shutil.copytree(swept["tmp"] / "runs", here / "runs")
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    monkeypatch.setattr(pipeline, "finetune", forbidden)
    logs: list[str] = []

    def sweep(where, records="records", keep=False):
        return run_sweep(
            cells,
            where / records,
            where / "runs",
            progress=False,
            log=logs.append,
            keep_pretrained=keep,
        )

    planned = planned_exports(
        cells, here / "records", here / "runs", {c.name: "recorded" for c in cells}
    )
    sweep(here, keep=True)  # recorded cells: nothing trains, their one pretraining is exported
    export = export_path(here / "records", cells[0])
    assert planned == [export] and export.exists()  # as the dry-run said
    assert export == export_path(here / "records", cells[1])
    assert export.name == f"pretrain-{pretrain_key(cells[0].config)}.safetensors"
    assert sum("kept as" in line for line in logs) == 1
    # another machine: no run directories, the records folder holds only the export
    there = tmp_path / "there"
    (there / "records").mkdir(parents=True)
    shutil.copy(export, there / "records")
    monkeypatch.undo()
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    logs.clear()
    records = sweep(there)
    assert sum("restored" in line for line in logs) == 1  # the second cell reuses it
    for new, old in zip(records, swept["first"], strict=True):
        for key in ("knn_accuracy", "knn_accuracy_at_init", "knn_by_epoch", "firing_rates"):
            assert new[key] == old[key], key
        assert new["pretrain_loss_by_epoch"] == old["pretrain_loss_by_epoch"]
        assert new["wall_seconds"]["pretrain"] == old["wall_seconds"]["pretrain"]
        # fine-tuned from the same weights on the same labelled images: the same result
        assert new["finetune_test_accuracy"] == old["finetune_test_accuracy"]
        assert new["finetune_accuracy_by_epoch"] == old["finetune_accuracy_by_epoch"]
    assert [r["pretrain_restored_from"] for r in records] == [export.name] * 2
    restored = there / "runs" / f"pretrain-{pretrain_key(cells[0].config)}"
    summary = json.loads((restored / "summary.json").read_text())
    assert summary["restored_from"] == str(there / "records" / export.name)
    assert "loop" not in load_checkpoint(restored)  # weights only: finished, never resumed
    # kept again from there, the export still holds the split's digest
    sweep(there, "again", keep=True)
    again = load_checkpoint(export_path(there / "again", cells[0]))
    assert again["split_labelled_sha256"] == load_checkpoint(export)["split_labelled_sha256"]


def test_an_export_of_another_pretraining_is_refused(swept, tmp_path, monkeypatch):
    from spikessl.checkpoints import export_safetensors

    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    source = swept["tmp"] / "runs" / f"pretrain-{pretrain_key(swept['cells'][0].config)}"
    other = expand_grid(tiny_base("pretrain.lr=5e-4"), [])
    wrong = export_path(tmp_path / "records", other[0])  # named for the other cell
    export_safetensors(load_checkpoint(source), wrong, source)
    with pytest.raises(ValueError, match="with other settings than cell .* move it out"):
        run_sweep(other, tmp_path / "records", tmp_path / "runs", progress=False)
    assert not list((tmp_path / "runs").glob("pretrain-*"))


def test_files_kept_by_an_earlier_spikessl_are_found_after_an_upgrade(swept, tmp_path, monkeypatch):
    """A file's name hashes every pretraining setting, so a config field added to spikessl
    since (here ``augment.gray_p``, left at its default) changes the key: the sweep must still
    find the kept export and the parked checkpoint by their settings, and restore from them
    rather than pretrain again, but never a file of other settings."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from spikessl.checkpoints import export_safetensors
    from spikessl.grid import _digest, _prune

    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    cell = swept["cells"][0]
    records = tmp_path / "records"
    sweep_keep = run_sweep(  # recorded cells: exports the pretraining, trains nothing
        swept["cells"], records, swept["tmp"] / "runs", progress=False, keep_pretrained=True
    )
    assert len(sweep_keep) == 2
    current = export_path(records, cell)

    def earlier(config: dict) -> tuple[dict, str]:  # as written before gray_p existed
        config = json.loads(json.dumps(config))
        del config["augment"]["gray_p"]
        return config, _digest(_prune(json.loads(json.dumps(config)), ("finetune",)))

    with safe_open(str(current), "pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    config, old_key = earlier(json.loads(meta["spikessl_config"]))
    assert old_key != pretrain_key(cell.config)
    there = tmp_path / "there" / "records"
    there.mkdir(parents=True)
    old = there / f"pretrain-{old_key}.safetensors"
    save_file(tensors, str(old), metadata=meta | {"spikessl_config": json.dumps(config)})
    damaged = there / "pretrain-000000000000.safetensors"  # scanned first: read, passed over
    damaged.write_bytes(b"not a safetensors file")
    assert export_path(there, cell) == old == export_path(there, swept["cells"][1])
    logs: list[str] = []
    restored = run_sweep(
        swept["cells"],
        there,
        tmp_path / "there" / "runs",
        progress=False,
        log=logs.append,
        keep_pretrained=True,
    )
    assert [r["pretrain_restored_from"] for r in restored] == [old.name] * 2
    assert restored[0]["knn_accuracy"] == swept["first"][0]["knn_accuracy"]
    assert sorted(p.name for p in there.glob("pretrain-*")) == [damaged.name, old.name]
    # a parked checkpoint named by the earlier key is found the same way, and dropped
    parked = dict(load_checkpoint(swept["tmp"] / "runs" / f"pretrain-{pretrain_key(cell.config)}"))
    parked["config"], _ = earlier(parked["config"])
    torch.save(parked, there / f"pretrain-{old_key}.partial.pt")
    assert parked_path(there, cell) == there / f"pretrain-{old_key}.partial.pt"
    kept.drop_parked(there, cell, logs.append)
    assert not (there / f"pretrain-{old_key}.partial.pt").exists()
    # an unreadable file may hold any pretraining without a file of its own: said, not passed
    # over (the pretraining would run again, for hours)
    other = expand_grid(tiny_base("pretrain.lr=5e-4"), [])[0]
    with pytest.raises(ValueError, match=r"pretrain-000000000000.safetensors: not a complete"):
        export_path(there, other)
    damaged.unlink()
    # other settings: not this cell's file, whatever its name
    assert export_path(there, other) == there / f"pretrain-{pretrain_key(other.config)}.safetensors"
    assert parked_path(there, other) == there / f"pretrain-{pretrain_key(other.config)}.partial.pt"
    # nor a fine-tuning of its pretraining (the same settings but for the unread finetune ones)
    old.unlink()
    fine_tuned = swept["tmp"] / "runs" / cell.key / "finetune"
    export_safetensors(load_checkpoint(fine_tuned), there / "pretrain-111111111111.safetensors")
    assert export_path(there, cell) == there / f"pretrain-{pretrain_key(cell.config)}.safetensors"


def test_an_export_without_its_runs_summary_cannot_rebuild_the_run(swept, tmp_path):
    from spikessl.checkpoints import export_safetensors
    from spikessl.restore import restore_run

    pre_dir = swept["tmp"] / "runs" / f"pretrain-{pretrain_key(swept['cells'][0].config)}"
    bare = export_safetensors(load_checkpoint(pre_dir), tmp_path / "bare.safetensors")
    with pytest.raises(ValueError, match="not its run's summary.*spikessl export RUN_DIR"):
        restore_run(load_checkpoint(bare), bare, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_stopped_pretraining_is_parked_and_resumed_elsewhere(swept, tmp_path, monkeypatch):
    cells = expand_grid(tiny_base(), ["finetune.lr=1e-3"])  # the fixture's first cell
    assert cells[0].key == swept["cells"][0].key
    real_nt_xent, steps, logs = pipeline.nt_xent, [], []

    def stop_at_step_3(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:  # what `kill` does: the loop checkpoints after this step
            signal.raise_signal(signal.SIGTERM)
        return real_nt_xent(*args, **kwargs)

    def sweep(where, **kwargs):
        return run_sweep(
            cells, where / "records", where / "runs", progress=False, log=logs.append, **kwargs
        )

    here, there = tmp_path / "here", tmp_path / "there"
    monkeypatch.setattr(pipeline, "nt_xent", stop_at_step_3)
    with pytest.raises(Interrupted):
        sweep(here, keep_pretrained=True)
    monkeypatch.undo()
    parked = parked_path(here / "records", cells[0])
    assert parked.name == f"pretrain-{pretrain_key(cells[0].config)}.partial.pt"
    assert load_checkpoint(parked)["step"] == 3
    assert any(f"parked at step 3 as {parked}" in line for line in logs)
    # another machine: no run directories, the records folder holds only the parked file
    (there / "records").mkdir(parents=True)
    shutil.copy(parked, there / "records")
    (state,) = plan_cells(cells, there / "records", there / "runs").values()
    assert state.startswith(f"pretraining resumes from {parked.name} (step 3), ")
    resumed, real_pretrain = [], pipeline.pretrain

    def spy(cfg, run_dir, progress, resume=None):
        resumed.append(None if resume is None else resume["step"])
        return real_pretrain(cfg, run_dir, progress, resume=resume)

    monkeypatch.setattr(pipeline, "pretrain", spy)
    logs.clear()
    (record,) = sweep(there, keep_pretrained=True)
    assert resumed == [3] and any("rebuilt" in line for line in logs)
    pre_dir = there / "runs" / f"pretrain-{pretrain_key(cells[0].config)}"
    reference = swept["tmp"] / "runs" / pre_dir.name  # the fixture's uninterrupted run
    a, b = load_checkpoint(pre_dir), load_checkpoint(reference)
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for field in ("knn_accuracy", "pretrain_loss_by_epoch", "finetune_test_accuracy"):
        assert record[field] == swept["second"][0][field], field
    # finished: the export supersedes the parked checkpoint
    assert export_path(there / "records", cells[0]).exists()
    assert not parked_path(there / "records", cells[0]).exists()


def test_a_parked_checkpoint_of_another_pretraining_is_refused(swept, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    source = swept["tmp"] / "runs" / f"pretrain-{pretrain_key(swept['cells'][0].config)}"
    other = expand_grid(tiny_base("pretrain.lr=5e-4"), [])
    wrong = parked_path(tmp_path / "records", other[0])  # named for the other cell
    wrong.parent.mkdir()
    shutil.copy(source / "checkpoint.pt", wrong)
    (state,) = plan_cells(other, tmp_path / "records", tmp_path / "runs").values()
    assert state.startswith("refused: ") and "with other settings" in state
    with pytest.raises(ValueError, match="with other settings than cell .* move it out"):
        run_sweep(other, tmp_path / "records", tmp_path / "runs", progress=False)
    assert not list((tmp_path / "runs").glob("pretrain-*"))


def test_a_park_that_fails_leaves_the_stop_as_it_was(tmp_path, monkeypatch):
    (cell,) = expand_grid(tiny_base(), [])
    real_nt_xent, logs = pipeline.nt_xent, []

    def stop_now(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return real_nt_xent(*args, **kwargs)

    def full_disk(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(pipeline, "nt_xent", stop_now)
    monkeypatch.setattr(kept, "park", full_disk)
    with pytest.raises(Interrupted):  # not the OSError: the stop is what the user must read
        run_sweep(
            [cell],
            tmp_path / "records",
            tmp_path / "runs",
            progress=False,
            log=logs.append,
            keep_pretrained=True,
        )
    assert "  not parked: No space left on device" in logs


def _stopped_at(step: int, where, cells, monkeypatch, **kwargs) -> None:
    """Run the cells' sweep in ``where`` until SIGTERM after pretraining step ``step``."""
    real_nt_xent, steps = pipeline.nt_xent, []

    def stop(*args, **kw):
        steps.append(1)
        if len(steps) == step:
            signal.raise_signal(signal.SIGTERM)
        return real_nt_xent(*args, **kw)

    monkeypatch.setattr(pipeline, "nt_xent", stop)
    with pytest.raises(Interrupted):
        run_sweep(cells, where / "records", where / "runs", progress=False, **kwargs)
    monkeypatch.undo()


def test_a_parked_file_that_got_further_replaces_a_local_run_behind_it(
    swept, tmp_path, monkeypatch
):
    cells = expand_grid(tiny_base(), ["finetune.lr=1e-3"])  # the fixture's first cell
    here, there, logs = tmp_path / "here", tmp_path / "there", []
    _stopped_at(4, here, cells, monkeypatch, keep_pretrained=True, log=logs.append)
    _stopped_at(2, there, cells, monkeypatch, log=logs.append)  # an older try, not parked
    parked = parked_path(there / "records", cells[0])
    parked.parent.mkdir()
    shutil.copy(parked_path(here / "records", cells[0]), parked)
    pre_dir = there / "runs" / f"pretrain-{pretrain_key(cells[0].config)}"
    (state,) = plan_cells(cells, there / "records", there / "runs").values()
    assert state.startswith(f"pretraining resumes from {parked.name} (step 4) (the run there")
    with claim_run_dir(pre_dir):  # another process holds the run: not this sweep's to park
        kept.park(cells[0], there / "runs", there / "records", logs.append)
    assert logs[-1] == f"  pretrain: not parked: another process is running {pre_dir}"
    kept.park(cells[0], there / "runs", there / "records", logs.append)  # step 2 < 4
    assert logs[-1].endswith("(step 2); kept as it is") and load_checkpoint(parked)["step"] == 4
    logs.clear()
    (record,) = run_sweep(cells, there / "records", there / "runs", progress=False, log=logs.append)
    aside = pre_dir.with_name(f".{pre_dir.name}.behind-step2")
    moved = f"  pretrain: {parked} got further than {pre_dir} (step 2): moved to {aside} ("
    assert any(line.startswith(moved) and "delete it once" in line for line in logs)
    assert load_checkpoint(aside)["step"] == 2  # moved aside, not deleted
    assert record["pretrain_loss_by_epoch"] == swept["first"][0]["pretrain_loss_by_epoch"]
    # finished without --keep-pretrained: no export takes the parked file's place, so it stays
    assert parked.exists() and not export_path(there / "records", cells[0]).exists()
    # moved aside again at the same step: a new name, the first one untouched
    shutil.copytree(aside, pre_dir.with_name("again"))
    shutil.rmtree(pre_dir)
    pre_dir.with_name("again").rename(pre_dir)
    kept.rebuild(parked, pre_dir, cells[0], logs.append)
    assert pre_dir.with_name(f"{aside.name}-2").is_dir() and load_checkpoint(aside)["step"] == 2
    # a damaged parked file: a message that names it, not a traceback
    shutil.rmtree(pre_dir)
    shutil.copytree(pre_dir.with_name(f"{aside.name}-2"), pre_dir)
    parked.write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    (there / "records" / f"{cells[0].name}.json").unlink()  # the cell to run again
    with pytest.raises(ValueError, match=f"{parked}.*move it out of the records folder"):
        run_sweep(cells, there / "records", there / "runs", progress=False, log=logs.append)


def test_parks_of_one_pretraining_from_two_run_dirs_take_turns(tmp_path, monkeypatch):
    # two sweeps with their own --run-dir, one --records: the second park waits while another
    # process compares and copies, so the run that got further is what stays
    fcntl = pytest.importorskip("fcntl")
    cells = expand_grid(tiny_base(), [])
    _stopped_at(2, tmp_path, cells, monkeypatch, keep_pretrained=True)
    records = tmp_path / "records"
    parked = parked_path(records, cells[0])
    parked.unlink()
    logs: list[str] = []
    park = (cells[0], tmp_path / "runs", records, logs.append)
    fd = os.open(records, os.O_RDONLY)  # as another process's park holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        parking = threading.Thread(target=kept.park, args=park, daemon=True)
        parking.start()
        parking.join(timeout=1.0)
        assert parking.is_alive() and not parked.exists()  # waiting for the other park
    finally:
        os.close(fd)
    parking.join(timeout=30)
    assert load_checkpoint(parked)["step"] == 2 and "parked at step 2" in logs[-1]
    # a holder that never lets go (stopped, stuck): the park goes ahead after a while
    fd = os.open(records, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with records_held(records, logs.append, wait_s=0.3):
            assert logs[-1].endswith("for 0.3 s; going ahead without its lock")
    finally:
        os.close(fd)
    # a records folder that cannot be locked (its file system): the park still happens
    parked.unlink()
    real_flock = fcntl.flock

    def no_locks(fd, operation):
        if isinstance(fd, int):  # the records folder's descriptor, not the run's lock file
            raise OSError(37, "No locks available")
        return real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", no_locks)
    kept.park(*park)
    assert load_checkpoint(parked)["step"] == 2
    assert "without the records folder's lock ([Errno 37] No locks available)" in logs[-2]
    # the pretraining finished and kept by another sweep meanwhile: no park beside its export
    monkeypatch.undo()
    parked.unlink()
    export_path(records, cells[0]).write_bytes(b"")  # park only asks whether it is there
    kept.park(*park)
    assert not parked.exists() and logs[-1].endswith("holds the finished pretraining")


def test_a_kept_export_replaces_a_local_unfinished_run(swept, tmp_path, monkeypatch):
    cells = expand_grid(tiny_base(), ["finetune.lr=1e-3"])
    _stopped_at(2, tmp_path, cells, monkeypatch)  # a local try, stopped at step 2
    source = swept["tmp"] / "runs" / f"pretrain-{pretrain_key(cells[0].config)}"
    export = export_path(tmp_path / "records", cells[0])
    export.parent.mkdir(exist_ok=True)
    from spikessl.checkpoints import export_safetensors

    export_safetensors(load_checkpoint(source), export, source)
    (state,) = plan_cells(cells, tmp_path / "records", tmp_path / "runs").values()
    assert state.startswith(f"pretraining restored from {export.name} (the run there moved")
    monkeypatch.setattr(pipeline, "pretrain", forbidden)  # the export's run is finished
    (record,) = run_sweep(cells, tmp_path / "records", tmp_path / "runs", progress=False)
    assert record["pretrain_restored_from"] == export.name
    assert record["finetune_test_accuracy"] == swept["first"][0]["finetune_test_accuracy"]


def test_a_second_signal_during_the_park_waits_for_it(tmp_path, monkeypatch):
    (cell,) = expand_grid(tiny_base(), [])
    real_park, logs = kept.park, []

    def signalled_again(*args):
        signal.raise_signal(signal.SIGTERM)  # the scheduler signals twice
        signal.raise_signal(signal.SIGINT)  # and the user presses Ctrl-C
        real_park(*args)

    monkeypatch.setattr(kept, "park", signalled_again)
    _stopped_at(3, tmp_path, [cell], monkeypatch, keep_pretrained=True, log=logs.append)
    assert load_checkpoint(parked_path(tmp_path / "records", cell))["step"] == 3


def test_sigterm_outside_a_training_step_parks_the_run(swept, tmp_path, monkeypatch):
    cells = expand_grid(tiny_base(), ["finetune.lr=1e-3"])
    _stopped_at(3, tmp_path, cells, monkeypatch)  # a checkpoint at step 3, not parked

    def loading_data(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # e.g. while the data loads, before any step

    def unhandled(signum, frame):  # had the sweep not handled it: fail, not end pytest
        raise AssertionError("SIGTERM reached the handler outside the sweep")

    monkeypatch.setattr(pipeline, "staged", loading_data)
    outside = signal.signal(signal.SIGTERM, unhandled)
    with pytest.raises(KeyboardInterrupt) as stop:
        run_sweep(
            cells,
            tmp_path / "records",
            tmp_path / "runs",
            progress=False,
            keep_pretrained=True,
            log=lambda _: None,
        )
    assert load_checkpoint(parked_path(tmp_path / "records", cells[0]))["step"] == 3
    assert stop.value.signum == signal.SIGTERM  # the CLI exits 143, as inside a step
    assert signal.getsignal(signal.SIGTERM) is unhandled  # the sweep's handler is gone
    signal.signal(signal.SIGTERM, outside)


def _stopped_in_finetune(step: int, monkeypatch, supervised: bool = False) -> None:
    """SIGTERM after optimiser step ``step`` of the next fine-tuning (or, with ``supervised``,
    the next supervised baseline): what `kill` does mid-run."""
    real_finetune, real_loss, steps = pipeline.finetune, pipeline.F.cross_entropy, []

    def stop(*args, **kwargs):
        steps.append(1)
        if len(steps) == step:  # the loop checkpoints after this step
            signal.raise_signal(signal.SIGTERM)
        return real_loss(*args, **kwargs)

    def finetune(cfg, checkpoint, run_dir, progress, resume=None):
        if (checkpoint is None) == supervised:  # the stage to stop
            monkeypatch.setattr(pipeline.F, "cross_entropy", stop)
        return real_finetune(cfg, checkpoint, run_dir, progress, resume=resume)

    monkeypatch.setattr(pipeline, "finetune", finetune)


def _resumed_steps(monkeypatch) -> list:
    """The step each fine-tuning or baseline from here on resumes after (None: from its start)."""
    real_finetune, resumed = pipeline.finetune, []

    def spy(cfg, checkpoint, run_dir, progress, resume=None):
        resumed.append(None if resume is None else resume["step"])
        return real_finetune(cfg, checkpoint, run_dir, progress, resume=resume)

    monkeypatch.setattr(pipeline, "finetune", spy)
    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    return resumed


def test_a_stopped_finetuning_is_parked_and_resumed_elsewhere(swept, tmp_path, monkeypatch):
    cells = swept["cells"][:1]  # finetune.lr=1e-3
    here, there, logs = tmp_path / "here", tmp_path / "there", []
    _stopped_in_finetune(1, monkeypatch)
    stop_kwargs = {"progress": False, "keep_pretrained": True}
    with pytest.raises(Interrupted):
        run_sweep(cells, here / "records", here / "runs", **stop_kwargs, log=logs.append)
    monkeypatch.undo()
    parked = parked_path(here / "records", cells[0], FINETUNE)
    assert parked.name == f"finetune-{cells[0].key}.partial.pt"
    saved = load_checkpoint(parked)
    assert saved["command"] == "finetune" and saved["step"] == 1
    assert f"  finetune: unfinished, parked at step 1 as {parked}: a sweep" in " ".join(logs)
    export = export_path(here / "records", cells[0])  # the finished pretraining, kept
    assert sorted(p.name for p in (here / "records").iterdir()) == [parked.name, export.name]
    # another machine: only the records folder
    shutil.copytree(here / "records", there / "records")
    (state,) = plan_cells(cells, there / "records", there / "runs").values()
    assert state == (
        f"pretraining restored from {export.name}, fine-tuning resumes from {parked.name} (step 1)"
    )
    resumed = _resumed_steps(monkeypatch)
    (record,) = run_sweep(cells, there / "records", there / "runs", progress=False)
    assert resumed == [1] and record["finetune_steps"] > 1
    for field in ("finetune_test_accuracy", "finetune_accuracy_by_epoch", "finetune_steps"):
        assert record[field] == swept["first"][0][field], field  # as uninterrupted
    assert not (there / "records" / parked.name).exists()  # the record supersedes it
    # parked for another cell's name: refused, naming the stage
    other = swept["cells"][1]
    wrong = parked_path(there / "records", other, FINETUNE)
    shutil.copy(parked, wrong)
    (state,) = plan_cells([other], there / "records", there / "runs").values()
    assert state.startswith(f"refused: {wrong} holds a finetune run with other settings than")
    assert f"cell {other.name}'s fine-tuning (its name says key {other.key})" in state


def test_a_stopped_baseline_is_parked_and_resumed_elsewhere(swept, tmp_path, monkeypatch):
    cells = swept["cells"][:1]
    here, there, logs = tmp_path / "here", tmp_path / "there", []
    _stopped_in_finetune(1, monkeypatch, supervised=True)
    stop_kwargs = {"progress": False, "keep_pretrained": True, "baseline": True}
    with pytest.raises(Interrupted):
        run_sweep(cells, here / "records", here / "runs", **stop_kwargs, log=logs.append)
    monkeypatch.undo()
    parked = parked_path(here / "records", cells[0], SUPERVISED)
    assert parked.name.startswith("supervised-") and load_checkpoint(parked)["step"] == 1
    assert f"  supervised: unfinished, parked at step 1 as {parked}" in " ".join(logs)
    shutil.copytree(here / "records", there / "records")  # the SSL result is recorded
    (state,) = plan_cells(cells, there / "records", there / "runs", baseline=True).values()
    assert state == f"recorded; supervised baseline resumes from {parked.name} (step 1)"
    resumed = _resumed_steps(monkeypatch)
    (record,) = run_sweep(cells, there / "records", there / "runs", baseline=True, progress=False)
    assert resumed == [1]
    for field in ("supervised_test_accuracy", "supervised_accuracy_by_epoch", "finetune_steps"):
        assert record[field] == swept["second"][0][field], field
    assert not (there / "records" / parked.name).exists()
