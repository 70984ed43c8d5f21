"""Request and response bodies (OpenAI-compatible shapes), validated by pydantic and published in OpenAPI."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

Text = Annotated[StrictStr, Field(min_length=1)]
Texts = Annotated[list[Text], Field(min_length=1)]


class _Request(BaseModel):
    # extra fields (user, dimensions, ...) are accepted and ignored, as OpenAI clients send them
    model_config = ConfigDict(extra="ignore")
    model: StrictStr | None = Field(None, description="Ignored: the server serves one model.")


class EmbeddingRequest(_Request):
    input: Text | Texts = Field(..., description="One text or a non-empty list of texts.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="float: JSON numbers; base64: little-endian float32 bytes.")


class ClassifyRequest(_Request):
    input: Text | Texts = Field(..., description="One text or a non-empty list of texts.")


class CompletionRequest(_Request):
    prompt: Text | Texts = Field(..., description="One prompt or a non-empty list of prompts.")
    max_tokens: StrictInt = Field(16, ge=1, description="New tokens to generate per prompt.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 (or below 0.001) = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: StrictInt | None = Field(None, description="Seed for sampling (batched only with equal seeds).")
    stream: bool = Field(False, description="true: answer with server-sent events (`data: {chunk}`), "
                                            "`data: [DONE]` last.")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage


class ClassifyItem(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    label: str
    label_id: int
    score: float
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[ClassifyItem]
    model: str
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ErrorBody(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "starting", "draining"]
    model: str
    backend: str = Field(..., description="What runs the forward (OpenVINO, ONNX Runtime, PyTorch <dtype>) and the "
                                          "applied passes.")
    tasks: list[str]
    queue_depth: int
    workers: list[str]


ERROR_RESPONSES = {code: {"model": ErrorResponse, "description": text} for code, text in (
    (400, "Malformed JSON, non-UTF-8 body, or a task the model does not support"),
    (401, "Missing or wrong API key"),
    (413, "Body, number of texts or tokens per text over the limit"),
    (422, "Wrong types or empty input"),
    (429, "Queue full; retry after the Retry-After header's seconds"),
    (503, "Shutting down"),
    (504, "Not answered within the per-request timeout"),
)}
COMPLETION_RESPONSES = {**ERROR_RESPONSES, 200: {
    "description": "The completion; with `stream: true`, server-sent events of text_completion chunks",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
