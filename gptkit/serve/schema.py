"""The OpenAI request bodies the server accepts, and its errors, in OpenAI's shapes.

Pydantic models in strict mode (a string is never silently an int) check types and ranges;
`ApiError` is every error a client sees: `{"error": {"message", "type", "param", "code"}}`.
Unknown fields are ignored, as the official client sends some this server does not use.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class ApiError(Exception):
    """An error answered as OpenAI-style JSON with this HTTP status."""

    def __init__(self, status: int, message: str, *, type_="invalid_request_error", code=None,
                 param=None, headers=None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.headers = param, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}  # fmt: skip


_Stop = Annotated[str, StringConstraints(min_length=1)]


class _Sampling(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: _Stop | Annotated[list[_Stop], Field(max_length=4)] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    max_tokens: int | None = Field(None, ge=1)
    stream_options: dict | None = None  # {"include_usage": true}: a last chunk with usage


class CompletionRequest(_Sampling):
    """POST /v1/completions: a prompt (text, token ids, or a list of texts) to continue."""

    prompt: (
        str
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[str], Field(min_length=1, max_length=16)]
    )
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: Literal[False] = False  # echoing the prompt back is not supported


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    """POST /v1/chat/completions: a conversation to answer."""

    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


def validation_error(errors: list[dict]) -> ApiError:
    """FastAPI's RequestValidationError list -> one 400 naming the first bad field."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    # a union reports each alternative under its type name: keep the field path only
    loc = [p for p in loc if not _is_type_name(p)]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", code="invalid_json")
    msg = first.get("msg", "invalid value")
    where = f"`{param}`: " if param else ""
    return ApiError(400, f"{where}{msg}", param=param, code="invalid_value")


def _is_type_name(part: str) -> bool:
    return part in {"str", "int", "list[int]", "list[str]", "constrained-str"} or (
        part.startswith(("list[", "function-", "constrained")) or "Annotated" in part
    )
