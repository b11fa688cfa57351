"""Where and how a run executes: device, precision, torchrun/DDP/FSDP set-up and tear-down.

The only module that touches `torch.distributed`. `setup(cfg.train)` reads torchrun's
RANK / WORLD_SIZE / LOCAL_RANK, `parallelize(model, rt, cfg)` wraps a plain model from outside,
`cleanup(rt)` destroys the process group. Multi-node is torchrun's own `--nnodes`/rendezvous.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import sys
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.distributed as dist

from gptkit.errors import GptkitError

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(kw_only=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  # autocast precision; float32 = no autocast
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str = "auto") -> torch.device:
    """auto -> cuda > mps > cpu; explicit names are checked for availability."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GptkitError(f"device {name!r} asked for but CUDA is not available; use device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise GptkitError("device 'mps' asked for but MPS is not available; use device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise GptkitError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto -> bf16 where the hardware runs it fast, fp16 on pre-Ampere CUDA, else fp32."""
    if name != "auto":
        if name == "float16" and device.type == "cpu":
            raise GptkitError("dtype float16 is very slow on CPU; use bfloat16 or float32")
        return _DTYPES[name]
    if device.type == "cuda":  # bf16 tensor cores from Ampere (8.x) on; older GPUs only emulate it
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu" and _cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def _cpu_has_fast_bf16() -> bool:
    """AVX512-BF16 / AMX CPUs run bf16 matmuls ~2x faster than fp32 (see scripts/bench_train.py)."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# glibc raises its mmap threshold (up to 32 MiB) each time a mapped block is freed; from then on
# tensors below it come from the heap, whose freed holes are seldom returned to the system. The
# baby GPT's training step peaked ~0.9 GiB higher that way (scripts/bench_train.py, setting
# `eager_dynamic`). Fixed at 1 MiB, every larger tensor gets its own mapping, unmapped when freed.
MMAP_THRESHOLD = 1 << 20


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD (not when the user set one through
    MALLOC_MMAP_THRESHOLD_ or GLIBC_TUNABLES, or without glibc); True when it was set."""
    chosen = "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    )
    if chosen or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, MMAP_THRESHOLD))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # musl and others: their allocator, untouched
        return False


def setup(device: str = "auto", dtype: str = "auto") -> Runtime:
    """Pick device and precision; join the process group when launched by torchrun."""
    fix_mmap_threshold()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if world_size > 1:
        if dev.type == "cuda":
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    rt = Runtime(device=dev, dtype=resolve_dtype(dtype, dev), rank=rank, local_rank=local_rank)
    rt.world_size = world_size
    return rt


def cleanup(rt: Runtime):
    """Leave the process group (if any)."""
    if rt.distributed and dist.is_initialized():
        dist.destroy_process_group()


def resolve_grad_accum(train, rt: Runtime):
    """`train` (TrainConfig) with grad_accum derived from `train.global_batch_size` and the number
    of ranks, global_batch_size then null (as given when it is null already); refuses a global
    batch that does not split into batch_size x ranks x grad_accum."""
    total = train.global_batch_size
    if total is None:
        return train
    per_micro = train.batch_size * rt.world_size  # sequences in one micro-step of all ranks
    if total % per_micro:
        raise GptkitError(
            f"train.global_batch_size={total} is not divisible by train.batch_size x ranks = "
            f"{train.batch_size} x {rt.world_size} = {per_micro}; set global_batch_size to a "
            f"multiple of {per_micro} or choose another train.batch_size"
        )
    return replace(train, grad_accum=total // per_micro, global_batch_size=None)


def autocast(rt: Runtime):
    """Mixed-precision context for forward passes (no-op in fp32)."""
    if rt.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=rt.device.type, dtype=rt.dtype)


def parallelize(model: torch.nn.Module, rt: Runtime, train):
    """Wrap a plain model for training as `train` (TrainConfig) asks: activation checkpointing,
    FSDP2/DDP under torchrun, then torch.compile."""
    model.transformer.checkpoint_blocks = train.activation_checkpointing == "blocks"
    if rt.distributed and train.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(model)
    elif rt.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [rt.local_rank] if rt.device.type == "cuda" else None
        model = DDP(model, device_ids=ids)
    if train.compile:
        model = torch.compile(model)
    return model


def unwrap(model):
    """The plain module under torch.compile / DDP wrappers (what checkpoints save)."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def _sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def state_dicts(model, optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state; under FSDP a collective, full on rank 0.

    A `MuonAdamW` (it has `.optimizers`) saves {"muon": ..., "adamw": ..., "steps": N}."""
    if not _sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        get_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if not hasattr(optimizer, "optimizers"):
        return get_state_dict(model, optimizer, options=options)
    weights, state = get_state_dict(model, optimizer.muon, options=options)
    state = {"muon": state, "adamw": None, "steps": optimizer.steps}
    if optimizer.adamw is not None:
        state["adamw"] = get_optimizer_state_dict(model, optimizer.adamw, options=options)
    return weights, state


def load_optimizer_state(model, optimizer, state: dict):
    """Load what `state_dicts` saved into a plain or FSDP-sharded optimizer."""
    if not _sharded(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    if not hasattr(optimizer, "optimizers"):
        set_optimizer_state_dict(model, optimizer, state, options=options)
        return
    for key in ("muon", "adamw"):  # a plain AdamW state lacks these keys: KeyError
        if getattr(optimizer, key) is not None:
            set_optimizer_state_dict(model, getattr(optimizer, key), state[key], options=options)
    optimizer.steps = int(state["steps"])


def no_sync(model, rt: Runtime, *, last_micro_step: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last."""
    if not rt.distributed or last_micro_step:
        return contextlib.nullcontext()
    inner = getattr(model, "_orig_mod", model)  # through torch.compile
    if hasattr(inner, "no_sync"):  # DDP
        return inner.no_sync()
    return contextlib.nullcontext()  # FSDP2 reduce-scatters every micro-step


def all_reduce_mean(value: float, rt: Runtime) -> float:
    """Mean of a Python float over ranks."""
    if not rt.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.item() / rt.world_size


def all_reduce_sum(values: list[float], rt: Runtime) -> list[float]:
    """Elementwise sum of a list of Python floats over ranks (float64, so counts stay exact)."""
    if not rt.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def seed_everything(seed: int):
    """Seed Python, numpy and torch (model init and data order are then reproducible)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def any_rank(flag: bool, rt: Runtime) -> bool:
    """True on every rank if it is True on any rank (so all ranks stop together)."""
    if not rt.distributed:
        return flag
    t = torch.tensor([int(flag)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_objects(obj, rt: Runtime) -> list:
    """[obj of rank 0, ..., obj of rank N-1] on every rank."""
    if not rt.distributed:
        return [obj]
    out = [None] * rt.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(rt: Runtime):
    if rt.distributed:
        dist.barrier()


def print0(*args, rt: Runtime | None = None, **kwargs):
    """print on rank 0 only."""
    if rt is None or rt.is_main:
        print(*args, **kwargs, flush=True)
