"""End to end on real MNIST: pretraining stays alive and helps, fine-tuning learns, seeds fix it."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from tiny import small_config

from spikessl import pipeline
from spikessl.checkpoints import load_checkpoint
from spikessl.config import load_config
from spikessl.encoders import SimCLR, SpikingClassifier, SpikingEncoder
from spikessl.labelled import labelled_split


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = small_config(tmp)
    summary = pipeline.pretrain(cfg, tmp / "pretrain", progress=False)
    return cfg, summary, tmp


def test_pretraining_hundreds_of_steps_without_collapse(pretrained):
    cfg, summary, tmp = pretrained
    records = [json.loads(line) for line in (tmp / "pretrain" / "metrics.jsonl").open()]
    assert len(records) == cfg.pretrain.epochs
    assert records[-1]["step"] >= 300
    for r in records:  # every layer, output included, fires but is not saturated
        assert all(0.01 < rate < 0.99 for rate in r["firing_rates"]), r
    assert records[-1]["loss"] < records[0]["loss"]
    assert records[-1]["loss"] < 0.95 * torch.log(torch.tensor(2 * 64 - 1.0)).item()


def test_pretrained_latents_are_informative(pretrained):
    _, summary, _ = pretrained
    # kNN on spike counts: clearly above the same encoder at initialisation
    assert summary["knn_accuracy"] > summary["knn_accuracy_at_init"] + 3.0, summary
    assert summary["knn_accuracy"] > 80.0, summary


def test_finetune_reaches_nontrivial_accuracy(pretrained):
    cfg, _, tmp = pretrained
    checkpoint = load_checkpoint(tmp / "pretrain")
    summary = pipeline.finetune(cfg, checkpoint, tmp / "finetune", progress=False)
    assert summary["test_accuracy"] > 80.0, summary
    assert summary["labelled_images"] == 600  # 20% of the 3,000-image subset
    rates = summary["firing_rates"]
    assert 0.0 < rates[-1] < 1.0


def test_split_is_disjoint_and_identical_across_commands(tmp_path):
    cfg = small_config(tmp_path)
    a = pipeline.load_data(cfg, torch.device("cpu"))
    b = pipeline.load_data(cfg, torch.device("cpu"))
    assert torch.equal(a.labelled, b.labelled) and torch.equal(a.unlabelled, b.unlabelled)
    assert len(set(a.labelled.tolist()) & set(a.unlabelled.tolist())) == 0
    assert len(a.labelled) + len(a.unlabelled) == len(a.train_labels) == 3000


def test_seed_fixes_the_whole_run(tmp_path):
    tiny = {
        "pretrain": {"epochs": 1, "batch_size": 32},
        "data": {"train_limit": 400, "test_limit": 100},
    }
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = small_config(tmp_path, seed=seed, **tiny)
        pipeline.pretrain(cfg, tmp_path / name, progress=False)
        runs.append(load_checkpoint(tmp_path / name)["model"])
    for key in runs[0]:
        assert torch.equal(runs[0][key], runs[1][key]), key
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0] if k.endswith("weight"))


def test_finetune_rejects_a_checkpoint_of_another_architecture(tmp_path, pretrained):
    _, _, tmp = pretrained
    checkpoint = load_checkpoint(tmp / "pretrain")
    cfg = small_config(tmp_path, encoder={"fc_sizes": [64]})
    with pytest.raises(ValueError, match="fc_sizes"):
        pipeline.finetune(cfg, checkpoint, tmp_path / "ft", progress=False)


def test_finetune_refuses_a_labelled_part_the_pretraining_did_not_leave_out(tmp_path, pretrained):
    cfg, _, tmp = pretrained
    checkpoint = load_checkpoint(tmp / "pretrain")
    other_seed = replace(cfg, seed=cfg.seed + 1)  # another 80/20 split
    with pytest.raises(ValueError, match="not the one this pretraining run left out"):
        pipeline.finetune(other_seed, checkpoint, tmp_path / "ft", progress=False)
    assert not (tmp_path / "ft").exists()


def test_a_batch_the_unlabelled_images_cannot_fill_fails_before_any_work(tmp_path, monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("the kNN pass should not run")

    monkeypatch.setattr(pipeline, "knn_accuracy", forbidden)
    monkeypatch.setattr(pipeline, "_start", forbidden)  # known from the config: nothing loads
    cfg = small_config(tmp_path, data={"train_limit": 100}, pretrain={"batch_size": 256})
    fix = "set data.train_limit=320, or pretrain.batch_size=80"  # 32 - 6 labelled = 26 a class
    with pytest.raises(ValueError, match=f"keeps 10 image.* each of 10 classes, 80 .*; {fix}"):
        pipeline.pretrain(cfg, tmp_path / "pre", progress=False)
    assert not (tmp_path / "pre").exists()


def test_linear_probe_leaves_the_encoder_untouched(tmp_path, pretrained):
    _, _, tmp = pretrained
    checkpoint = load_checkpoint(tmp / "pretrain")
    cfg = small_config(tmp_path, finetune={"linear_probe": True, "epochs": 1})
    pipeline.finetune(cfg, checkpoint, tmp_path / "probe", progress=False)
    after = load_checkpoint(tmp_path / "probe")["model"]
    for key, value in checkpoint["model"].items():
        if key.startswith("encoder."):
            assert torch.equal(after[key], value), key


def test_fine_tuning_with_a_validation_part_reports_the_epoch_it_would_choose(tmp_path, pretrained):
    _, _, tmp = pretrained
    cfg = small_config(tmp_path, finetune={"val_fraction": 0.2, "epochs": 3})
    summary = pipeline.finetune(cfg, load_checkpoint(tmp / "pretrain"), tmp_path / "ft", False)
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").open()]
    assert summary["val_images"] == 120 and summary["labelled_images"] == 480
    assert summary["val_accuracy"] == rows[-1]["val_accuracy"]
    best = max(rows, key=lambda r: r["val_accuracy"])
    assert summary["best_val_accuracy"] == best["val_accuracy"]
    assert summary["best_val_epoch"] == best["epoch"]
    assert summary["test_accuracy_at_best_val"] == best["test_accuracy"]
    # measured on the held-out images: the final weights score them as the summary says
    from spikessl.evaluate import images_accuracy

    data = pipeline.load_data(cfg, torch.device("cpu"))
    model = SpikingClassifier(SpikingEncoder(cfg.encoder), 10)
    model.load_state_dict(load_checkpoint(tmp_path / "ft")["model"])
    held = labelled_split(data, cfg)[1]
    images, labels = data.train_images[held], data.train_labels[held]
    assert images_accuracy(model, images, labels, data, cfg) == summary["val_accuracy"]
    without = pipeline.finetune(
        small_config(tmp_path), load_checkpoint(tmp / "pretrain"), tmp_path / "plain", False
    )
    assert "val_accuracy" not in without and without["labelled_images"] == 600


def test_label_fraction_between_the_part_and_everything_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="label_fraction"):
        small_config(tmp_path, finetune={"label_fraction": 0.5})


def test_logit_scale_turns_counts_into_scaled_rates(tmp_path, monkeypatch):
    seen = []
    real = pipeline.F.cross_entropy
    monkeypatch.setattr(
        pipeline.F,
        "cross_entropy",
        lambda logits, y: seen.append(logits.detach()) or real(logits, y),
    )
    for scale in (0.0, 10.0):
        cfg = small_config(
            tmp_path / str(scale),
            data={"train_limit": 200, "test_limit": 50},
            finetune={"epochs": 1, "batch_size": 40, "logit_scale": scale},
        )
        pipeline.finetune(cfg, None, tmp_path / f"sup{scale}", progress=False)
    raw, scaled = seen[0], seen[len(seen) // 2]
    T = cfg.time_steps
    assert raw.min() >= 0 and torch.equal(raw, raw.round()) and raw.max() > 1  # counts
    # the same seed gives the same first batch and weights: only the scale differs
    torch.testing.assert_close(scaled, raw * 10.0 / T)


def test_min_steps_repeats_epochs_of_a_small_label_set(tmp_path):
    # 5% of 200 images = 10 images, 3 steps of 4 per epoch: 20 steps need 7 epochs
    cfg = small_config(
        tmp_path,
        data={"train_limit": 200, "test_limit": 50},
        finetune={"epochs": 2, "batch_size": 4, "label_fraction": 0.05, "min_steps": 20},
    )
    summary = pipeline.finetune(cfg, None, tmp_path / "sup", progress=False)
    assert (summary["epochs"], summary["steps"], summary["labelled_images"]) == (7, 21, 10)
    lines = (tmp_path / "sup" / "metrics.jsonl").read_text().splitlines()
    tested = [json.loads(line)["epoch"] for line in lines if "test_accuracy" in line]
    assert len(lines) == 7 and tested == [4, 7]  # tested about finetune.epochs times


def test_negative_min_steps_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="finetune.min_steps"):
        small_config(tmp_path, finetune={"min_steps": -1})


@pytest.mark.parametrize("bank", ["labelled", "train"])
def test_knn_reports_the_pixel_baseline_of_a_brute_force_nearest_neighbour(tmp_path, bank):
    cfg = small_config(
        tmp_path, knn={"k": 1, "bank": bank}, data={"train_limit": 500, "test_limit": 200}
    )
    result = pipeline.knn(cfg, None)
    data = pipeline.load_data(cfg, torch.device("cpu"))
    # k=1: the label of the bank image with the largest cosine similarity, in float64; the
    # bank is the labelled 20% (100 images) or all 500 training images
    voters = data.labelled.numpy() if bank == "labelled" else np.arange(500)
    assert len(voters) == (100 if bank == "labelled" else 500)
    bank_x = data.prepare(data.train_images[voters]).flatten(1).double().numpy()
    query = data.prepare(data.test_images).flatten(1).double().numpy()
    bank_x /= (bank_x**2).sum(1, keepdims=True) ** 0.5
    query /= (query**2).sum(1, keepdims=True) ** 0.5
    nearest = (query @ bank_x.T).argmax(1)
    labels = data.train_labels.numpy()[voters][nearest]
    expected = 100 * (labels == data.test_labels.numpy()).mean()
    assert result["pixel_knn_accuracy"] == pytest.approx(expected, abs=0.01)
    assert result["bank"] == bank
    assert 60 < result["pixel_knn_accuracy"] < 100  # pixels are a real baseline on MNIST


def test_knn_with_every_training_label_beats_the_labelled_part_on_pixels(tmp_path):
    # five times the voters: nearest neighbours get nearer (a check the bank really changes)
    def pixels(bank):
        cfg = small_config(
            tmp_path, knn={"k": 1, "bank": bank}, data={"train_limit": 1000, "test_limit": 300}
        )
        return pipeline.knn(cfg, None)["pixel_knn_accuracy"]

    assert pixels("train") > pixels("labelled") + 2


def test_center_feeds_nt_xent_standardised_counts_and_keeps_the_encoder_raw():
    torch.manual_seed(0)
    cfg = load_config("mnist-quick", {"time_steps": 4, "pretrain": {"center": True}})
    model = SimCLR(SpikingEncoder(cfg.encoder), 0, cfg.pretrain.center)
    assert not list(model.projector.parameters())  # nothing learned: only batch statistics
    images = torch.rand(16, 1, 28, 28) * 3
    counts = model.encoder(images, 4)  # what kNN and fine-tuning read: raw spike counts
    assert (counts >= 0).all() and counts.sum() > 0
    z = model.projector(counts)
    alive = counts.std(0) > 0
    expected = (counts - counts.mean(0)) / (counts.var(0, unbiased=False) + 1e-5).sqrt()
    torch.testing.assert_close(z[:, alive], expected[:, alive], atol=1e-4, rtol=1e-4)
    assert (z < 0).any()  # cosine similarities can now be negative


def test_loop_settings_carry_each_sections_optimiser_settings() -> None:
    cfg = load_config(
        "mnist-quick",
        [
            "pretrain.grad_clip=2.5",
            "finetune.grad_clip=0.5",
            "finetune.weight_decay=1e-4",
            "pretrain.warmup_steps=30",
            "finetune.warmup_steps=7",
            "on_divergence=stop",
        ],
    )
    pre = pipeline._loop(cfg, cfg.pretrain, drop_last=True, progress=False)
    ft = pipeline._loop(cfg, cfg.finetune, drop_last=False, progress=False)
    assert (pre.grad_clip, pre.batch_size, pre.warmup_steps) == (2.5, cfg.pretrain.batch_size, 30)
    assert (ft.grad_clip, ft.weight_decay, ft.drop_last, ft.warmup_steps) == (0.5, 1e-4, False, 7)
    assert pre.on_divergence == ft.on_divergence == "stop"


def _start_of_finetuning(monkeypatch, cfg, checkpoint, run_dir):
    """The classifier as fine-tuning receives it: its head's weights and test accuracy."""
    seen = {}

    def no_training(task, *args, **kwargs):
        seen["head"] = task.model.head.weight.detach().clone()
        seen.update(task.evaluate())  # test_accuracy
        return [{"step": 0, "firing_rates": [0.5], "test_accuracy": seen["test_accuracy"]}]

    monkeypatch.setattr(pipeline, "fit", no_training)
    pipeline.finetune(cfg, checkpoint, run_dir, progress=False)
    return seen


def test_prototype_head_starts_as_a_class_mean_classifier(tmp_path, pretrained, monkeypatch):
    _, _, tmp = pretrained
    checkpoint = load_checkpoint(tmp / "pretrain")
    cfg = small_config(tmp_path, finetune={"head_init": "prototypes"})
    seen = _start_of_finetuning(monkeypatch, cfg, checkpoint, tmp_path / "proto")
    # reference: class means of the unit-length spike counts, one class at a time in float64
    data = pipeline.load_data(cfg, torch.device("cpu"))
    encoder = pipeline.pretrained_encoder(checkpoint, cfg).eval()
    with torch.no_grad():
        counts = encoder(data.prepare(data.train_images[data.labelled]), cfg.time_steps)
    x, y = counts.double().numpy(), data.train_labels[data.labelled].numpy()
    for c in range(10):
        units = x[y == c] / np.linalg.norm(x[y == c], axis=1, keepdims=True)
        mean = units.mean(0)
        np.testing.assert_allclose(seen["head"][c].numpy(), mean / np.linalg.norm(mean), atol=1e-5)
    # the spiking head classifies before any step (coarsely: 4 steps give counts 0-4, and
    # ties go to the first class); a random head is at chance
    random = small_config(tmp_path, finetune={"head_init": "random"})
    at_random = _start_of_finetuning(monkeypatch, random, checkpoint, tmp_path / "random")
    assert seen["test_accuracy"] > 50.0, seen
    assert at_random["test_accuracy"] < 20.0, at_random


def test_head_init_is_validated(tmp_path):
    with pytest.raises(ValueError, match="finetune.head_init='knn' is invalid"):
        small_config(tmp_path, finetune={"head_init": "knn"})


@pytest.mark.parametrize("command", ["pretrain", "finetune", "supervised"])
@pytest.mark.parametrize("occupied", ["finished", "unfinished", "file"])
def test_an_unusable_run_dir_is_refused_before_the_data_loads(
    tmp_path, monkeypatch, command, occupied
):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("the run directory is checked first")

    monkeypatch.setattr(pipeline, "_start", forbidden)
    run_dir = tmp_path / "run"
    if occupied == "file":
        run_dir.write_text("mine")
    else:
        run_dir.mkdir()
        name = "summary.json" if occupied == "finished" else "checkpoint.pt"
        (run_dir / name).write_text("{}")
    cfg = small_config(tmp_path)
    match = {"finished": "finished run", "unfinished": "--resume", "file": "is a file"}[occupied]
    with pytest.raises(FileExistsError, match=match):
        if command == "pretrain":
            pipeline.pretrain(cfg, run_dir)
        else:
            pipeline.finetune(cfg, {} if command == "finetune" else None, run_dir)


def test_a_validation_part_that_leaves_a_class_out_fails_before_the_pretraining(
    tmp_path, monkeypatch
):
    from tiny import forbidden

    monkeypatch.setattr(pipeline, "pretrain", forbidden)
    cfg = small_config(tmp_path, data={"train_limit": 20}, finetune={"val_fraction": 0.1})
    with pytest.raises(ValueError, match="holds out every labelled image"):
        pipeline.staged(cfg, tmp_path / "pre", tmp_path / "ft", False, print)
    assert not (tmp_path / "pre").exists()
