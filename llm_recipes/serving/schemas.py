"""Request bodies of the OpenAI-compatible API (the subset a chat model needs), validated by pydantic.

Fields the OpenAI API has but this server does not implement (`n > 1`, `logprobs`, tools) are
rejected with a 400 naming the field rather than silently ignored; unknown extra fields are allowed,
as OpenAI clients send new ones over time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict]

    @field_validator("content")
    @classmethod
    def _text_only(cls, value):
        # the OpenAI "content parts" form: accept text parts, refuse images and audio
        if isinstance(value, list):
            texts = []
            for part in value:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
                texts.append(part["text"])
            return "".join(texts)
        return value


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request is supported")
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    ignore_eos: bool = Field(default=False, description="vLLM extension: generate max_tokens even past end tokens "
                                                         "(load tests)")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if value is None:
            return []
        value = [value] if isinstance(value, str) else value
        if len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return [s for s in value if s]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(SamplingFields):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError("exactly one prompt per request is supported")
            return value[0]
        return value


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, description="the conversation up to the rated answer")
    completion: str = Field(description="the model's answer being rated")
    rating: Literal["up", "down"] | None = None
    suggestion: str | None = Field(default=None, description="a better answer written by the user")
    response_id: str | None = None
    model: str | None = None
