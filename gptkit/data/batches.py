"""Pretraining batches straight from memory-mapped token shards: random or sequential, rank-aware.

The global batch of optimizer step s is `batch_size x grad_accum x world_size` windows of
block_size + 1 tokens, fixed by (seed, s) for random sampling or by position for a sequential
pass; rank r's micro-step m takes slice `r * grad_accum + m` of it. So any split of the same
global batch into ranks x accumulation trains alike, and resuming continues exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gptkit.data.packing import DocumentIndex, pack_rows
from gptkit.data.shards import read_shard, split_files
from gptkit.errors import GptkitError

SAMPLINGS = ("random", "sequential")


class ShardBatches:
    """`next_batch()` -> (x, y) int64 tensors of shape (batch_size, block_size), y = x shifted.

    Windows never cross a shard boundary (they may cross documents). Random: start offsets drawn
    uniformly over all shards from a Generator seeded by (seed, step). Sequential: consecutive
    windows overlapping by one token, every token once per epoch, then the next epoch; a fresh
    sequential instance always yields the same batches (fixed evaluation batches).
    """

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        *,
        block_size: int,
        batch_size: int,
        grad_accum: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 1337,
        sampling: str = "random",
        device: str | torch.device = "cpu",
        vocab_size: int | None = None,
        packing: str = "none",
        eot_id: int | None = None,
    ):
        assert sampling in SAMPLINGS, f"sampling must be one of {SAMPLINGS}, got {sampling!r}"
        assert 0 <= rank < world_size, f"rank {rank} outside world_size {world_size}"
        assert min(block_size, batch_size, grad_accum) >= 1, "sizes must be >= 1"
        self.data_dir, self.split = Path(data_dir), split
        self.block_size, self.batch_size, self.grad_accum = block_size, batch_size, grad_accum
        self.rank, self.world_size, self.seed, self.sampling = rank, world_size, seed, sampling
        self.device = torch.device(device)
        self.vocab_size = vocab_size  # ids at or above it mean a corrupt shard (checked per batch)
        self._shards = [read_shard(f) for f in split_files(data_dir, split)]
        self._init_packing(packing, eot_id)
        lengths = np.array([len(s) for s in self._shards], dtype=np.int64)
        self.num_tokens = int(lengths.sum())
        # windows each shard offers: any start (random) or every block_size-th start (sequential)
        if sampling == "random":
            per_shard = np.maximum(lengths - block_size, 0)
        else:
            per_shard = np.maximum((lengths - 1) // block_size, 0)
        self._ends = np.cumsum(per_shard)
        self.num_windows = int(self._ends[-1]) if len(self._ends) else 0
        if self.num_tokens == 0:
            raise GptkitError(
                f"the {split} split of {data_dir} is empty; prepare it again with more documents "
                "(or a larger prepare.val_fraction for val)"
            )
        if self.num_windows == 0:
            longest = int(lengths.max()) if len(lengths) else 0
            raise GptkitError(
                f"the {split} split of {data_dir} has {self.num_tokens:,} tokens (longest shard "
                f"{longest:,}), fewer than block_size + 1 = {block_size + 1}; lower "
                "model.block_size or prepare more data"
            )
        self.global_batch = batch_size * grad_accum * world_size  # windows per optimizer step
        self._micro = 0  # micro-steps taken by this rank (each next_batch call is one)

    def _init_packing(self, packing: str, eot_id: int | None):
        """packing "bos": random rows built from whole documents (data/packing.py)."""
        self.packing = packing if self.sampling == "random" else "none"
        if self.packing == "bos":
            assert eot_id is not None, "packing needs the end-of-text id that separates documents"
            self._docs = DocumentIndex(self._shards, eot_id)
        self._packed: tuple[int, np.ndarray] | None = None  # (step, its global rows)

    @property
    def step(self) -> int:
        """Optimizer step of the next batch."""
        return self._micro // self.grad_accum

    @property
    def epoch(self) -> int:
        """Sequential passes completed over the split before the next batch."""
        return self.step * self.global_batch // self.num_windows

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next micro-batch of this rank: (x, y), each (batch_size, block_size) int64."""
        step, micro = divmod(self._micro, self.grad_accum)
        self._micro += 1
        part = self.rank * self.grad_accum + micro  # this rank's slice of the global batch
        rows = slice(part * self.batch_size, (part + 1) * self.batch_size)
        buf = self._packed_rows(step)[rows] if self.packing == "bos" else self._windows(step, rows)
        if self.vocab_size is not None and buf.size and int(buf.max()) >= self.vocab_size:
            raise GptkitError(
                f"the {self.split} shards of {self.data_dir} hold token id {int(buf.max())}, "
                f"outside the vocabulary of {self.vocab_size}: a shard is corrupt, or (in a "
                "folder without meta.json) data.tokenizer is not the one that wrote them; run "
                "'gptkit prepare --force' again or set data.tokenizer"
            )
        x = torch.from_numpy(np.ascontiguousarray(buf[:, :-1]))  # (B, T)
        y = torch.from_numpy(np.ascontiguousarray(buf[:, 1:]))  # (B, T)
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
            y = y.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            x, y = x.to(self.device), y.to(self.device)
        return x, y

    def _windows(self, step: int, rows: slice) -> np.ndarray:
        """Rows `rows` of step `step`'s global batch, cut from the shards as windows."""
        T, windows = self.block_size, self._global_windows(step)[rows]
        buf = np.empty((len(windows), T + 1), dtype=np.int64)
        for row, w in enumerate(windows.tolist()):
            shard = int(np.searchsorted(self._ends, w, side="right"))
            local = w - (int(self._ends[shard - 1]) if shard else 0)
            start = local if self.sampling == "random" else local * T
            buf[row] = self._shards[shard][start : start + T + 1]
        return buf

    def _packed_rows(self, step: int) -> np.ndarray:
        """Step `step`'s global batch as document-aligned rows (built once per step)."""
        if self._packed is None or self._packed[0] != step:
            rng = np.random.default_rng([self.seed % 2**64, step])
            rows = pack_rows(self._docs, self._shards, rng=rng, rows=self.global_batch,
                             width=self.block_size + 1)  # fmt: skip
            self._packed = (step, rows)
        return self._packed[1]

    def _global_windows(self, step: int) -> np.ndarray:
        """Window indices of the whole global batch of optimizer step `step`."""
        if self.sampling == "random":
            rng = np.random.default_rng([self.seed % 2**64, step])  # SeedSequence: ints >= 0
            return rng.integers(0, self.num_windows, size=self.global_batch)
        first = step * self.global_batch
        return (first + np.arange(self.global_batch, dtype=np.int64)) % self.num_windows

    def state_dict(self) -> dict:
        """Position in plain Python types (safe for torch.load(weights_only=True))."""
        return {"step": self.step, "micro": self._micro % self.grad_accum, "seed": self.seed,
                "sampling": self.sampling, "block_size": self.block_size,
                "global_batch": self.global_batch, "grad_accum": self.grad_accum,
                "packing": self.packing}  # fmt: skip

    def load_state_dict(self, state: dict):
        """Continue from a `state_dict()`; the batch geometry must match the saved one."""
        if state["global_batch"] != self.global_batch:  # e.g. resumed on another number of ranks
            raise GptkitError(
                f"the saved data position was made with a global batch of {state['global_batch']}"
                f" sequences per step but this run's is {self.global_batch} (batch_size "
                f"{self.batch_size} x grad_accum {self.grad_accum} x {self.world_size} ranks); set "
                f"train.global_batch_size={state['global_batch']} (grad_accum then follows the "
                "number of ranks) or start a new run"
            )
        for key in ("sampling", "block_size", "packing"):
            if state.get(key, "none") != getattr(self, key):
                raise GptkitError(
                    f"the saved data position was made with {key}={state[key]!r} but this run "
                    f"uses {getattr(self, key)!r}; resume with the same data/train settings "
                    "or start a new run"
                )
        if state["micro"] and state["grad_accum"] != self.grad_accum:
            raise GptkitError(
                f"the saved data position is inside an accumulation step of grad_accum="
                f"{state['grad_accum']}; resume with train.grad_accum={state['grad_accum']}"
            )
        self.seed = int(state["seed"])
        self._micro = int(state["step"]) * self.grad_accum + int(state["micro"])
