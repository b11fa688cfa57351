"""Conversations as token ids: `messages` rows -> ids + assistant-only loss labels, and prompts.

A conversation is a list of `{"role": "system"|"user"|"assistant", "content": str}` (OpenAI/HF
chat format). It is rendered with the model's own chat template (an HF dir's `chat_template`,
run by jinja2) or else ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message and
`<|im_start|>assistant\\n` as the generation prompt. `with_chat_tokens(spec)` appends the two
ChatML tokens to any tokenizer (data/special.py). Message contents are always encoded as plain
text, so a user typing `<|im_start|>` gets ordinary tokens; only the template makes special ids.
"""

from __future__ import annotations

import functools
import re

from gptkit.data.special import WithSpecial
from gptkit.data.tokenizer import EOT_TEXT, get_tokenizer
from gptkit.errors import GptkitError

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES = ("system", "user", "assistant")
# special tokens that end a turn in the usual templates (ChatML, Llama 3, Phi 3, Gemma)
END_OF_TURN = (IM_END, "<|eot_id|>", "<|end|>", "<end_of_turn>")
_MARK = re.compile("\x00(\\d+)\x00")  # stands in for message j's content inside a template
# The ChatML rendering of `_chatml` as an HF chat template (what `gptkit export` writes)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def specials(tok) -> dict[str, int]:
    """Every special token string of `tok` -> its id (added chat tokens, tokenizer.json ones)."""
    out = {EOT_TEXT: tok.eot_id}
    spec = tok.spec()
    out.update(spec.get("special_tokens") or {})
    out.update(getattr(tok, "added", {}))
    return out


def with_chat_tokens(spec: dict) -> dict:
    """The tokenizer spec with <|im_start|> and <|im_end|> appended after its vocabulary, unless
    it already has them or brings its own chat template (then `spec` unchanged)."""
    tok = get_tokenizer(spec)
    if has_chat(tok):
        return dict(spec)
    return WithSpecial(tok, {IM_START: tok.vocab_size, IM_END: tok.vocab_size + 1}).spec()


def has_chat(tok) -> bool:
    """True if `tok` can render a conversation: its own template, or the ChatML tokens."""
    return _template(tok) is not None or {IM_START, IM_END} <= specials(tok).keys()


def jinja_template(tok) -> str | None:
    """The chat template of `tok` as Jinja for an HF tokenizer_config.json: its own, else ChatML
    when it has the ChatML tokens, else None."""
    if _template(tok) is not None:
        return _template(tok)
    return CHATML_TEMPLATE if {IM_START, IM_END} <= specials(tok).keys() else None


def stop_ids(tok) -> list[int]:
    """Ids that end an assistant reply: end-of-turn tokens and end-of-text."""
    known = specials(tok)
    ends = [known[t] for t in END_OF_TURN if t in known]
    eos = tok.spec().get("eos_id")
    return sorted({*ends, tok.eot_id, *([eos] if isinstance(eos, int) else [])})


def render_prompt(tok, messages: list[dict]) -> list[int]:
    """Ids of the conversation so far plus the assistant generation prompt."""
    check_messages(messages, "the conversation")
    return _render(tok, messages, generation=True)


def encode_conversation(tok, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(ids, labels) of a whole conversation: labels[i] = ids[i] for the tokens of every assistant
    turn (its content and the end-of-turn token that stops it), -100 elsewhere. Shift by one for
    next-token targets. Each assistant turn is found by rendering the conversation before it with
    the generation prompt: what the full rendering adds after that prefix is the turn."""
    check_messages(messages, "the conversation", need_assistant=True)
    ids = _render(tok, messages, generation=False)
    labels, stops = [-100] * len(ids), set(stop_ids(tok))
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tok, messages[:k], generation=True)
        upto = _render(tok, messages[: k + 1], generation=False)
        if upto[: len(before)] != before or ids[: len(upto)] != upto:
            raise GptkitError(
                f"the chat template of {tok.name} does not render a conversation as the start "
                "of its continuation, so assistant turns cannot be masked; use a ChatML template"
            )
        end = next((j for j in range(len(before), len(upto)) if upto[j] in stops), len(upto) - 1)
        labels[len(before) : end + 1] = ids[len(before) : end + 1]
    return ids, labels


def encode_rows(rows: list[dict], tok, *, field: str, block_size: int, where: str) -> list:
    """Rows holding `field` (a messages list) -> (ids, next-token targets) pairs cut to
    `block_size`; a row whose assistant turns all lie past the block is skipped."""
    out = []
    for i, row in enumerate(rows):
        messages = row.get(field) if isinstance(row, dict) else None
        check_messages(messages, f"row {i + 1} of {where}", need_assistant=True, field=field)
        ids, labels = encode_conversation(tok, messages)
        ids, labels = ids[: block_size + 1], labels[: block_size + 1]
        if any(t != -100 for t in labels[1:]):
            out.append((ids[:-1], labels[1:]))
    if rows and not out:
        raise GptkitError(f"{where}: every assistant turn lies past model.block_size tokens; "
                          "shorten the conversations")  # fmt: skip
    return out


def check_messages(messages, where: str, *, need_assistant=False, field="messages"):
    """One GptkitError naming `where` and the message unless `messages` is a valid chat."""
    if not isinstance(messages, list) or not messages:
        raise GptkitError(f"{where}: '{field}' must be a non-empty list of {{role, content}} "
                          "messages; fix the row or set finetune.messages_field")  # fmt: skip
    for j, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise GptkitError(f"{where}: message {j + 1} has role {role!r}; use one of "
                              f"{', '.join(ROLES)}")  # fmt: skip
        if not isinstance(m.get("content"), str):
            raise GptkitError(f"{where}: message {j + 1} ({role}) has content of type "
                              f"{type(m.get('content')).__name__}; it must be a string")  # fmt: skip
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise GptkitError(f"{where}: no assistant message, so nothing to learn; add the reply")


# --------------------------------------------------------------------------------------------
# Rendering


def _render(tok, messages: list[dict], *, generation: bool) -> list[int]:
    template = _template(tok)
    if template is None:
        return _chatml(tok, messages, generation)
    return _jinja(tok, template, messages, generation)


def _template(tok) -> str | None:
    template = tok.spec().get("chat_template")
    return template if isinstance(template, str) and template else None


def _chatml(tok, messages: list[dict], generation: bool) -> list[int]:
    known = specials(tok)
    if IM_START not in known or IM_END not in known:
        raise GptkitError(f"tokenizer {tok.name} has no chat tokens; add them with "
                          "gptkit.data.chat.with_chat_tokens (gptkit finetune does)")  # fmt: skip
    start, end, newline = known[IM_START], known[IM_END], tok.encode("\n")
    ids = []
    for m in messages:
        ids += [start, *tok.encode(m["role"] + "\n"), *tok.encode(m["content"]), end, *newline]
    return ids + ([start, *tok.encode("assistant\n")] if generation else [])


def _jinja(tok, template: str, messages: list[dict], generation: bool) -> list[int]:
    """An HF chat template rendered with every content replaced by a marker; the text around
    the markers may hold special tokens, the contents never do."""
    import jinja2

    marked = [{**m, "content": f"\x00{j}\x00"} for j, m in enumerate(messages)]
    spec = tok.spec()
    try:
        text = _compiled(template).render(
            messages=marked,
            add_generation_prompt=generation,
            bos_token=spec.get("bos") or "",
            eos_token=spec.get("eos") or EOT_TEXT,
        )
    except (jinja2.TemplateError, ValueError) as e:
        raise GptkitError(f"the chat template of {tok.name} failed on this conversation "
                          f"({str(e)[:160]})") from None  # fmt: skip
    known = specials(tok)
    names = "|".join(re.escape(s) for s in sorted(known, key=len, reverse=True))
    ids = []
    for piece in re.split(f"({names}|\x00\\d+\x00)", text):
        mark = _MARK.fullmatch(piece)
        if piece in known:
            ids.append(known[piece])
        elif mark:
            ids += tok.encode(messages[int(mark.group(1))]["content"])
        elif piece:
            ids += tok.encode(piece)
    return ids


@functools.lru_cache(maxsize=4)
def _compiled(template: str):
    """A template compiled as transformers does (sandboxed, trim_blocks, lstrip_blocks)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])  # fmt: skip
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(template)
    except Exception as e:  # noqa: BLE001 - jinja2 syntax errors: one line
        raise GptkitError(f"the model's chat template does not parse ({str(e)[:160]})") from None


def _raise(message: str):
    raise ValueError(message)
