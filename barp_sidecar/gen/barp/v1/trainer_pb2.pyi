from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RewardEvent(_message.Message):
    __slots__ = ("event_id", "sequence", "sidecar_id", "embedding", "quality_weight", "allowed", "model", "propensity", "policy_version", "quality", "cost_usd", "decided_at_unix_s", "quality_defaulted", "stream_sequence")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    SIDECAR_ID_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    QUALITY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    QUALITY_DEFAULTED_FIELD_NUMBER: _ClassVar[int]
    STREAM_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    sequence: int
    sidecar_id: str
    embedding: _containers.RepeatedScalarFieldContainer[float]
    quality_weight: float
    allowed: _containers.RepeatedScalarFieldContainer[bool]
    model: str
    propensity: float
    policy_version: int
    quality: float
    cost_usd: float
    decided_at_unix_s: float
    quality_defaulted: bool
    stream_sequence: int
    def __init__(self, event_id: _Optional[str] = ..., sequence: _Optional[int] = ..., sidecar_id: _Optional[str] = ..., embedding: _Optional[_Iterable[float]] = ..., quality_weight: _Optional[float] = ..., allowed: _Optional[_Iterable[bool]] = ..., model: _Optional[str] = ..., propensity: _Optional[float] = ..., policy_version: _Optional[int] = ..., quality: _Optional[float] = ..., cost_usd: _Optional[float] = ..., decided_at_unix_s: _Optional[float] = ..., quality_defaulted: _Optional[bool] = ..., stream_sequence: _Optional[int] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ("durable_sequence", "rejected_sequences", "rejected_reasons")
    DURABLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REASONS_FIELD_NUMBER: _ClassVar[int]
    durable_sequence: int
    rejected_sequences: _containers.RepeatedScalarFieldContainer[int]
    rejected_reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, durable_sequence: _Optional[int] = ..., rejected_sequences: _Optional[_Iterable[int]] = ..., rejected_reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("sidecar_id", "current_version")
    SIDECAR_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    sidecar_id: str
    current_version: int
    def __init__(self, sidecar_id: _Optional[str] = ..., current_version: _Optional[int] = ...) -> None: ...

class PolicyAnnouncement(_message.Message):
    __slots__ = ("version", "weights_sha256", "size_bytes", "arms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    version: int
    weights_sha256: str
    size_bytes: int
    arms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., weights_sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., arms: _Optional[_Iterable[str]] = ...) -> None: ...

class FetchPolicyRequest(_message.Message):
    __slots__ = ("version", "include_calibration")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    version: int
    include_calibration: bool
    def __init__(self, version: _Optional[int] = ..., include_calibration: _Optional[bool] = ...) -> None: ...

class CheckpointChunk(_message.Message):
    __slots__ = ("file_name", "offset", "data", "file_sha256")
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILE_SHA256_FIELD_NUMBER: _ClassVar[int]
    file_name: str
    offset: int
    data: bytes
    file_sha256: str
    def __init__(self, file_name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., file_sha256: _Optional[str] = ...) -> None: ...
