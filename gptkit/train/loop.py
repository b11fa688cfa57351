"""`fit()`: the one training loop, shared by pretrain and finetune.

What differs between the two commands (data, loss, evaluation) comes in a `Task`
(`train/tasks.py`); the loop sets the lr, steps, guards against non-finite updates, logs,
evaluates, checkpoints, and stops cleanly on SIGTERM/SIGINT (finish the step, save, return).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass

import torch

from gptkit.config import TrainConfig
from gptkit.errors import GptkitError
from gptkit.train import checkpoint, runtime
from gptkit.train.metrics import Metrics, peak_flops
from gptkit.train.optim import lr_at, set_lr
from gptkit.train.tasks import Task


@dataclass(kw_only=True)
class State:
    """Everything a resumed run needs besides weights, optimizer and data position."""

    step: int = 0
    tokens: int = 0
    bad_steps: int = 0
    skipped_steps: int = 0
    best: float | None = None
    best_name: str | None = None
    stalls: int = 0  # evaluations since the best one (early stopping)


@dataclass(kw_only=True)
class _Run:
    """What one `fit()` call works with, so helpers take one argument instead of ten."""

    model: torch.nn.Module  # as wrapped for training (DDP/FSDP/compile)
    raw: torch.nn.Module  # the plain module underneath: what checkpoints save
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None  # fp16 on CUDA only
    task: Task
    st: State
    cfg: TrainConfig
    rt: object  # runtime.Runtime
    run_dir: object
    meta: dict  # written into every checkpoint's meta.json
    max_steps: int
    patience: int  # evaluations without improvement before stopping (0 = never)


def fit(model, optimizer, task: Task, *, cfg: TrainConfig, rt, run_dir, meta: dict,
        max_steps: int, resume_from=None, wandb_cfg=None, patience: int = 0) -> dict:  # fmt: skip
    """Train until `max_steps` (or a stop signal, or early stopping); return the last metrics."""
    raw = runtime.unwrap(model)
    model.train()
    scaler = _grad_scaler(rt)
    st = _restore(resume_from, raw, optimizer, scaler, task, rt) if resume_from else State()
    run = _Run(model=model, raw=raw, optimizer=optimizer, scaler=scaler, task=task, st=st,
               cfg=cfg, rt=rt, run_dir=run_dir, meta=meta, max_steps=max_steps,
               patience=patience)  # fmt: skip
    metrics = Metrics(run_dir, total_steps=max_steps, start_step=st.step, enabled=rt.is_main,
                      wandb_cfg=wandb_cfg, config=meta.get("config"))  # fmt: skip
    try:
        return _loop(run, metrics)
    finally:
        metrics.close()


def _loop(run: _Run, metrics: Metrics) -> dict:
    """Step, log, evaluate, checkpoint; in that order, so a checkpoint holds the step's val."""
    st, cfg, task = run.st, run.cfg, run.task
    peak = peak_flops(run.rt.device, cfg.peak_flops)
    last, t_log, steps_since_log = {}, time.time(), 0
    if st.step == 0 and cfg.eval_interval:
        last = _evaluate(run.model, task, st, metrics)
    with _StopOnSignal() as stop:
        while st.step < run.max_steps:
            lr = lr_at(st.step, cfg, run.max_steps)
            set_lr(run.optimizer, lr)
            loss, norm, ntok = _train_step(run)
            st.step += 1
            steps_since_log += 1
            st.tokens += ntok
            _check_finite(st, cfg, loss, norm, fp16_scaler=run.scaler is not None)
            signalled = runtime.any_rank(stop.requested, run.rt)  # all ranks stop together
            done = st.step == run.max_steps or signalled
            record, improved = None, False
            if st.step % cfg.log_interval == 0 or done:
                dt = (time.time() - t_log) / steps_since_log
                record = _train_record(st, loss, lr, norm, ntok, dt, task, peak)
            due = cfg.eval_interval and st.step % cfg.eval_interval == 0
            if due or (done and not signalled):  # a signal's grace period is for saving
                val = _evaluate(run.model, task, st, metrics, log=False)
                record = {**(record or {"step": st.step}), **val}
                improved = _improves(val, st, task)
                st.stalls = 0 if improved else st.stalls + 1
            if record is not None:
                metrics.log(record)
                last = record
            metrics.advance()
            stopping = done or (run.patience and st.stalls >= run.patience)
            if (cfg.ckpt_interval and st.step % cfg.ckpt_interval == 0) or stopping or improved:
                _save(run)
            if stopping:
                break
            if record is not None:  # eval and checkpoint time stay out of ms/step
                t_log, steps_since_log = time.time(), 0
    return last


def _check_finite(st: State, cfg: TrainConfig, loss: float, norm: float, *, fp16_scaler: bool):
    """Count non-finite steps (their update was skipped); too many in a row stop the run.
    fp16's GradScaler overflows now and then by design and skips those steps itself."""
    if not math.isfinite(loss) or (not math.isfinite(norm) and not fp16_scaler):
        _count_bad(st, cfg)
    elif not math.isfinite(norm):
        st.skipped_steps += 1
    else:
        st.bad_steps = 0


def _train_step(run: _Run):
    """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm, tokens)."""
    model, optimizer, task, cfg, rt, scaler = (
        run.model,
        run.optimizer,
        run.task,
        run.cfg,
        run.rt,
        run.scaler,
    )
    total, ntok = 0.0, 0
    batches = [task.train.next_batch() for _ in range(cfg.grad_accum)]
    weights = _micro_weights(task, batches, rt)
    for micro, batch in enumerate(batches):
        ntok += task.tokens(batch)
        # DDP all-reduces gradients on the last micro-step only: accumulation costs no traffic
        with runtime.no_sync(model, rt, last_micro_step=micro == cfg.grad_accum - 1):
            with runtime.autocast(rt):
                loss = task.loss(model, batch)
                # Each micro-batch's mean loss is scaled so the summed gradients equal those of
                # the mean over the global batch: 1/grad_accum for equal-sized batches, or the
                # micro-batch's share of all targets when their number varies (padded SFT).
                loss = loss / cfg.grad_accum if weights is None else loss * weights[micro]
            (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach().float().item()
    total = runtime.all_reduce_mean(total, rt)  # every rank decides on the same numbers
    if scaler:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: DTensor
    if scaler:
        scaler.step(optimizer)  # skips the update itself on inf/nan gradients
        scaler.update()
    elif math.isfinite(norm) and math.isfinite(total):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, norm, ntok * rt.world_size


def _micro_weights(task: Task, batches: list, rt) -> list[float] | None:
    """Per-micro-batch loss weights count_i * world / global count (None: equal weights)."""
    if task.count is None:
        return None
    counts = [int(task.count(b)) for b in batches]
    total = runtime.all_reduce_mean(float(sum(counts)), rt) * rt.world_size
    return [c * rt.world_size / max(total, 1.0) for c in counts]


def _count_bad(st: State, cfg: TrainConfig):
    st.bad_steps += 1
    st.skipped_steps += 1
    if st.bad_steps > cfg.max_bad_steps:
        raise GptkitError(
            f"{st.bad_steps} non-finite steps in a row at step {st.step}; lower train.lr, set "
            "train.grad_clip, or use dtype bfloat16 — the last good checkpoint is intact"
        )


def _train_record(st, loss, lr, norm, ntok, dt, task, peak) -> dict:
    tps = ntok / dt if dt > 0 else 0.0
    mfu = tps * task.flops_per_token / peak if (peak and task.flops_per_token) else None
    return {"step": st.step, "loss": loss, "lr": lr, "grad_norm": norm, "tokens": st.tokens,
            "tokens_per_s": tps, "ms_per_step": 1000 * dt, "mfu": mfu,
            "skipped_steps": st.skipped_steps}  # fmt: skip


def _evaluate(model, task, st, metrics, *, log=True) -> dict:
    model.eval()
    val = task.evaluate(model)
    model.train()
    if log:
        metrics.log({"step": st.step, **val})
    return val


def _improves(val: dict, st: State, task: Task) -> bool:
    """Update the best metric; True if `val` is the new best."""
    v = val.get(task.best_key)
    if v is None or not math.isfinite(v):
        return False
    better = st.best is None or (v < st.best if task.best_mode == "min" else v > st.best)
    if better:
        st.best, st.best_name = v, f"step_{st.step:06d}"
    return better


def _save(run: _Run):
    """Checkpoint the run; every rank takes part (FSDP gathers shards, RNG from each rank)."""
    st = run.st
    weights, opt_state = runtime.state_dicts(run.raw, run.optimizer)  # collective under FSDP
    rngs = runtime.gather_objects(checkpoint.rng_state(), run.rt)  # each rank's dropout stream
    if run.rt.is_main:
        state = {"optimizer": opt_state, "rng": rngs, "loader": run.task.train.state_dict(),
                 "scaler": run.scaler.state_dict() if run.scaler else None,
                 "train": vars(st).copy()}  # fmt: skip
        extra = {"step": st.step, "tokens": st.tokens, "best": st.best_name}
        checkpoint.save(run.run_dir, step=st.step, model=weights, state=state,
                        meta={**run.meta, **extra}, keep_last=run.cfg.keep_last,
                        best=st.best_name)  # fmt: skip
    runtime.barrier(run.rt)


def _restore(ckpt, raw, optimizer, scaler, task, rt) -> State:
    """Load optimizer, loader, counters and RNG from a checkpoint (weights are loaded earlier)."""
    # Order matters for a bit-exact resume: weights went into the plain model before it was
    # wrapped (the command did that), the optimizer state maps onto those (possibly sharded)
    # parameters, and the RNG comes last so nothing draws random numbers after it is restored.
    state = checkpoint.read_state(ckpt)
    try:
        runtime.load_optimizer_state(raw, optimizer, state["optimizer"])
        task.train.load_state_dict(state["loader"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rngs) == rt.world_size:
            checkpoint.set_rng_state(rngs[rt.rank])
        else:  # resumed on another number of ranks: a fresh, still per-rank, stream
            torch.manual_seed(hash((len(rngs), rt.rank, state["train"]["step"])) % 2**31)
        return State(**state["train"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # loads, but not our layout
        raise GptkitError(
            f"{ckpt}/state.pt does not fit this run ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); resume from "
            "another checkpoint or start a new run (train.resume=never, new train.out_dir)"
        ) from None


def _grad_scaler(rt):
    if rt.dtype == torch.float16 and rt.device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


class _StopOnSignal:
    """SIGTERM/SIGINT ask the loop to finish its step, checkpoint and return; a 2nd SIGINT aborts."""

    def __enter__(self):
        self.requested = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
