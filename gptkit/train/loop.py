"""`fit()`: the one training loop, shared by pretrain and finetune; `evaluate()` for LM loss.

What differs between the two commands (data, loss, evaluation) comes in a `Task`; the loop
sets the lr, steps, guards against non-finite updates, logs, evaluates, checkpoints, and stops
cleanly on SIGTERM/SIGINT (finish the step, save, return).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gptkit.config import TrainConfig
from gptkit.errors import GptkitError
from gptkit.train import checkpoint, runtime
from gptkit.train.metrics import Metrics, peak_flops
from gptkit.train.optim import lr_at, set_lr


@dataclass(kw_only=True)
class Task:
    """Data, loss and evaluation of one kind of training."""

    train: object  # next_batch() -> batch; state_dict(); load_state_dict()
    loss: Callable  # (model, batch) -> mean loss of the micro-batch
    evaluate: Callable  # (model) -> {"val_loss": ..., ...} averaged over ranks
    tokens: Callable = lambda batch: batch[0].numel()  # tokens in a micro-batch
    # Loss targets in a micro-batch, for losses that average over a varying number of targets
    # (padded SFT, token labels): micro-batches are then weighted so a step's loss is the mean
    # over every target of the global batch, whatever its split into ranks x accumulation.
    count: Callable | None = None
    best_key: str = "val_loss"  # metric that picks the best checkpoint
    best_mode: str = "min"  # or "max"
    flops_per_token: float | None = None  # for MFU


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


def fit(model, optimizer, task: Task, *, cfg: TrainConfig, rt, run_dir, meta: dict,
        max_steps: int, resume_from=None, wandb_cfg=None, patience: int = 0) -> dict:  # fmt: skip
    """Train until `max_steps` (or a stop signal, or early stopping); return the last metrics."""
    raw = unwrap(model)
    model.train()
    scaler = _grad_scaler(rt)
    st = _restore(resume_from, raw, optimizer, scaler, task, rt) if resume_from else State()
    metrics = Metrics(run_dir, total_steps=max_steps, start_step=st.step, enabled=rt.is_main,
                      wandb_cfg=wandb_cfg, config=meta.get("config"))  # fmt: skip
    try:
        return _loop(model, raw, optimizer, scaler, task, st, metrics, cfg=cfg, rt=rt,
                     run_dir=run_dir, meta=meta, max_steps=max_steps, patience=patience)  # fmt: skip
    finally:
        metrics.close()


def _loop(model, raw, optimizer, scaler, task, st, metrics, *, cfg, rt, run_dir, meta, max_steps,
          patience) -> dict:  # fmt: skip
    peak = peak_flops(rt.device, cfg.peak_flops)
    last, t_log, steps_since_log = {}, time.time(), 0
    if st.step == 0 and cfg.eval_interval:
        last = _evaluate(model, task, st, metrics)
    with _StopOnSignal() as stop:
        while st.step < max_steps:
            lr = lr_at(st.step, cfg, max_steps)
            set_lr(optimizer, lr)
            loss, norm, ntok = _train_step(model, optimizer, task, cfg, rt, scaler)
            st.step += 1
            steps_since_log += 1
            st.tokens += ntok
            # fp16's GradScaler overflows now and then by design: it skips those steps itself
            if not math.isfinite(loss) or (not math.isfinite(norm) and scaler is None):
                _count_bad(st, cfg)
            elif not math.isfinite(norm):
                st.skipped_steps += 1
            else:
                st.bad_steps = 0
            signalled = runtime.any_rank(stop.requested, rt)
            done = st.step == max_steps or signalled
            record, improved = None, False
            if st.step % cfg.log_interval == 0 or done:
                dt = (time.time() - t_log) / steps_since_log
                record = _train_record(st, loss, lr, norm, ntok, dt, task, peak)
            due = cfg.eval_interval and st.step % cfg.eval_interval == 0
            if due or (done and not signalled):  # a signal's grace period is for saving
                val = _evaluate(model, task, st, metrics, log=False)
                record = {**(record or {"step": st.step}), **val}
                improved = _improves(val, st, task)
                st.stalls = 0 if improved else st.stalls + 1
            if record is not None:
                metrics.log(record)
                last = record
            metrics.advance()
            stopping = done or (patience and st.stalls >= patience)
            interval = cfg.ckpt_interval and st.step % cfg.ckpt_interval == 0
            if interval or stopping or improved:
                _save(raw, optimizer, scaler, task, st, cfg, rt, run_dir, meta)
            if stopping:
                break
            if record is not None:  # eval and checkpoint time stay out of ms/step
                t_log, steps_since_log = time.time(), 0
    return last


def _train_step(model, optimizer, task, cfg, rt, scaler):
    """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm, tokens)."""
    total, ntok = 0.0, 0
    batches = [task.train.next_batch() for _ in range(cfg.grad_accum)]
    weights = _micro_weights(task, batches, rt)
    for micro, batch in enumerate(batches):
        ntok += task.tokens(batch)
        with runtime.no_sync(model, rt, last_micro_step=micro == cfg.grad_accum - 1):
            with runtime.autocast(rt):
                loss = task.loss(model, batch)
                loss = loss / cfg.grad_accum if weights is None else loss * weights[micro]
            (scaler.scale(loss) if scaler else loss).backward()
        total += loss.detach().float().item()
    total = runtime.all_reduce_mean(total, rt)  # every rank decides on the same numbers
    if scaler:
        scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
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


def _save(raw, optimizer, scaler, task, st, cfg, rt, run_dir, meta):
    weights, opt_state = runtime.state_dicts(raw, optimizer)  # collective under FSDP
    rngs = runtime.gather_objects(checkpoint.rng_state(), rt)  # each rank's dropout stream
    if rt.is_main:
        state = {"optimizer": opt_state, "scaler": scaler.state_dict() if scaler else None,
                 "rng": rngs, "loader": task.train.state_dict(),
                 "train": vars(st).copy()}  # fmt: skip
        extra = {"step": st.step, "tokens": st.tokens, "best": st.best_name}
        checkpoint.save(run_dir, step=st.step, model=weights, state=state, meta={**meta, **extra},
                        keep_last=cfg.keep_last, best=st.best_name)  # fmt: skip
    runtime.barrier(rt)


def _restore(ckpt, raw, optimizer, scaler, task, rt) -> State:
    """Load optimizer, loader, counters and RNG from a checkpoint (weights are loaded earlier)."""
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


def unwrap(model):
    """The plain module under torch.compile / DDP wrappers (what checkpoints save)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def lm_loss(model, batch):
    """Next-token cross-entropy of an (x, y) batch."""
    x, y = batch
    logits = model(x)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=-100)


@torch.no_grad()
def evaluate_lm(model, make_batches: Callable, steps: int, rt) -> dict:
    """Mean LM loss over the same `steps` val batches every time, averaged over ranks."""
    batches = make_batches()
    total = 0.0
    for _ in range(steps):
        with runtime.autocast(rt):
            total += lm_loss(model, batches.next_batch()).item()
    loss = runtime.all_reduce_mean(total / max(steps, 1), rt)
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}


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
