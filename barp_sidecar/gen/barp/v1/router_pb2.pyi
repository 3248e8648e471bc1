from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Exploration(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPLORATION_UNSPECIFIED: _ClassVar[Exploration]
    EXPLORATION_GREEDY: _ClassVar[Exploration]
    EXPLORATION_SAMPLE: _ClassVar[Exploration]
    EXPLORATION_EPSILON_GREEDY: _ClassVar[Exploration]

class OutcomeDelivery(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_DELIVERY_UNSPECIFIED: _ClassVar[OutcomeDelivery]
    OUTCOME_DELIVERY_TRAINER: _ClassVar[OutcomeDelivery]
    OUTCOME_DELIVERY_KEPT_WITHOUT_TRAINER: _ClassVar[OutcomeDelivery]
EXPLORATION_UNSPECIFIED: Exploration
EXPLORATION_GREEDY: Exploration
EXPLORATION_SAMPLE: Exploration
EXPLORATION_EPSILON_GREEDY: Exploration
OUTCOME_DELIVERY_UNSPECIFIED: OutcomeDelivery
OUTCOME_DELIVERY_TRAINER: OutcomeDelivery
OUTCOME_DELIVERY_KEPT_WITHOUT_TRAINER: OutcomeDelivery

class Preference(_message.Message):
    __slots__ = ("quality_weight",)
    QUALITY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    quality_weight: float
    def __init__(self, quality_weight: _Optional[float] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("prompt", "preference", "allowed_models", "exploration", "request_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    preference: Preference
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    exploration: Exploration
    request_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, prompt: _Optional[str] = ..., preference: _Optional[_Union[Preference, _Mapping]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., exploration: _Optional[_Union[Exploration, str]] = ..., request_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelProbability(_message.Message):
    __slots__ = ("model", "probability")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    probability: float
    def __init__(self, model: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("decision_id", "model", "propensity", "probabilities", "policy_version", "encoder", "exploration", "quality_weight")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODER_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    model: str
    propensity: float
    probabilities: _containers.RepeatedCompositeFieldContainer[ModelProbability]
    policy_version: int
    encoder: str
    exploration: Exploration
    quality_weight: float
    def __init__(self, decision_id: _Optional[str] = ..., model: _Optional[str] = ..., propensity: _Optional[float] = ..., probabilities: _Optional[_Iterable[_Union[ModelProbability, _Mapping]]] = ..., policy_version: _Optional[int] = ..., encoder: _Optional[str] = ..., exploration: _Optional[_Union[Exploration, str]] = ..., quality_weight: _Optional[float] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerationParameters(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "stop", "seed")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("messages", "parameters", "preference", "allowed_models", "exploration", "request_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPLORATION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    parameters: GenerationParameters
    preference: Preference
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    exploration: Exploration
    request_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., parameters: _Optional[_Union[GenerationParameters, _Mapping]] = ..., preference: _Optional[_Union[Preference, _Mapping]] = ..., allowed_models: _Optional[_Iterable[str]] = ..., exploration: _Optional[_Union[Exploration, str]] = ..., request_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "cost_usd", "estimated")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    cost_usd: float
    estimated: bool
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., estimated: _Optional[bool] = ...) -> None: ...

class CompleteChunk(_message.Message):
    __slots__ = ("decision", "delta", "usage", "finish_reason", "fallback_from", "provider_latency_ms")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FROM_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    decision: RouteResponse
    delta: str
    usage: Usage
    finish_reason: str
    fallback_from: _containers.RepeatedScalarFieldContainer[str]
    provider_latency_ms: float
    def __init__(self, decision: _Optional[_Union[RouteResponse, _Mapping]] = ..., delta: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., fallback_from: _Optional[_Iterable[str]] = ..., provider_latency_ms: _Optional[float] = ...) -> None: ...

class OutcomeRequest(_message.Message):
    __slots__ = ("decision_id", "quality", "cost_usd")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    quality: float
    cost_usd: float
    def __init__(self, decision_id: _Optional[str] = ..., quality: _Optional[float] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class OutcomeAck(_message.Message):
    __slots__ = ("recorded", "delivery")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    recorded: bool
    delivery: OutcomeDelivery
    def __init__(self, recorded: _Optional[bool] = ..., delivery: _Optional[_Union[OutcomeDelivery, str]] = ...) -> None: ...
