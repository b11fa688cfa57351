"""`gptkit plot`: one train-loss line per run, a readable PNG, and one-line errors."""

import json
import sys

import pytest

from gptkit.cli import main
from gptkit.commands.plot import plot, read_metrics
from gptkit.errors import GptkitError


def fake_run(root, name, steps=10, *, scale=1.0):
    """A run dir with pretrain-shaped metrics.jsonl: a step-0 eval, train records, evals."""
    run = root / name
    run.mkdir()
    rows = [{"step": 0, "val_loss": 5.5 * scale}]
    for s in range(1, steps + 1):
        row = {"step": s, "loss": scale * (5.0 - 0.3 * s), "lr": 1e-3 * s / steps}
        if s % 5 == 0:
            row["val_loss"] = scale * (5.2 - 0.3 * s)
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def lines(ax, gid):
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def test_one_line_per_run_and_a_valid_png(tmp_path):
    from matplotlib.image import imread

    runs = [fake_run(tmp_path, n, scale=k) for k, n in enumerate(["a", "b", "c"], 1)]
    out = tmp_path / "out" / "curves.png"
    fig = plot(runs, out)
    loss_ax, lr_ax = fig.axes
    assert len(lines(loss_ax, "train")) == 3 and len(lines(loss_ax, "val")) == 3
    assert len(lines(lr_ax, "lr")) == 3
    first = lines(loss_ax, "train")[0]
    assert list(first.get_xdata()) == list(range(1, 11)) and first.get_label() == "a train"
    assert list(lines(loss_ax, "val")[1].get_xdata()) == [0, 5, 10]
    image = imread(out)  # (H, W, RGBA) floats: a real PNG of the figure's size
    assert image.shape == (600, 800, 4) and image.min() < 0.5 < image.max()
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temp file left


def test_resumed_run_keeps_the_last_record_per_step_and_skips_a_torn_last_line(tmp_path):
    run = fake_run(tmp_path, "r", steps=4)
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 0.5, "lr": 1e-4}) + "\n")
        f.write('{"step": 5, "lo')  # writer killed mid-line
    records = read_metrics(run)
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4] and records[3]["loss"] == 0.5


def test_same_folder_names_are_told_apart(tmp_path):
    (tmp_path / "x").mkdir(), (tmp_path / "y").mkdir()
    runs = [fake_run(tmp_path / "x", "run"), fake_run(tmp_path / "y", "run")]
    fig = plot(runs, tmp_path / "c.png")
    labels = [line.get_label() for line in lines(fig.axes[0], "train")]
    assert labels == [f"{runs[0]} train", f"{runs[1]} train"]


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 2
    assert "no metrics in" in capsys.readouterr().err
    run = fake_run(tmp_path, "ok")
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000
    (run / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(GptkitError, match="line 2"):
        read_metrics(run)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    with pytest.raises(GptkitError, match=r"pip install 'gptkit\[plot\]'"):
        plot([fake_run(tmp_path, "m")], tmp_path / "m.png")
