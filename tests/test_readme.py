"""``spikessl.readme``: a records folder's README from hand-made records: wall time,
environments, and which results it shows."""

from __future__ import annotations

from spikessl.readme import readme, wall_minutes, write_sweep_readme


def test_wall_time_counts_shared_runs_once() -> None:
    records = [
        {
            "cell": "a",
            "wall_seconds": {"pretrain": 600.0, "finetune": 60.0, "supervised": 120.0},
            "run_dirs": {"pretrain": "p1", "finetune": "a/f", "supervised": "s1"},
        },
        {
            "cell": "b",
            "wall_seconds": {"pretrain": 600.0, "finetune": 30.0, "supervised": 120.0},
            "run_dirs": {"pretrain": "p1", "finetune": "b/f", "supervised": "s1"},
        },
        {"cell": "c", "wall_seconds": {"pretrain": 300.0, "finetune": 30.0}},
    ]
    assert wall_minutes(records) == {
        "pretrain": (2, 15.0),
        "finetune": (3, 2.0),
        "supervised": (1, 2.0),
    }


def test_readme_groups_environments_and_shows_the_speed_probe_range() -> None:
    env = {"torch": "2.13.0", "device": "cpu", "cpus": 2}
    records = [
        {"cell": "a", "environment": {**env, "speed_probe": 610.0}},
        {"cell": "b", "environment": {**env, "speed_probe": 655.5}},
        {"cell": "c", "environment": {**env, "cpus": 16}},  # recorded before the probe
        {"cell": "d"},
    ]
    text = readme("T", "spikessl sweep", "settings", records, {})
    environment = text.split("## Environment\n\n")[1].splitlines()
    assert environment == [
        "- torch 2.13.0, device cpu, cpus 2: 2 cell(s), speed probe 610-655.5 images/s "
        "(`spikessl.machine.speed_probe`)",
        "- torch 2.13.0, device cpu, cpus 16: 1 cell(s)",
        "- not recorded: 1 cell(s)",
    ]


def test_sweep_readme_shows_seeds_md_only_for_records_over_seeds(tmp_path) -> None:
    (tmp_path / "results.md").write_text("| cell | acc |\n")
    (tmp_path / "seeds.md").write_text("| setting | mean |\n")  # from an earlier grid

    def config(seed: int) -> dict:
        return {"seed": seed, "pretrain": {"epochs": 2}, "finetune": {"epochs": 1}}

    one_seed = [{"cell": c, "config": config(0)} for c in ("a", "b")]
    readme_path = tmp_path / "README.md"
    assert write_sweep_readme(readme_path, "T", "spikessl sweep", 2, one_seed)
    assert "| cell | acc |" in readme_path.read_text()
    assert "2 pretraining and 1 fine-tuning epoch." in readme_path.read_text()
    assert "| setting | mean |" not in readme_path.read_text()
    two_seeds = [{"cell": f"seed={s}", "config": config(s)} for s in (0, 1)]
    assert write_sweep_readme(readme_path, "T", "spikessl sweep", 2, two_seeds)
    assert "| setting | mean |" in readme_path.read_text()


def test_readme_says_when_cells_used_a_subset_of_the_data() -> None:
    def record(**data) -> dict:
        return {"cell": "a", "config": {"data": {"train_limit": 0, "test_limit": 0, **data}}}

    assert "Subsets" not in readme("T", "c", "settings.", [record(), {"cell": "b"}], {})
    text = readme("T", "c", "settings.", [record(), record(test_limit=500, train_limit=200)], {})
    assert (
        "settings. **Subsets:** data.test_limit=500, data.train_limit=200 in 1 of 2 cells" in text
    )
    assert "part of the training or test set, not the whole" in text
    text = readme("T", "c", "settings.", [record(test_limit=500)], {})
    assert "data.test_limit=500 in every cell: " in text and "of the test set, not" in text
