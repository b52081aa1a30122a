"""Request bodies of the OpenAI-compatible API, validated by pydantic.

Every field a request may carry is either honoured or refused with a 400 naming it, never accepted and
ignored: fields of OpenAI's request types this server does not implement (tools, audio...) are declared
here and refused unless they hold their neutral value (`None`, `false`, `tool_choice: "none"`), and a field
OpenAI does not have either is refused as unknown (`extra="forbid"`, as OpenAI itself answers
"Unrecognized request argument").

Every sampling value is checked against what the engine can honour, so one client's numbers never fail
the requests batched with it: `temperature` is 0 (greedy) or at least `MIN_TEMPERATURE` (a smaller one
overflows float32 logits to inf and the softmax to NaN), `seed` fits 64 bits signed (`torch`'s generator
takes `seed + k` for answer k up to 2**64 - 1), and text must be encodable as UTF-8 (a lone surrogate such
as "\\ud800", legal in JSON, is not text a tokenizer or SQLite can take).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_CHOICES = 16  # n per prompt
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; vLLM's default
MIN_TEMPERATURE = 0.01  # below it (and above 0) logits / temperature overflows float32
MAX_SEED = 2**63 - 1
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's limit


def _encodable(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"is not valid Unicode text: a lone surrogate {value[e.start]!r} at character {e.start} "
                         "(send each character outside the Basic Multilingual Plane as one code point or a "
                         "surrogate pair)") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]


class ChatMessage(BaseModel):
    """One message; text only. The null fields an OpenAI client echoes back from a previous answer
    (`refusal`, `tool_calls`...) are accepted when empty and refused when set."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: Text | list[dict]
    name: Any = None
    refusal: Any = None
    tool_calls: Any = None
    function_call: Any = None
    audio: Any = None
    annotations: Any = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value):
        # the OpenAI "content parts" form: accept text parts, refuse images and audio
        if isinstance(value, list):
            texts = []
            for part in value:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
                texts.append(_encodable(part["text"]))
            return "".join(texts)
        return value

    @field_validator("name", "refusal", "tool_calls", "function_call", "audio", "annotations")
    @classmethod
    def _unsupported(cls, value, info):
        if value not in (None, [], ""):
            raise ValueError(f"message field {info.field_name!r} is not supported by this server")
        return value


# OpenAI request fields this server does not implement, and the values that mean "not used"
_NEUTRAL = {
    "tools": (None, []), "functions": (None, []), "function_call": (None, "none"), "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, False), "audio": (None,), "modalities": (None, ["text"]),
    "prediction": (None,), "reasoning_effort": (None,), "verbosity": (None,), "web_search_options": (None,),
    "moderation": (None,), "metadata": (None, {}), "store": (None, False), "service_tier": (None, "auto", "default"),
    "prompt_cache_key": (None,), "prompt_cache_options": (None,), "prompt_cache_retention": (None,),
    "user": (None,), "safety_identifier": (None,), "suffix": (None, ""),
}
REFUSED_CHAT_FIELDS = ("tools", "functions", "function_call", "tool_choice", "parallel_tool_calls", "audio",
                       "modalities", "prediction", "reasoning_effort", "verbosity", "web_search_options", "moderation",
                       "metadata", "store", "service_tier", "prompt_cache_key", "prompt_cache_options",
                       "prompt_cache_retention", "user", "safety_identifier")
REFUSED_COMPLETION_FIELDS = ("suffix", "user")

_WHY = {
    "user": "this server keeps no per-user records",
    "safety_identifier": "this server keeps no per-user records",
    "store": "this server does not store completions",
    "metadata": "this server does not store completions",
}


def _refuse_unless_neutral(value, info):
    if value not in _NEUTRAL[info.field_name]:
        reason = _WHY.get(info.field_name, "not implemented")
        raise ValueError(f"{info.field_name} is not supported by this server ({reason})")
    return value


class JSONSchemaFormat(BaseModel):
    """`response_format.json_schema`: OpenAI's shape."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Text = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: Text | None = None
    json_schema: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`{"type": "text"}` (the default), `{"type": "json_object"}` (any JSON object) or
    `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`: structured output by
    grammar-constrained decoding (serving/structured.py)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type 'json_schema', and only then")
        return self


class SamplingFields(BaseModel):
    """Fields both generation routes take. Penalties follow OpenAI (`presence_penalty`,
    `frequency_penalty`, on the answer's tokens) and vLLM (`repetition_penalty` on prompt and answer,
    `top_k`, `min_p`); they apply before temperature and the top-k / top-p / min-p filters, and to greedy
    decoding too."""

    model_config = ConfigDict(extra="forbid")

    model: Text
    max_tokens: int | None = Field(default=None, ge=0, description="0 only with echo: score the prompt")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0,
                               description=f"0 = greedy; otherwise at least {MIN_TEMPERATURE}")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=-1, ge=-1, le=2**31 - 1, description="-1 or 0: off (vLLM's convention)")
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, ge=0.01, le=10.0, description="1 = off; > 1 discourages repeats")
    logit_bias: dict[str, float] | None = Field(default=None, description="token id (as a string) -> bias in "
                                                                          "[-100, 100], added to its logit")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="answers per prompt")
    stream: bool = False
    stream_options: dict | None = None
    stop: Text | list[Text] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=MAX_SEED)
    ignore_eos: bool = Field(default=False, description="vLLM extension: generate max_tokens even past end tokens "
                                                         "(load tests)")
    user: Any = None  # refused when set, by each route's list below

    @field_validator("temperature")
    @classmethod
    def _temperature_floor(cls, value):
        if 0 < value < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {value!r}")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, value):
        unknown = sorted(set(value or {}) - {"include_usage"})
        if unknown:
            raise ValueError(f"stream_options {unknown} not supported (only include_usage)")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, value):
        if not value:
            return None
        if len(value) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} entries")
        for key, bias in value.items():
            if not key.isdigit() or len(key) > 12:
                raise ValueError(f"keys are token ids written as strings, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"bias {bias!r} for token {key} is outside [-100, 100]")
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
    tools: Any = None
    functions: Any = None
    function_call: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    moderation: Any = None
    metadata: Any = None
    store: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    prompt_cache_options: Any = None
    prompt_cache_retention: Any = None
    safety_identifier: Any = None
    response_format: ResponseFormat | None = None

    @field_validator(*REFUSED_CHAT_FIELDS)
    @classmethod
    def _refused(cls, value, info):
        return _refuse_unless_neutral(value, info)

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.max_tokens == 0:
            raise ValueError("max_tokens must be at least 1 for a chat completion")
        if self.structured and self.ignore_eos:
            raise ValueError("ignore_eos cannot be combined with a JSON response_format (the answer ends "
                             "where the JSON does)")
        return self

    @property
    def structured(self) -> bool:
        return self.response_format is not None and self.response_format.type != "text"


class CompletionRequest(SamplingFields):
    """Legacy completions: `prompt` is a string, a list of strings, a list of token ids, or a list of
    lists of token ids (one choice set per prompt, as OpenAI and vLLM do); `logprobs: k` returns the
    chosen tokens' log-probabilities and the k most likely alternatives; `echo` puts the prompt in front
    of the answer, scored too when logprobs are asked for (lm-evaluation-harness's `local-completions`)."""

    prompt: Text | list[Text] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
    best_of: int | None = None
    suffix: Any = None

    @field_validator(*REFUSED_COMPLETION_FIELDS)
    @classmethod
    def _refused(cls, value, info):
        return _refuse_unless_neutral(value, info)

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

    model_config = ConfigDict(extra="forbid")

    model: Text | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Text | None = None
    tokens: list[int]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[ChatMessage] = Field(min_length=1, description="the conversation up to the rated answer")
    completion: Text = Field(description="the model's answer being rated")
    rating: Literal["up", "down"] | None = None
    suggestion: Text | None = Field(default=None, description="a better answer written by the user")
    response_id: Text | None = None
    model: Text | None = None
