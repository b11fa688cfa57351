"""The batching engine: every request's sequences decoded together, in one background thread.

One KV cache of `max_batch` rows x block_size slots holds the batch: rows 0..n-1 are the active
sequences, right-aligned, so every row's real tokens end at the shared `cache.pos` and
`cache.keep` marks each row's left padding (attention.py numbers positions from a row's real
tokens and never attends padding, so a row computes what it would alone). Between steps:
- a joining sequence is prefilled alone in its own cache and its K/V copied into row n (the
  batch first shifts right when the prompt is longer than `pos`);
- a finished or cancelled row is dropped by moving the rows after it up;
- when `pos` reaches the end of the cache, the padding common to every row is cut (a left
  shift); a sequence ends with "length" once prompt + completion fill the context, so there is
  always some.
A step is ONE forward of one new token per active row (decode.py's `Decoder`), then
`sample_next` per group of rows that share their settings. Torch work happens only in the
engine thread; the event loop hands jobs in through a bounded queue (`submit`) and gets events
back through each job's asyncio queue.
"""

from __future__ import annotations

import logging
import queue
import threading

import torch

from gptkit.model.decode import Decoder
from gptkit.model.generate import sample_next
from gptkit.serve.sequence import Event, Job, Sequence

log = logging.getLogger("gptkit.serve")


class EngineBusy(Exception):
    """The queue of waiting requests is full (the app answers 429)."""


class Engine:
    """Owns the model; `start()` runs the decode loop in a thread, `submit(job)` feeds it."""

    def __init__(self, model, tok, *, max_batch: int = 8, queue_size: int = 32):
        self.model, self.tok, self.max_batch = model, tok, max_batch
        self.context = model.config.block_size
        self.device = model.transformer.wte.weight.device
        self.cache = model.new_cache(max_batch)
        self.cache.padded = True  # rows always go through the per-row padding path
        self.decoder = Decoder.build(model)  # one-token steps with few ops (None: the modules)
        self.rows: list[Sequence] = []  # the sequence in each active cache row
        self.logits: torch.Tensor | None = None  # (n, V) next-token logits of the active rows
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        self.held: Job | None = None  # taken from the queue, waiting for enough free rows
        self.stats = {"steps": 0, "peak_batch": 0, "cancelled": 0, "errors": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self):
        self._thread = threading.Thread(target=self._run, name="gptkit-engine", daemon=True)
        self._thread.start()

    def close(self):
        """Stop the loop and fail whatever still waits."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._fail_all("the server is shutting down")

    def submit(self, job: Job):
        """Queue a job; EngineBusy when the queue is full."""
        if self._stop.is_set():
            raise EngineBusy("the server is shutting down")
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise EngineBusy(f"{self.queue.maxsize} requests are already waiting") from None

    def load(self) -> dict:
        """Active sequences and waiting requests (for /health)."""
        return {"active": len(self.rows), "queued": self.queue.qsize() + (self.held is not None)}

    # ---------------------------------------------------------------------------------------
    # The loop (engine thread only)

    def _run(self):
        with torch.inference_mode():
            while not self._stop.is_set():
                try:
                    self._admit()
                    if self.rows:
                        self._step()
                except Exception as e:  # noqa: BLE001 - a bug or OOM fails the batch, not the server
                    log.exception("engine step failed")
                    self.stats["errors"] += 1
                    self._fail_all(f"generation failed ({type(e).__name__}); retry the request")

    def _admit(self):
        """Move queued jobs into free rows; waits briefly for one when nothing is active."""
        while True:
            job, self.held = self.held, None
            if job is None:
                try:
                    job = self.queue.get(timeout=0.05) if not self.rows else self.queue.get_nowait()
                except queue.Empty:
                    return
            live = [s for s in job.seqs if not s.cancelled]
            if len(self.rows) + len(live) > self.max_batch:
                self.held = job  # all of a request's choices join together
                return
            for seq in live:
                self._join(seq)

    def _join(self, seq: Sequence):
        """Prefill `seq` alone, then copy its K/V right-aligned into the next free row."""
        L, c, n = len(seq.prompt), self.cache, len(self.rows)
        if seq.params.seed is not None:
            gen = torch.Generator(device=self.device)
            seq.generator = gen.manual_seed(seq.params.seed + seq.index)
        one = self.model.new_cache(1, max_len=L)
        logits = self._forward(torch.tensor([seq.prompt], device=self.device), one)
        if n == 0:
            c.pos = 0
        if L > c.pos:
            self._shift_right(L - c.pos)
        start = c.pos - L
        for buf, new in zip((*c.k, *c.v), (*one.k, *one.v), strict=True):
            buf[n, :, start : c.pos] = new[0, :, :L]
        c.keep[n] = False
        c.keep[n, start : c.pos] = True
        self.rows.append(seq)
        self.logits = logits if n == 0 else torch.cat([self.logits, logits])

    def _step(self):
        """Sample one token for every active row, hand out the events, feed the tokens."""
        self._keep_rows([i for i, s in enumerate(self.rows) if not s.cancelled])
        if not self.rows:
            return
        self.stats["steps"] += 1
        self.stats["peak_batch"] = max(self.stats["peak_batch"], len(self.rows))
        tokens = self._sample()
        for i, (seq, token) in enumerate(zip(self.rows, tokens, strict=True)):
            seq.add(token, self.tok.decode, self.context)
            info = self._logprob(i, token, seq.params.logprobs)
            seq.job.post(
                Event(
                    index=seq.index,
                    text=seq.delta(),
                    token=token,
                    logprob=info,
                    finish_reason=seq.finish_reason,
                    count=seq.count,
                )  # fmt: skip
            )
        alive = [i for i, s in enumerate(self.rows) if s.finish_reason is None]
        self._keep_rows(alive)
        if not self.rows:
            return
        if self.cache.pos == self.cache.keep.shape[1]:
            self._cut_common_padding()
        idx = torch.tensor([tokens[i] for i in alive], device=self.device)
        if self.decoder is not None:
            self.logits = self.decoder.step(idx, self.cache)
        else:
            self.logits = self._forward(idx[:, None], self.cache)

    def _forward(self, idx: torch.Tensor, cache) -> torch.Tensor:
        """Append `idx` (B, T) to `cache` -> logits (B, V) of the last position."""
        h = self.model.transformer(idx, cache=cache)
        return self.model.head(h[:, -1:], wte=self.model.transformer.wte.weight)[:, -1]

    def _sample(self) -> list[int]:
        """One token per row through `sample_next`, one call per group of equal settings."""
        groups: dict[tuple, list[int]] = {}
        for i, seq in enumerate(self.rows):
            key = (seq.params.temperature, seq.params.top_p, id(seq.generator))
            groups.setdefault(key, []).append(i)
        out = torch.empty(len(self.rows), dtype=torch.long, device=self.device)
        for (temperature, top_p, _), rows in groups.items():
            ix = torch.tensor(rows, device=self.device)
            gen = self.rows[rows[0]].generator
            out[ix] = sample_next(
                self.logits[ix], temperature=temperature, top_p=top_p, generator=gen
            )
        return out.tolist()

    def _logprob(self, row: int, token: int, top: int | None) -> dict | None:
        """The sampled token's log-probability under the model and the `top` likeliest."""
        if top is None:
            return None
        lp = torch.log_softmax(self.logits[row].float(), dim=-1)
        best = torch.topk(lp, top)  # top = 0 gives no alternatives
        alts = list(zip(best.indices.tolist(), best.values.tolist(), strict=True))
        return {"logprob": float(lp[token]), "top": alts}

    # ---------------------------------------------------------------------------------------
    # Cache rows and slots

    def _keep_rows(self, keep: list[int]):
        """Keep only these active rows, moved up to rows 0..len(keep)-1 in this order."""
        if len(keep) == len(self.rows):
            return
        for i in set(range(len(self.rows))) - set(keep):
            if self.rows[i].cancelled and self.rows[i].finish_reason is None:
                self.stats["cancelled"] += 1
        c, m = self.cache, len(keep)
        ix = torch.tensor(keep, dtype=torch.long, device=self.device)
        for buf in (*c.k, *c.v):
            buf[:m, :, : c.pos] = buf[ix, :, : c.pos]  # advanced indexing copies first
        c.keep[:m] = c.keep[ix]
        self.rows = [self.rows[i] for i in keep]
        self.logits = self.logits[ix] if m else None

    def _move(self, src: int, dst: int, length: int):
        """Copy slots [src, src + length) of every active row to [dst, dst + length)."""
        c, n = self.cache, len(self.rows)
        for buf in (*c.k, *c.v, c.keep[:, None]):
            buf[:n, :, dst : dst + length] = buf[:n, :, src : src + length].clone()

    def _shift_right(self, d: int):
        """Make room for a longer prompt: every row moves d slots right, padding before it."""
        c, n = self.cache, len(self.rows)
        self._move(0, d, c.pos)
        c.keep[:n, :d] = False
        c.pos += d

    def _cut_common_padding(self):
        """The cache is full: drop the leading slots that are padding in every row."""
        c, n = self.cache, len(self.rows)
        lead = int(c.keep[:n, : c.pos].any(0).long().argmax())
        assert lead > 0, "a full cache row must have ended with finish_reason 'length'"
        self._move(lead, 0, c.pos - lead)
        c.pos -= lead

    def _fail_all(self, message: str):
        """End every active, held and queued job with an error event."""
        jobs = {id(s.job): s.job for s in self.rows}
        if self.held is not None:
            jobs[id(self.held)] = self.held
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            jobs[id(job)] = job
        for job in jobs.values():
            for seq in job.seqs:
                job.post(Event(index=seq.index, error=message, finish_reason="error"))
        self.rows, self.logits, self.held, self.cache.pos = [], None, None, 0
