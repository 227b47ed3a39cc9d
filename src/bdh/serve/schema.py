"""The OpenAI shapes of `bdh serve`: limits, errors, request bodies, the chat template, and reading a JSON body.

Errors are `{"error": {"message", "type", "param", "code"}}` (`error_body`); an `APIError` raised anywhere in a
request becomes that body with its status (the handlers in `bdh.serve.app`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from ..generation import SEED_MAX
from ..tokenization import encode_utf8

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = ["\n"]  # a reply is one line unless the request says otherwise


@dataclasses.dataclass
class Limits:
    """Bounds on every request (a request beyond one gets a 4xx)."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 4096
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 16  # completions without max_tokens (OpenAI's default)
    default_chat_max_tokens: int = 128
    max_stop: int = 4
    max_logprobs: int = 5  # completions' `logprobs`
    max_top_logprobs: int = 20  # chat's `top_logprobs`


# ----------------------------------------------------------------------------------------------- errors
class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               405: "invalid_request_error", 409: "conflict_error", 410: "not_found_error",
               413: "invalid_request_error", 429: "rate_limit_error", 503: "server_busy"}


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error" if status >= 500 else
                                                                  "invalid_request_error"), "param": param,
                      "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status)


# ----------------------------------------------------------------------------------------------- request shapes
class Body(BaseModel):
    """The options completions and chat share."""

    model_config = ConfigDict(extra="ignore")  # unknown OpenAI options are ignored; unsupported values refused

    model: StrictStr
    max_tokens: StrictInt | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: StrictInt | None = Field(None, ge=1)  # an extension
    n: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: dict | None = None
    stop: StrictStr | list[StrictStr] | None = None
    seed: StrictInt | None = Field(None, ge=0, le=SEED_MAX)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict | None = None
    user: StrictStr | None = None
    session: StrictStr | None = None  # an extension: continue (or "new": create) a session


class CompletionBody(Body):
    prompt: StrictStr | list[StrictInt] | list[StrictStr] | list[list[StrictInt]]
    logprobs: StrictInt | None = Field(None, ge=0)
    echo: StrictBool | None = False
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: StrictStr


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None


class ChatBody(Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=0)
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = Field(None, ge=0)


class SessionBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: StrictStr


def render_chat(messages: list[Message]) -> str:
    """The chat template: one `Role: content` line per message, then `Assistant:` for the reply."""
    lines = []
    for m in messages:
        text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content or [])
        lines.append(f"{ROLES[m.role]}: {text}\n")
    return "".join(lines) + "Assistant:"


# ----------------------------------------------------------------------------------------------- reading a body
def check_text(obj, param: str = "") -> None:
    """400 for the first string of a parsed JSON body (key or value) that is no text: JSON may escape half of a
    surrogate pair ("\\ud800"), which no tokenizer (nor the JSON response) can encode."""
    if isinstance(obj, str):
        try:
            encode_utf8(obj)
        except ValueError as e:
            raise APIError(400, f"{param or 'body'}: {e}", "invalid_value", param or None) from None
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_text(v, f"{param}.{i}" if param else str(i))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_text(k, param)
            check_text(v, f"{param}.{k}" if param else k)


SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_json(request: Request, cls: type[BaseModel]):
    """The request's body as `cls`, or a 400 naming what is wrong (not JSON, not text, a bad field)."""
    raw = await request.body()
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", "invalid_json") from None
    if SURROGATE_ESCAPE.search(raw):  # raw UTF-8 holds no surrogates: only an escape can
        check_text(obj)
    try:
        return cls.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ()))
        raise APIError(400, f"{param or 'body'}: {err.get('msg')}", "invalid_value", param or None) from None
