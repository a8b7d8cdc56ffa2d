"""Checkpoints: clear errors for unreadable or mismatched files, a lossless safetensors export."""

import json
import re
import shutil
import zipfile

import pytest
import torch
from tiny import TINY

from spikessl import pipeline
from spikessl.checkpoints import load_checkpoint, pretrained_encoder
from spikessl.config import load_config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrained")
    cfg = load_config("mnist-quick", [*TINY, f"out_dir={tmp}"])
    pipeline.pretrain(cfg, tmp / "pretrain", progress=False)
    return cfg, tmp


class NotATensor:
    pass


def test_corrupt_checkpoint_gets_a_clear_error(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*not a PyTorch checkpoint"):
        load_checkpoint(tmp_path)
    torch.save({"model": {"w": torch.ones(4096)}, "config": {}}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match="truncated, overwritten or of another kind"):
        load_checkpoint(tmp_path / "truncated.pt")
    damaged = bytearray(data)
    damaged[200:3000] = bytes(2800)  # zeros inside the archive, its index intact
    (tmp_path / "damaged.pt").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="the archive is damaged"):
        load_checkpoint(tmp_path / "damaged.pt")
    with (
        zipfile.ZipFile(tmp_path / "whole.pt") as whole,
        zipfile.ZipFile(tmp_path / "pickle.pt", "w") as out,
    ):  # the archive intact, its pickled dict garbled
        for item in whole.infolist():
            data = whole.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data[:10] + b"\x00garbage\xff" * 3 + data[40:]
            out.writestr(item, data)
    with pytest.raises(ValueError, match=r"damaged \(its pickled data does not parse\)"):
        load_checkpoint(tmp_path / "pickle.pt")
    torch.save({"model": {}, "config": {}, "extra": NotATensor()}, tmp_path / "code.pt")
    with pytest.raises(ValueError, match="could run code from the file"):
        load_checkpoint(tmp_path / "code.pt")
    with pytest.raises(FileNotFoundError, match="no such file or folder as"):
        load_checkpoint(tmp_path / "missing")


def test_checkpoint_of_another_version_lists_the_mismatch(pretrained):
    cfg, tmp = pretrained
    checkpoint = load_checkpoint(tmp / "pretrain")
    model = dict(checkpoint["model"])
    model["encoder.convs.0.bias"] = torch.zeros(12)  # e.g. written before biases were dropped
    model["encoder.fcs.0.weight"] = torch.zeros(128, 99)
    with pytest.raises(ValueError, match=r"unexpected convs\.0\.bias"):  # prefix stripped
        pretrained_encoder({**checkpoint, "model": model}, cfg)
    with pytest.raises(ValueError, match=r"fcs\.0\.weight: shape \(128, 99\)"):
        pretrained_encoder({**checkpoint, "model": model}, cfg)
    with pytest.raises(ValueError, match="no 'encoder' settings"):  # hand-made, not a KeyError
        pretrained_encoder({**checkpoint, "config": {"seed": 0}}, cfg)


def test_export_safetensors_round_trip(pretrained, capsys):
    from safetensors import safe_open

    from spikessl.cli import main

    _, tmp = pretrained
    assert main(["export", str(tmp / "pretrain"), "--out", str(tmp / "m.safetensors")]) == 0
    checkpoint = load_checkpoint(tmp / "pretrain")
    with safe_open(str(tmp / "m.safetensors"), "pt") as fh:
        assert set(fh.keys()) == set(checkpoint["model"])
        for key in fh.keys():  # noqa: SIM118 (safe_open is not iterable)
            assert torch.equal(fh.get_tensor(key), checkpoint["model"][key])
        assert json.loads(fh.metadata()["spikessl_config"]) == checkpoint["config"]
    assert main(["export", str(tmp / "nowhere")]) == 2
    assert f"no such file or folder as {tmp / 'nowhere'}" in capsys.readouterr().err
    folder = tmp / "exports"
    folder.mkdir()  # --out an existing folder: the file goes in it
    assert main(["export", str(tmp / "pretrain"), "--out", str(folder)]) == 0
    assert json.loads(capsys.readouterr().out)["safetensors"] == str(folder / "model.safetensors")
    assert (folder / "model.safetensors").stat().st_size > 0
    # readable as the user's other files are (umask), not owner-only as safetensors' save_file
    plain = tmp / "plain.txt"
    plain.write_text("")
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert main(["export", str(tmp / "pretrain"), "--out", f"{tmp / 'new'}/"]) == 0  # made
    assert json.loads(capsys.readouterr().out)["safetensors"] == str(
        tmp / "new" / "model.safetensors"
    )
    # --out below a file: the OS error, with what to check, and exit status 2
    assert (
        main(
            [
                "export",
                str(tmp / "pretrain"),
                "--out",
                str(folder / "model.safetensors" / "m.safetensors"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "(a file where a folder belongs?)" in err and "choose another --out" in err


def test_export_never_replaces_a_file(pretrained, capsys):
    from spikessl.cli import main

    _, tmp = pretrained
    run = tmp / "pretrain"
    saved = {name: (run / name).read_bytes() for name in ("checkpoint.pt", "summary.json")}
    for name in saved:  # a run's own files: not a .safetensors name
        assert main(["export", str(run), "--out", str(run / name)]) == 2
        assert "name the export *.safetensors" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in saved} == saved
    keep = tmp / "keep.safetensors"
    keep.write_text("precious")
    assert main(["export", str(run), "--out", str(keep)]) == 2
    assert "exists and export never replaces a file" in capsys.readouterr().err
    assert keep.read_text() == "precious"


def test_export_refuses_a_run_whose_summary_is_damaged(pretrained, tmp_path, capsys):
    import shutil

    from spikessl.cli import main

    _, tmp = pretrained
    run = tmp_path / "run"
    shutil.copytree(tmp / "pretrain", run)
    text = (run / "summary.json").read_text()
    (run / "summary.json").write_text(text[: len(text) // 2])  # truncated
    out = tmp_path / "e.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'summary.json'} or {run / 'metrics.jsonl'} is damaged" in err
    assert "checkpoint.pt" in err and not out.exists()
    for summary, metrics in (("[]", None), (text, "")):  # JSON, but not what a run writes
        (run / "summary.json").write_text(summary)
        if metrics is not None:
            (run / "metrics.jsonl").write_text(metrics)
        assert main(["export", str(run), "--out", str(out)]) == 2
        assert "is damaged" in capsys.readouterr().err and not out.exists()
    assert main(["export", str(run / "checkpoint.pt"), "--out", str(out)]) == 0  # the fix


def test_encoder_settings_that_differ_from_the_checkpoint_say_how_to_match(pretrained):
    cfg, tmp = pretrained
    checkpoint = load_checkpoint(tmp / "pretrain")
    other = load_config("mnist-quick", [*TINY, "encoder.conv_channels=[16,32]"])
    saved = tuple(checkpoint["config"]["encoder"]["conv_channels"])
    want = re.escape(f"conv_channels: checkpoint {saved} vs config (16, 32). Drop --config")
    with pytest.raises(ValueError, match=want):
        pretrained_encoder(checkpoint, other)


def test_an_export_fine_tunes_and_votes_as_its_run_does(pretrained, tmp_path, capsys):
    from spikessl.cli import main

    _, tmp = pretrained
    export = tmp_path / "encoder.safetensors"
    assert main(["export", str(tmp / "pretrain"), "--out", str(export)]) == 0
    capsys.readouterr()
    out = {}
    for name, source in (("run", tmp / "pretrain"), ("export", export)):
        ft = ["finetune", "--pretrained", str(source), "--run-dir", str(tmp_path / name)]
        assert main([*ft, "--no-progress"]) == 0
        out[name] = json.loads(capsys.readouterr().out)
        assert main(["knn", "--pretrained", str(source)]) == 0
        out[name]["knn"] = json.loads(capsys.readouterr().out)["knn_accuracy"]
    assert out["export"]["test_accuracy"] == out["run"]["test_accuracy"]
    assert out["export"]["knn"] == out["run"]["knn"]
    weights = [load_checkpoint(tmp_path / name)["model"] for name in ("run", "export")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # the export remembers which images its pretraining left out for fine-tuning
    assert main(["finetune", "--pretrained", str(export), "seed=1"]) == 2
    assert "labelled part is not the one this pretraining run left out" in capsys.readouterr().err
    # and whether its run had finished
    unfinished = tmp_path / "unfinished"
    shutil.copytree(tmp / "pretrain", unfinished)
    (unfinished / "summary.json").unlink()
    assert main(["export", str(unfinished), "--out", str(tmp_path / "u.safetensors")]) == 0
    said = capsys.readouterr().err  # the export says what it holds and who refuses it
    assert f"export: {unfinished} is an unfinished run: " in said and "refuses it" in said
    assert main(["finetune", "--pretrained", str(tmp_path / "u.safetensors")]) == 2
    assert "exported from an unfinished pretraining run" in capsys.readouterr().err


def test_a_damaged_or_foreign_safetensors_file_gets_a_clear_error(pretrained, tmp_path):
    from safetensors.torch import save_file

    from spikessl.checkpoints import export_safetensors

    _, tmp = pretrained
    whole = export_safetensors(load_checkpoint(tmp / "pretrain"), tmp_path / "whole.safetensors")
    loaded = load_checkpoint(whole)
    assert loaded["command"] == "pretrain" and "loop" not in loaded
    data = whole.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match="not a complete safetensors file.*spikessl export"):
        load_checkpoint(tmp_path / "cut.safetensors")
    save_file({"w": torch.ones(3)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="without spikessl's config in its metadata"):
        load_checkpoint(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError, match="no safetensors file"):
        load_checkpoint(tmp_path / "missing.safetensors")
