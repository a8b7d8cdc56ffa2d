"""Figures: valid PNGs of the neighbour grid, the curves and the label-efficiency plot."""

import pytest
import torch
from matplotlib.image import imread

from spikessl import figures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width=200, min_height=150):
    assert path.is_file() and path.suffix == ".png"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    height, width = imread(path).shape[:2]
    assert width >= min_width and height >= min_height, (width, height)
    return width, height


@pytest.mark.parametrize("channels", [1, 3])
def test_neighbours_grid_writes_a_png(tmp_path, channels):
    gen = torch.Generator().manual_seed(channels)
    q, k = 3, 4
    queries = torch.randint(0, 256, (q, channels, 8, 8), dtype=torch.uint8, generator=gen)
    neighbours = torch.randint(0, 256, (q, k, channels, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.tensor([0, 1, 2])
    neighbour_labels = torch.tensor([[0, 0, 1, 2], [1, 1, 1, 1], [0, 1, 2, 2]])
    out = tmp_path / "deep" / "fig5.png"  # parent folders are created
    path = figures.neighbours_grid(
        queries, labels, neighbours, neighbour_labels, ["a", "b", "c"], out, "test grid"
    )
    assert path == out
    width, height = assert_png(path)
    assert width > height  # k + 1 = 5 columns, 3 rows
    assert figures.png_source(path) is None  # no source given, none kept
    figures.neighbours_grid(
        queries, labels, neighbours, neighbour_labels, ["a", "b", "c"], out, "test", "run 7"
    )
    assert figures.png_source(out) == "run 7"


def test_png_source_of_a_file_that_is_no_png_is_none(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert figures.png_source(tmp_path / "fig.png") is None
    assert figures.png_source(tmp_path / "missing.png") is None


def test_neighbours_grid_rejects_bad_inputs(tmp_path):
    images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    neighbours = torch.zeros(2, 3, 1, 8, 8, dtype=torch.uint8)
    labels, neighbour_labels = torch.zeros(2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    out = tmp_path / "x.png"
    with pytest.raises(ValueError, match="uint8"):
        figures.neighbours_grid(images.float(), labels, neighbours, neighbour_labels, "ab", out, "")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        figures.neighbours_grid(
            torch.zeros(2, 2, 8, 8, dtype=torch.uint8),
            labels,
            neighbours,
            neighbour_labels,
            "ab",
            out,
            "",
        )
    with pytest.raises(ValueError, match="neighbours"):
        figures.neighbours_grid(images, labels, neighbours[:1], neighbour_labels, "ab", out, "")
    with pytest.raises(ValueError, match="neighbour labels"):
        figures.neighbours_grid(images, labels, neighbours, labels, "ab", out, "")
    with pytest.raises(ValueError, match="class name"):
        figures.neighbours_grid(images, labels + 5, neighbours, neighbour_labels, "ab", out, "")
    with pytest.raises(ValueError, match=r"\*\.png"):
        figures.neighbours_grid(
            images, labels, neighbours, neighbour_labels, "ab", tmp_path / "x.pdf", ""
        )
    assert not out.exists()


def test_curves_writes_a_png(tmp_path):
    series = {"SSL + fine-tune": [90.1, 95.3, 97.0], "supervised only": [85.0, 91.2, 94.4]}
    path = figures.curves(series, tmp_path / "fig6.png", "MNIST, 20% labels")
    assert_png(path)
    with pytest.raises(ValueError, match="at least one value"):
        figures.curves({"a": []}, tmp_path / "bad.png", "t")
    with pytest.raises(ValueError, match="at least one value"):
        figures.curves({}, tmp_path / "bad.png", "t")


def test_a_figure_interrupted_mid_write_leaves_the_previous_file(tmp_path, monkeypatch):
    out = tmp_path / "fig6.png"
    figures.curves({"a": [1.0, 2.0]}, out, "first")
    before = out.read_bytes()

    def killed(self, fh, **_):
        fh.write(b"\x89PNG half")  # a partial file, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(figures.Figure, "savefig", killed)
    with pytest.raises(KeyboardInterrupt):
        figures.curves({"a": [3.0, 4.0]}, out, "second")
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["fig6.png"]  # no temporary file left


def test_summarise_seeds_skips_empty_entries():
    points = figures.summarise_seeds([0.01, 0.05, 0.1], [[90.0, 92.0, 97.0], [], [95.0]])
    assert points == [(1.0, 93.0, 90.0, 97.0), (10.0, 95.0, 95.0, 95.0)]
    with pytest.raises(ValueError, match="one list of per-seed results per fraction"):
        figures.summarise_seeds([0.01, 0.05], [[90.0]])


def test_label_efficiency_writes_a_png_with_gaps(tmp_path):
    fractions = [0.01, 0.05, 0.2]
    series = {
        "SSL + fine-tune": [[80.0, 82.5], [], [95.0, 96.0, 95.5]],
        "supervised only": [[60.0], [85.0, 86.0], []],
        "not run": [[], [], []],
    }
    assert_png(figures.label_efficiency(fractions, series, tmp_path / "eff.png", "efficiency"))
    with pytest.raises(ValueError, match="every method"):
        figures.label_efficiency(fractions, {"a": [[], [], []]}, tmp_path / "e.png", "t")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        figures.label_efficiency([1, 5], {"a": [[1.0], [2.0]]}, tmp_path / "e.png", "t")
