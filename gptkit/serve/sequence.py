"""One generated sequence of a request and the job that groups a request's sequences.

A `Sequence` is what the engine decodes (prompt ids, sampling settings, the text so far, why it
ended); a `Job` is one HTTP request's sequences (`n` choices x prompts) plus the asyncio queue
through which the engine thread hands its events back to the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

_REPLACEMENT = "\ufffd"  # what a decoder gives for the first bytes of a split UTF-8 character


@dataclass(kw_only=True, frozen=True)
class Params:
    """Sampling settings of one sequence (validated by schema.py)."""

    max_tokens: int  # completion tokens at most (the context may end it sooner)
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one
    stop_ids: frozenset[int] = frozenset()  # stop tokens (end of text, end of turn)
    logprobs: int | None = None  # alternatives to report per token; None = no logprobs
    seed: int | None = None


@dataclass(kw_only=True)
class Event:
    """What one engine step produced for one sequence."""

    index: int  # the choice it belongs to
    text: str = ""  # new text that can no longer change
    token: int | None = None
    logprob: dict | None = None  # {"logprob": float, "top": [(id, logprob), ...]}
    finish_reason: str | None = None  # "stop" | "length" once it ended
    count: int = 0  # completion tokens so far
    error: str | None = None  # the engine failed this sequence


@dataclass(kw_only=True, eq=False)
class Sequence:
    """A prompt being continued; `add` takes each sampled token, `delta` the safe new text."""

    prompt: list[int]
    params: Params
    index: int = 0
    job: Job | None = None
    tokens: list[int] = field(default_factory=list)  # completion tokens, stop token excluded
    text: str = ""
    sent: int = 0  # characters of `text` already handed out
    count: int = 0  # tokens sampled, the stop token included
    finish_reason: str | None = None
    cancelled: bool = False  # set from the event loop when the client went away
    generator: object = None  # a seeded torch.Generator, made by the engine

    def add(self, token: int, decode, context: int):
        """Take one sampled token: stop tokens and strings end it, so do max_tokens and a full
        context (`context` = the model's block_size)."""
        self.count += 1
        if token in self.params.stop_ids:
            self.finish_reason = "stop"
            return
        self.tokens.append(token)
        self.text = decode(self.tokens)  # whole text: a character split over tokens comes out whole
        found = (self.text.find(s, max(0, self.sent - len(s))) for s in self.params.stop)
        cut = min((i for i in found if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish_reason = self.text[:cut], "stop"
        elif self.count >= self.params.max_tokens or len(self.prompt) + self.count >= context:
            self.finish_reason = "length"

    def delta(self) -> str:
        """The text that can no longer change and was not handed out yet."""
        end = len(self.text) if self.finish_reason else self._stable_end()
        if end <= self.sent:
            return ""
        new, self.sent = self.text[self.sent : end], end
        return new

    def _stable_end(self) -> int:
        text = self.text.rstrip(_REPLACEMENT)  # maybe the first bytes of a character
        hold = 0  # the longest tail that may still grow into a stop string
        for stop in self.params.stop:
            n = min(len(stop) - 1, len(text))
            while n > hold and not text.endswith(stop[:n]):
                n -= 1
            hold = max(hold, n)
        return len(text) - hold


class Job:
    """One request's sequences and the queue of their events (created on the event loop)."""

    def __init__(self, seqs: list[Sequence]):
        self.seqs = seqs
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        for s in seqs:
            s.job = self

    def post(self, event: Event):
        """Hand an event to the event loop (called from the engine thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel()

    def cancel(self):
        """Stop decoding this job's sequences; the engine drops them at its next step."""
        for s in self.seqs:
            s.cancelled = True
