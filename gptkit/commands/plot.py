"""`gptkit plot RUN_DIR [RUN_DIR ...] --out curves.png`: loss curves of one or more runs.

Reads each RUN_DIR/metrics.jsonl; draws train loss (solid) and val loss (dashed, dots) per run on
one axis and the learning rate on a small axis below; `--out -` writes the PNG to stdout.
matplotlib is an optional extra (`pip install 'gptkit[plot]'`), imported only here and without
pyplot (no global backend state).
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

from gptkit.errors import GptkitError

INSTALL_HINT = "pip install 'gptkit[plot]'"


def run(args) -> int:
    """CLI entry: plot, then say where the figure went (on stderr when the PNG went to stdout)."""
    plot(args.runs, args.out)
    where = "a PNG to stdout" if args.out == "-" else args.out
    status = sys.stderr if args.out == "-" else sys.stdout
    print(f"gptkit plot: wrote {where} ({len(args.runs)} run(s))", file=status)
    return 0


def plot(run_dirs, out):
    """Draw every run's curves into one figure, save it to `out` ('-' = PNG to stdout)."""
    Figure = _figure_class()
    runs = {name: read_metrics(d) for name, d in zip(_labels(run_dirs), run_dirs, strict=True)}
    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for (name, records), color in zip(runs.items(), colors, strict=True):
        train, val, lr = (_series(records, key) for key in ("loss", "val_loss", "lr"))
        if train[0]:
            loss_ax.plot(*train, color=color, lw=1.2, label=f"{name} train", gid="train")
        if val[0]:
            loss_ax.plot(*val, color=color, ls="--", marker="o", ms=3, label=f"{name} val",
                         gid="val")  # fmt: skip
        if lr[0]:
            lr_ax.plot(*lr, color=color, lw=1, label=name, gid="lr")
    loss_ax.set_ylabel("loss (nats/token)")
    loss_ax.legend(fontsize="small")
    loss_ax.grid(alpha=0.3)
    lr_ax.set_ylabel("lr")
    lr_ax.set_xlabel("step")
    lr_ax.grid(alpha=0.3)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if str(out) == "-":
        _write_stdout(fig)
    else:
        _save(fig, Path(out))
    return fig


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise GptkitError(
            f"gptkit plot needs matplotlib, which is not installed; {INSTALL_HINT}"
        ) from None
    return Figure


def read_metrics(run_dir) -> list[dict]:
    """The records of RUN_DIR/metrics.jsonl, one per step (a resumed run's rerun steps win)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise GptkitError(
            f"no metrics in {run_dir} (expected {path}); pass a run dir written by "
            "'gptkit pretrain' or 'gptkit finetune'"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    by_step: dict[int, dict] = {}
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            step = int(record["step"])
        except (ValueError, KeyError, TypeError):
            if n == len(lines):
                break  # a writer killed mid-line leaves a partial last record
            raise GptkitError(
                f"{path} line {n} is not a metrics record; the file is corrupt (fix or delete it)"
            ) from None
        by_step[step] = {**by_step.get(step, {}), **record}  # eval + train records of a step
    records = [by_step[s] for s in sorted(by_step)]
    if not any(_num(r.get("loss")) or _num(r.get("val_loss")) for r in records):
        raise GptkitError(f"{path} has no loss records yet; train the run for a few steps first")
    return records


def _series(records: list[dict], key: str) -> tuple[list, list]:
    """(steps, values) of the records that carry a number under `key`."""
    kept = [r for r in records if _num(r.get(key))]
    return [r["step"] for r in kept], [r[key] for r in kept]


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


def _labels(run_dirs) -> list[str]:
    """Folder names, or the paths as given where two runs share a name."""
    names = [Path(d).resolve().name for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs, strict=True)]


def _write_stdout(fig):
    """The figure as PNG bytes on stdout, for `--out - | tool` or `--out - > file.png`."""
    if sys.stdout.isatty():  # like gzip: binary data on a terminal is never what was meant
        raise GptkitError(
            "--out - would write a binary PNG to the terminal; redirect it "
            "(gptkit plot RUN --out - > curves.png) or pass a file name"
        )
    buf = io.BytesIO()  # rendered in full first: a failed render writes nothing
    fig.savefig(buf, format="png")
    sys.stdout.flush()
    sys.stdout.buffer.write(buf.getvalue())
    sys.stdout.buffer.flush()


def _save(fig, out: Path):
    """Save via a temp file and rename; the format follows the suffix (png by default)."""
    fmt = out.suffix.lstrip(".").lower() or "png"
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, format=fmt)
        os.replace(tmp, out)
    except ValueError as e:  # matplotlib: unsupported format
        raise GptkitError(f"cannot write {out} ({e}); use a .png, .pdf or .svg name") from None
    except OSError as e:
        raise GptkitError(f"cannot write {out} ({e.strerror or e}); check --out") from None
    finally:
        tmp.unlink(missing_ok=True)
