"""Engine events -> OpenAI response bodies: stream chunks, the final object, usage, logprobs.

`Reply` collects one request's choices as events arrive and writes them in the shape of either
endpoint: `text_completion` (completions) or `chat.completion[.chunk]` (chat).
"""

from __future__ import annotations

import time
import uuid

from gptkit.serve.sequence import Event


class Reply:
    """The choices of one request so far; `chunk(event)` for streams, `final()` at the end."""

    def __init__(self, *, chat: bool, model: str, tok, prompt_tokens: int, choices: int):
        self.chat, self.model, self.tok = chat, model, tok
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.prompt_tokens = prompt_tokens
        self.text = [""] * choices
        self.logprobs: list[list[tuple[int, dict]]] = [[] for _ in range(choices)]
        self.finish: list[str | None] = [None] * choices
        self.count = [0] * choices

    def add(self, ev: Event):
        """Take one event into the collected choices."""
        self.text[ev.index] += ev.text
        self.count[ev.index] = max(self.count[ev.index], ev.count)
        if ev.logprob is not None:
            self.logprobs[ev.index].append((ev.token, ev.logprob))
        if ev.finish_reason:
            self.finish[ev.index] = ev.finish_reason

    def done(self) -> bool:
        return all(self.finish)

    def usage(self) -> dict:
        completion = sum(self.count)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion}  # fmt: skip

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def chunk(self, ev: Event, *, first: bool = False) -> dict:
        """One stream chunk for an event (`first`: the chat chunk that announces the role)."""
        lp = [(ev.token, ev.logprob)] if ev.logprob is not None else []
        choice = {"index": ev.index, "logprobs": self._logprobs(lp, 0) if lp else None,
                  "finish_reason": ev.finish_reason}  # fmt: skip
        if not self.chat:
            return {**self._head("text_completion"), "choices": [{**choice, "text": ev.text}]}
        delta = {"role": "assistant", "content": ev.text} if first else {"content": ev.text}
        if ev.finish_reason and not ev.text:
            delta = {}
        return {**self._head("chat.completion.chunk"), "choices": [{**choice, "delta": delta}]}

    def usage_chunk(self) -> dict:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(kind), "choices": [], "usage": self.usage()}

    def final(self) -> dict:
        """The whole response of a request that did not stream."""
        choices = []
        for i, text in enumerate(self.text):
            lp = self._logprobs(self.logprobs[i], 0) if self.logprobs[i] else None
            choice = {"index": i, "logprobs": lp, "finish_reason": self.finish[i]}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": text}
            else:
                choice["text"] = text
            choices.append(choice)
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self._head(kind), "choices": choices, "usage": self.usage()}

    def _logprobs(self, items: list[tuple[int, dict]], offset: int) -> dict:
        """Chat's `{"content": [...]}` or completions' parallel lists."""
        if self.chat:
            return {"content": [self._chat_entry(t, info) for t, info in items]}
        tokens = [self.tok.decode([t]) for t, _ in items]
        offsets = []
        for s in tokens:
            offsets.append(offset)
            offset += len(s)
        return {
            "tokens": tokens,
            "token_logprobs": [info["logprob"] for _, info in items],
            "top_logprobs": [
                {self.tok.decode([a]): v for a, v in info["top"]} for _, info in items
            ],
            "text_offset": offsets,
        }

    def _chat_entry(self, token: int, info: dict) -> dict:
        s = self.tok.decode([token])
        top = [{"token": (a_s := self.tok.decode([a])), "logprob": v,
                "bytes": list(a_s.encode())} for a, v in info["top"]]  # fmt: skip
        return {"token": s, "logprob": info["logprob"], "bytes": list(s.encode()),
                "top_logprobs": top}  # fmt: skip
