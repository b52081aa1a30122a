"""Request bodies of the OpenAI-compatible API (the subset a chat model needs), validated by pydantic.

Fields the OpenAI API has but this server does not implement (tools, `logit_bias`, `best_of > n`,
non-text content) are rejected with a 400 naming the field rather than silently ignored; unknown extra
fields are allowed, as OpenAI clients send new ones over time.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


MAX_CHOICES = 16  # n per prompt
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; vLLM's default


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=0, description="0 only with echo: score the prompt")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="answers per prompt")
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    ignore_eos: bool = Field(default=False, description="vLLM extension: generate max_tokens even past end tokens "
                                                         "(load tests)")
    tools: list | None = None
    logit_bias: dict | None = None

    @field_validator("tools", "logit_bias")
    @classmethod
    def _unsupported(cls, value, info):
        if value:
            raise ValueError(f"{info.field_name} is not supported by this server")
        return value

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
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.max_tokens == 0:
            raise ValueError("max_tokens must be at least 1 for a chat completion")
        return self


class CompletionRequest(SamplingFields):
    """Legacy completions: `prompt` is a string, a list of strings, a list of token ids, or a list of
    lists of token ids (one choice set per prompt, as OpenAI and vLLM do); `logprobs: k` returns the
    chosen tokens' log-probabilities and the k most likely alternatives; `echo` puts the prompt in front
    of the answer, scored too when logprobs are asked for (lm-evaluation-harness's `local-completions`)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        prompts = value if isinstance(value, list) and value and not isinstance(value[0], int) else [value]
        # "" is a prompt (generation from the BOS token alone); an empty list of token ids is not
        if not prompts or any(not isinstance(p, str) and len(p) == 0 for p in prompts):
            raise ValueError("prompt must not be an empty list")
        return prompts

    @model_validator(mode="after")
    def _consistent(self):
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens 0 needs echo: true (it returns the prompt, scored with logprobs)")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        return self.prompt


class TokenizeRequest(BaseModel):
    """vLLM's `/tokenize`: a prompt, or messages put through the chat template."""

    model_config = ConfigDict(extra="allow")

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    tokens: list[int]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, description="the conversation up to the rated answer")
    completion: str = Field(description="the model's answer being rated")
    rating: Literal["up", "down"] | None = None
    suggestion: str | None = Field(default=None, description="a better answer written by the user")
    response_id: str | None = None
    model: str | None = None
