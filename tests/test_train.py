"""Tests for spikessl.train: rate checks and the training loop.

The loop is driven by a tiny deterministic task: a linear classifier on a linearly
separable 2-D problem, whose loss reports made-up firing rates.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spikessl import train
from spikessl.health import Diverged
from spikessl.schedule import lr_factor
from spikessl.train import (
    LoopSettings,
    Task,
    fit,
)

RECORD_KEYS = {"epoch", "step", "loss", "lr", "firing_rates", "seconds", "images_per_s"}

# ------------------------------------------------------------------------------------------
# fit on a tiny separable problem
# ------------------------------------------------------------------------------------------


def separable_data(n: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def make_task(
    seed: int = 0,
    lr: float = 0.05,
    rates: Callable[[int], Tensor] | None = None,
    evaluate: Callable[[], dict] | None = None,
    evaluate_every: int = 1,
    nan_at: int | None = None,
    batches: list[Tensor] | None = None,
    in_features: int = 2,
    shift: Callable[[int], float] | None = None,
) -> Task:
    torch.manual_seed(seed)
    model = nn.Linear(in_features, 2)
    calls = [0]

    def loss(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if batches is not None:
            batches.append(images.clone())
        value = F.cross_entropy(model(images), labels)
        if nan_at is not None and calls[0] == nan_at:
            value = value * float("nan")
        if shift is not None:  # a constant: moves the loss, not the gradients
            value = value + shift(calls[0])
        r = rates(calls[0]) if rates is not None else torch.tensor([0.2, 0.4])
        calls[0] += 1
        return value, r

    return Task(
        "toy",
        model,
        [{"params": model.parameters(), "lr": lr}],
        loss,
        evaluate=evaluate,
        evaluate_every=evaluate_every,
    )


def settings(epochs: int = 3, batch_size: int = 16, **kw: object) -> LoopSettings:
    return LoopSettings(epochs=epochs, batch_size=batch_size, progress=False, **kw)


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_fit_loss_falls_and_metrics_are_written(tmp_path: Path) -> None:
    x, y = separable_data()
    task = make_task(lr=0.2)
    history = fit(task, x, y, settings(epochs=6), tmp_path)
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [h["step"] for h in history] == [4, 8, 12, 16, 20, 24]  # 64 / 16 = 4 per epoch
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.7 * losses[0]
    assert all(a > b for a, b in itertools.pairwise(losses))
    records = read_metrics(tmp_path)
    assert records == json.loads(json.dumps(history))  # the file holds exactly the history
    for record in records:
        assert set(record) == RECORD_KEYS
        assert record["firing_rates"] == pytest.approx([0.2, 0.4])
        assert record["seconds"] >= 0 and record["images_per_s"] > 0
    accuracy = (task.model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


def test_fit_checkpoint_contents(tmp_path: Path) -> None:
    x, y = separable_data()
    task = make_task()
    extra = {"config": {"name": "toy", "lr": 0.05, "layers": [2, 2]}}
    fit(task, x, y, settings(epochs=2), tmp_path, extra_state=extra)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 8
    assert ckpt["config"] == extra["config"]
    for name, value in task.model.state_dict().items():
        assert torch.equal(ckpt["model"][name], value)
    optimizer = torch.optim.Adam(nn.Linear(2, 2).parameters())
    optimizer.load_state_dict(ckpt["optimizer"])  # a valid optimizer state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]


def test_fit_averages_firing_rates_over_the_epoch(tmp_path: Path) -> None:
    x, y = separable_data(32)

    def rates(call: int) -> Tensor:  # two steps per epoch alternate between two values
        return torch.tensor([0.2, 0.4]) if call % 2 == 0 else torch.tensor([0.4, 0.6])

    history = fit(make_task(rates=rates), x, y, settings(epochs=2), tmp_path)
    for record in history:
        assert record["firing_rates"] == pytest.approx([0.3, 0.5])


@pytest.mark.parametrize(
    "epochs, every, expected",
    [
        (3, 0, [3]),
        (5, 2, [2, 4, 5]),
        (4, 2, [2, 4]),
        (3, 1, [1, 2, 3]),
        (2, 5, [2]),
    ],
)
def test_fit_evaluate_schedule(
    tmp_path: Path, epochs: int, every: int, expected: list[int]
) -> None:
    x, y = separable_data(32)
    calls: list[int] = []

    def evaluate() -> dict:
        calls.append(len(calls))
        return {"score": 10.0 * len(calls), "extra": "ok"}

    task = make_task(evaluate=evaluate, evaluate_every=every)
    history = fit(task, x, y, settings(epochs=epochs), tmp_path)
    assert [h["epoch"] for h in history if "score" in h] == expected
    assert len(calls) == len(expected)  # evaluated once per listed epoch, never twice
    assert [h["score"] for h in history if "score" in h] == [
        10.0 * (i + 1) for i in range(len(expected))
    ]
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records if "score" in r] == expected
    assert all(r["extra"] == "ok" for r in records if "score" in r)


def test_fit_is_deterministic(tmp_path: Path) -> None:
    x, y = separable_data()
    runs = []
    for i, seed in enumerate([3, 3, 4]):
        task = make_task(seed=0)
        history = fit(task, x, y, settings(epochs=3, seed=seed), tmp_path / str(i))
        runs.append((task.model.state_dict(), [h["loss"] for h in history]))
    (w0, l0), (w1, l1), (w2, _) = runs
    assert l0 == l1
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert not all(torch.equal(w0[k], w2[k]) for k in w0)  # the seed drives the shuffling


def test_fit_nan_loss_raises(tmp_path: Path) -> None:
    x, y = separable_data(32)  # 2 steps per epoch: the 4th call is epoch 2, step 3
    task = make_task(nan_at=3)
    with pytest.raises(FloatingPointError, match=r"toy: loss is nan at epoch 2, step 3"):
        fit(task, x, y, settings(epochs=3), tmp_path)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_fit_inf_loss_raises(tmp_path: Path) -> None:
    x, y = separable_data(32)
    task = make_task()
    inner = task.loss
    task.loss = lambda images, labels: (
        inner(images, labels)[0] + float("inf"),
        torch.tensor([0.5]),
    )
    with pytest.raises(FloatingPointError, match="epoch 1, step 0"):
        fit(task, x, y, settings(epochs=1), tmp_path)


def test_fit_warmup_sets_the_rate_of_each_step(tmp_path: Path) -> None:
    x, y = separable_data()  # 64 images, batch 16: 4 steps per epoch, 12 in all
    history = fit(make_task(lr=0.2), x, y, settings(epochs=3, warmup_steps=6), tmp_path)
    # each epoch records the rate of its last step: steps 3, 7 and 11
    expected = [
        0.2 * 4 / 6,
        0.2 * 0.5 * (1 + math.cos(math.pi / 6)),
        0.2 * 0.5 * (1 + math.cos(5 * math.pi / 6)),
    ]
    assert [h["lr"] for h in history] == pytest.approx(expected)
    plain = fit(make_task(lr=0.2), x, y, settings(epochs=3), tmp_path / "plain")
    assert plain[0]["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(3 * math.pi / 12)))


@pytest.mark.parametrize("warmup", [12, 50])
def test_fit_warmup_longer_than_the_run(tmp_path: Path, warmup: int) -> None:
    x, y = separable_data()
    with pytest.raises(ValueError, match=f"warmup_steps={warmup} leaves none of its 12"):
        fit(make_task(), x, y, settings(epochs=3, warmup_steps=warmup), tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("n, drop_last", [(15, True), (0, False)])
def test_fit_too_small_dataset(tmp_path: Path, n: int, drop_last: bool) -> None:
    x, y = separable_data(n)
    with pytest.raises(ValueError, match="do not fill one batch"):
        fit(make_task(), x, y, settings(batch_size=16, drop_last=drop_last), tmp_path)


def test_a_run_resumes_only_with_as_many_processes_as_trained_it(tmp_path: Path) -> None:
    x, y = separable_data(32)
    fit(make_task(), x, y, settings(epochs=1), tmp_path / "a")
    checkpoint = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert checkpoint["loop"]["processes"] == 1 and "rngs" not in checkpoint["loop"]
    checkpoint["loop"]["processes"] = 2  # as if written under torchrun --nproc_per_node 2
    with pytest.raises(ValueError, match="trained by 2 process.*--nproc_per_node 2"):
        fit(make_task(), x, y, settings(epochs=2), tmp_path / "a", resume=checkpoint)


def test_fit_small_dataset_without_drop_last(tmp_path: Path) -> None:
    x, y = separable_data(15)
    history = fit(make_task(), x, y, settings(epochs=2, batch_size=16, drop_last=False), tmp_path)
    assert [h["step"] for h in history] == [1, 2]


def test_fit_warns_once_about_silent_layers(tmp_path: Path) -> None:
    x, y = separable_data(32)
    task = make_task(rates=lambda _call: torch.tensor([0.0, 0.5]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit(task, x, y, settings(epochs=3), tmp_path)
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1
    assert "toy step 1" in str(runtime[0].message)
    assert "layer 0 silent" in str(runtime[0].message)
    assert history[-1]["firing_rates"] == [0.0, 0.5]


def test_fit_warns_once_when_the_loss_diverges_and_keeps_the_checkpoint(tmp_path: Path) -> None:
    x, y = separable_data(32)  # 2 steps per epoch: epochs 3-5 lose 3 nats more than 1-2
    task = make_task(lr=0.0, shift=lambda call: 3.0 if call >= 4 else 0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(task, x, y, settings(epochs=5), tmp_path)
    runtime = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1 and "toy epoch 3: loss" in runtime[0]
    assert "checkpoint-before-divergence.pt" in runtime[0]
    records = read_metrics(tmp_path)
    assert [r.get("diverging", False) for r in records] == [False, False, True, True, True]
    kept = torch.load(tmp_path / "checkpoint-before-divergence.pt", weights_only=False)
    assert kept["epoch"] == 2  # the state before the diverging epoch, not after it
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["epoch"] == 5


def test_fit_evaluates_at_the_epochs_records_place_a_curve_on(tmp_path: Path) -> None:
    from spikessl.records import evaluated_epochs, evaluation_interval

    x, y = separable_data(32)
    task = make_task(evaluate=lambda: {"test_accuracy": 1.0})
    task.evaluate_every = evaluation_interval(7, 3)  # as pipeline.finetune sets it
    history = fit(task, x, y, settings(epochs=7), tmp_path)
    assert [h["epoch"] for h in history if "test_accuracy" in h] == evaluated_epochs(7, 3)
    timed = [h["epoch"] for h in history if h.get("eval_seconds", -1) >= 0]  # counted on resume
    assert timed == evaluated_epochs(7, 3)


def test_on_divergence_stop_ends_the_run_after_the_diverging_epoch(tmp_path: Path) -> None:
    x, y = separable_data(32)
    task = make_task(lr=0.0, shift=lambda call: 3.0 if call >= 4 else 0.0)  # as above
    stop = settings(epochs=5, on_divergence="stop")
    stopped = r"toy: its loss diverged at epoch 3 \(4\.348\): stopped \(on_divergence=stop\)"
    with (
        pytest.warns(RuntimeWarning, match="toy epoch 3: loss"),
        pytest.raises(Diverged, match=stopped),
    ):
        fit(task, x, y, stop, tmp_path)
    assert [r.get("diverging", False) for r in read_metrics(tmp_path)] == [False, False, True]
    kept = torch.load(tmp_path / "checkpoint-before-divergence.pt", weights_only=False)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert (kept["epoch"], checkpoint["epoch"]) == (2, 3)  # both kept, the epoch's own too
    # resumed with the same setting, it stops at once: no epoch is trained again
    again = make_task(lr=0.0, shift=lambda call: pytest.fail("trained after stopping"))
    with pytest.raises(Diverged, match=r"epoch 3 \(4\.348\): stopped"):
        fit(again, x, y, stop, tmp_path, resume=checkpoint)
    assert len(read_metrics(tmp_path)) == 3
    # resumed with on_divergence=warn, it trains on as if it had never stopped
    on = make_task(lr=0.0, shift=lambda call: 3.0)
    history = fit(on, x, y, settings(epochs=5), tmp_path, resume=checkpoint)
    assert [r.get("diverging", False) for r in history] == [False, False, True, True, True]
    last = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    with pytest.raises(Diverged, match=r"epoch 3 \(4\.348, and the run is at epoch 5\)"):
        fit(again, x, y, settings(epochs=6, on_divergence="stop"), tmp_path, resume=last)


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_fit_clips_the_gradient_norm_before_each_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clip: float
) -> None:
    norms = []
    step = torch.optim.Adam.step

    def spy(self: torch.optim.Adam, *args: object, **kw: object) -> object:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        return step(self, *args, **kw)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    x, y = separable_data(32)
    fit(make_task(), x, y, settings(epochs=2, grad_clip=clip), tmp_path)
    assert len(norms) == 4
    if clip:
        assert max(norms) == pytest.approx(clip, rel=1e-4)  # every raw norm is far above 1e-3
    else:
        assert min(norms) > 1e-2  # unclipped: the toy's gradients are of order 0.1


@pytest.mark.parametrize(
    ("scale", "reason"),
    [
        (1.0, None),
        (float("nan"), "loss is nan"),
        (float("inf"), "loss is inf"),
        ("grad", "gradients are not finite"),  # a finite loss whose gradient overflows
    ],
)
def test_backward_and_step_steps_only_when_loss_and_gradients_are_finite(scale, reason) -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.SGD([w], lr=0.1)
    if scale == "grad":
        w.register_hook(lambda grad: grad * float("inf"))
    loss = (w**2).sum() * (1.0 if scale == "grad" else scale)
    before = w.detach().clone()
    assert train._backward_and_step(loss, optimizer, [w], 0.0, train.World()) == reason
    if reason is None:  # one SGD step on sum(w^2): w - 0.1 * 2w
        assert torch.equal(w.detach(), before - 0.1 * 2 * before)
    else:
        assert torch.equal(w.detach(), before)  # nothing stepped


def test_an_epoch_whose_steps_were_all_skipped_has_no_loss_and_flags_no_divergence(
    tmp_path: Path,
) -> None:
    x, y = separable_data(32)  # 2 steps per epoch: both of epoch 1 give a NaN loss
    task = make_task(shift=lambda call: float("nan") if call < 2 else 0.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(task, x, y, settings(epochs=3, on_nonfinite="skip"), tmp_path)
    records = read_metrics(tmp_path)
    assert math.isnan(records[0]["loss"]) and records[0]["skipped_steps"] == 2
    assert all(math.isfinite(r["loss"]) for r in records[1:])
    assert not any(r.get("diverging") for r in records)  # 0.0 would have made later ones so
    assert not any("diverging" in str(w.message) for w in caught)


def test_fit_healthy_rates_do_not_warn(tmp_path: Path) -> None:
    x, y = separable_data(32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(make_task(), x, y, settings(epochs=2), tmp_path)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_fit_batches_cover_the_data(tmp_path: Path, drop_last: bool, sizes: list[int]) -> None:
    n = 10
    images = torch.arange(n, dtype=torch.float32)[:, None]
    labels = (images[:, 0] >= 5).long()
    seen: list[Tensor] = []
    task = make_task(batches=seen, in_features=1)
    history = fit(
        task, images, labels, settings(epochs=2, batch_size=4, drop_last=drop_last), tmp_path
    )
    assert [h["step"] for h in history] == [len(sizes), 2 * len(sizes)]
    assert [len(b) for b in seen] == sizes * 2
    for epoch in range(2):
        ids = torch.cat(seen[epoch * len(sizes) : (epoch + 1) * len(sizes)])[:, 0].long()
        assert len(set(ids.tolist())) == len(ids)  # no image twice in an epoch
        if not drop_last:
            assert sorted(ids.tolist()) == list(range(n))
    epoch1 = torch.cat(seen[: len(sizes)])[:, 0].tolist()
    epoch2 = torch.cat(seen[len(sizes) :])[:, 0].tolist()
    assert epoch1 != epoch2  # reshuffled every epoch


class RecordingAdam(torch.optim.Adam):
    """Adam that records the learning rate of every group at each step."""

    seen: ClassVar[list[list[float]]] = []

    def step(self, closure=None):
        RecordingAdam.seen.append([g["lr"] for g in self.param_groups])
        return super().step(closure)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_fit_applies_the_schedule_to_every_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: str
) -> None:
    monkeypatch.setattr(RecordingAdam, "seen", [])
    monkeypatch.setattr(train.torch.optim, "Adam", RecordingAdam)
    x, y = separable_data(48)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    groups = [
        {"params": model[0].parameters(), "lr": 0.01},
        {"params": model[2].parameters(), "lr": 0.1},
    ]

    def loss(images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return F.cross_entropy(model(images), labels), torch.tensor([0.5])

    task = Task("toy", model, groups, loss)
    history = fit(task, x, y, settings(epochs=4, batch_size=16, schedule=schedule), tmp_path)
    total = 4 * 3
    assert len(RecordingAdam.seen) == total
    for step, lrs in enumerate(RecordingAdam.seen):
        factor = lr_factor(schedule, step, total)
        assert lrs == pytest.approx([0.01 * factor, 0.1 * factor], rel=1e-12)
    for h in history:  # the record holds group 0's lr of the epoch's last step
        assert h["lr"] == pytest.approx(0.01 * lr_factor(schedule, h["step"] - 1, total))
    if schedule == "cosine":
        assert RecordingAdam.seen[0] == pytest.approx([0.01, 0.1])
        assert RecordingAdam.seen[-1][1] < 0.1 * 0.02


def test_fit_rerun_in_the_same_directory_starts_fresh_metrics(tmp_path: Path) -> None:
    """A second run into a run directory (e.g. after a crash) must not mix in old records."""
    x, y = separable_data(32)
    fit(make_task(), x, y, settings(epochs=2), tmp_path)
    fit(make_task(), x, y, settings(epochs=3), tmp_path)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("epoch", [2, 3])  # one before the last, and the last (no step follows)
def test_a_signal_during_an_epochs_evaluation_stops_after_it(tmp_path: Path, epoch: int) -> None:
    x, y = separable_data()
    reference = fit(make_task(evaluate=lambda: {"acc": 1.0}), x, y, settings(), tmp_path / "ref")

    def evaluate() -> dict:  # e.g. Ctrl-C during the final kNN of a pretraining
        if len(read_metrics(tmp_path / "run")) == epoch - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"acc": 1.0}

    with pytest.raises(train.Interrupted, match=f"after epoch {epoch};.*checkpoint saved") as stop:
        fit(make_task(evaluate=evaluate), x, y, settings(), tmp_path / "run")
    assert stop.value.signum == signal.SIGTERM
    assert len(read_metrics(tmp_path / "run")) == epoch  # the evaluated epoch is kept
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == epoch
    task = make_task(evaluate=lambda: {"acc": 1.0})
    resumed = fit(task, x, y, settings(), tmp_path / "run", resume=checkpoint)
    untimed = [
        [{k: v for k, v in h.items() if k not in ("seconds", "eval_seconds", "images_per_s")}]
        for h in (*resumed, *reference)
    ]
    assert untimed[:3] == untimed[3:]  # and the resumed run is the uninterrupted one


def test_the_epoch_line_prints_accuracies_as_the_summaries_do(capsys):
    from spikessl.train import _print_epoch

    record = {"epoch": 2, "loss": 1.23456, "knn_accuracy": 15.0, "test_accuracy": 61.234}
    _print_epoch("pretrain", record | {"step": 8, "firing_rates": [0.25, 0.1]})
    line = capsys.readouterr().err
    assert line == (
        "[pretrain] epoch 2  loss 1.235  knn_accuracy 15.00  test_accuracy 61.23  "
        "rates 0.250 0.100\n"
    )
