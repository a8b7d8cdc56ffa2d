"""``spikessl.machine``: the speed probe a sweep record carries (the record's other
environment fields: ``test_sweep.py``)."""

from __future__ import annotations

import torch

from spikessl.machine import speed_probe


def test_speed_probe_times_the_fastest_step_and_leaves_the_rng_alone(monkeypatch):
    # four steps lasting 0.1 (the warm-up, not counted), 0.5, 0.4 and 0.8 s: 2 x 8 images / 0.4
    ticks = iter([0.0, 0.1, 10.0, 10.5, 11.0, 11.4, 12.0, 12.8])
    monkeypatch.setattr("spikessl.machine.time.perf_counter", lambda: next(ticks))
    torch.manual_seed(3)
    state = torch.get_rng_state()
    assert speed_probe.__wrapped__("cpu", batch=8, time_steps=2, steps=3) == 40.0
    assert torch.equal(torch.get_rng_state(), state)
