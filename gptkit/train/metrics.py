"""Metric sinks: console line + tqdm bar, RUN_DIR/metrics.jsonl, and wandb when enabled.

Only rank 0 builds a `Metrics`; other ranks get one with `enabled=False`. Also the throughput
arithmetic (tokens/s and MFU: achieved model FLOP/s over the hardware's peak) and a fine-tune's
closing table of final and best val metrics (`report`, also written to RUN_DIR/metrics.json).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from pathlib import Path

from tqdm import tqdm

from gptkit import artifacts
from gptkit.errors import GptkitError
from gptkit.train.checkpoint import write_text_atomic

# Dense bf16 peak FLOP/s by GPU name fragment (no sparsity); first match wins.
PEAK_FLOPS = [
    ("B200", 2250e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),
    ("T4", 65e12),
]


def peak_flops(device, configured: float | None) -> float | None:
    """The configured peak, else the table's entry for this GPU, else None (MFU not shown)."""
    if configured:
        return configured
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        for fragment, flops in PEAK_FLOPS:
            if fragment in name:
                return flops
    return None


class Metrics:
    """Writes one record per log step to every enabled sink."""

    def __init__(
        self,
        run_dir,
        *,
        total_steps: int,
        start_step: int,
        enabled: bool,
        wandb_cfg=None,
        config: dict | None = None,
    ):
        self.enabled = enabled
        self.total_steps = total_steps
        self.file = self.bar = self.wandb = None
        if not enabled:
            return
        self.path = Path(run_dir) / "metrics.jsonl"
        try:
            if start_step and self.path.exists():
                _drop_after(self.path, start_step)
            self.file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise GptkitError(f"cannot open {self.path} ({e.strerror}); fix the run dir") from None
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            leave=False,
            disable=None,
        )
        if wandb_cfg is not None and wandb_cfg.enabled:
            self.wandb = _start_wandb(wandb_cfg, run_dir, config)
        self._t_start = time.time()
        self._start_step = start_step

    def log(self, record: dict, *, console: bool = True):
        """Append a record (JSON line, wandb) and print its console line."""
        if not self.enabled:
            return
        try:
            self.file.write(json.dumps(_strict(record)) + "\n")
            self.file.flush()
        except OSError as e:
            raise GptkitError(
                f"cannot append to {self.path} ({e.strerror}); free disk space, then resume "
                "from the last checkpoint"
            ) from None
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        if console:
            tqdm.write(self._line(record), file=sys.stdout)

    def advance(self, n: int = 1):
        if self.bar is not None:
            self.bar.update(n)

    def _line(self, r: dict) -> str:
        if "loss" not in r:  # an eval-only record
            parts = [f"step {r['step']:>6}"]
            parts += [f"{k} {v:.4f}" for k, v in r.items() if k != "step" and isinstance(v, float)]
            return " | ".join(parts)
        done = r["step"] - self._start_step
        eta = (time.time() - self._t_start) / max(done, 1) * (self.total_steps - r["step"])
        parts = [
            f"step {r['step']:>6}/{self.total_steps}",
            f"loss {r['loss']:.4f}",
            f"lr {r['lr']:.2e}",
            f"gnorm {r['grad_norm']:.2f}",
            f"{r['tokens_per_s']:,.0f} tok/s",
            f"{r['ms_per_step']:.0f} ms/step",
        ]
        if r.get("mfu") is not None:
            parts.append(f"mfu {100 * r['mfu']:.1f}%")
        if "val_loss" in r:
            parts.append(f"val {r['val_loss']:.4f}")
        parts.append(f"eta {_fmt_time(eta)}")
        return " | ".join(parts)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def _strict(record: dict) -> dict:
    """NaN/inf (a skipped step's loss) as null: json.dumps would write NaN, which is not JSON."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()
    }


def _drop_after(path: Path, step: int):
    """A resumed run re-logs the steps after its checkpoint: drop their earlier records."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a torn last line from a killed run
            continue
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def _start_wandb(cfg, run_dir, config):
    import wandb  # imported only when enabled

    id_file = Path(run_dir) / "wandb_id.txt"  # the same wandb run across resumes
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id + "\n")
    try:
        return wandb.init(
            project=cfg.project,
            name=cfg.run_name or Path(run_dir).name,
            mode=cfg.mode,
            dir=str(run_dir),
            config=config,
            id=run_id,
            resume="allow",
        )
    except Exception as e:  # noqa: BLE001 - wandb raises its own types (no login, no network)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GptkitError(
            f"wandb could not start ({first}); run 'wandb login', or set "
            "logging.wandb.mode=offline (sync later) or logging.wandb.enabled=false"
        ) from None


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def report(run_dir: Path, last: dict, best_key: str) -> dict:
    """Print the final/best val metrics as a table and write RUN_DIR/metrics.json atomically."""
    final = {k: v for k, v in last.items() if k == "step" or k.startswith("val_") or k == "loss"}
    best = _best_record(run_dir, best_key)
    summary = {"final": final, "best": best, "best_key": best_key}
    write_text_atomic(run_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")
    head = f"{'metric':<12}{'final (step ' + str(final.get('step')) + ')':>20}"
    if best:
        head += f"{'best (step ' + str(best['step']) + ')':>20}"
    lines = [head]
    for k in (k for k in final if k != "step"):
        row = f"{k:<12}{final[k]:>20.4f}"
        if best and isinstance(best.get(k), float):
            row += f"{best[k]:>20.4f}"
        lines.append(row)
    print("\n".join(lines), flush=True)
    return summary


def _best_record(run_dir: Path, best_key: str) -> dict | None:
    """The metrics.jsonl record of the best checkpoint's evaluation, if any."""
    latest = artifacts.latest_checkpoint(run_dir)
    name = artifacts.read_meta(latest).get("best") if latest else None
    if not name:
        return None
    step, found = artifacts.step_number(name), None
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record.get("step") == step and best_key in record:
                found = record
    if found is None:
        return None
    return {k: v for k, v in found.items() if k == "step" or k.startswith("val_")}
