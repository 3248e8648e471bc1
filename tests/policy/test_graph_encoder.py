"""GraphEncoder, the base of the onnx and openvino encoders: start-time probe, batching, renormalisation."""

from __future__ import annotations

import numpy as np
import pytest

from barp_sidecar.policy.encoder import EncoderSettings
from barp_sidecar.policy.graph_encoder import GraphEncoder
from barp_sidecar.policy.onnx_export import OnnxRuntimeUnsupported

CPU = EncoderSettings(device="cpu")


class FakeGraph(GraphEncoder):
    """A 'runtime' that returns each row's first token id and its length, unnormalised."""

    def __init__(self, settings: EncoderSettings = CPU, fail_forward: bool = False) -> None:
        super().__init__(settings, "fake", threads=1)
        self.fail_forward = fail_forward
        self.calls: list[tuple[int, ...]] = []

    @property
    def backend(self) -> str:
        return "fake"

    @property
    def model_sha256(self) -> str:
        return "0" * 64

    @property
    def model_file(self) -> str:
        return "/models/fake.graph"

    def _runtime(self) -> str:
        return "fakeruntime 1.0"

    def _open(self) -> int:
        return 2

    def _forward(self, input_ids: np.ndarray, attention: np.ndarray) -> np.ndarray:
        if self.fail_forward:
            raise RuntimeError("kernel missing")
        self.calls.append(input_ids.shape)
        return np.stack([input_ids[:, 1].astype(np.float64), attention.sum(axis=1)], axis=1) * 3.0


def test_a_graph_that_fails_its_probe_pass_fails_load_naming_file_and_runtime() -> None:
    encoder = FakeGraph(fail_forward=True)
    with pytest.raises(OnnxRuntimeUnsupported, match=r"/models/fake.graph: fakeruntime 1.0 failed a probe"):
        encoder.load()
    with pytest.raises(RuntimeError, match="not loaded"):
        encoder.dim  # noqa: B018 - the property is the call under test
    with pytest.raises(RuntimeError, match="not loaded"):
        encoder.encode_token_ids([[1000]])


def test_batches_are_padded_renormalised_and_returned_in_order() -> None:
    encoder = FakeGraph().load()
    assert encoder.dim == 2 and encoder.device == "cpu" and encoder.backend == "fake"
    out = encoder.encode_token_ids([[1000, 1001, 1002], [2000]])
    assert encoder.calls[-1] == (2, 5)  # [CLS] ids [SEP], padded to the longest row
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[1], np.array([2000.0, 3.0]) / np.hypot(2000.0, 3.0), rtol=1e-6)
    assert out.dtype == np.float32
    assert encoder.encode([]).shape == encoder.encode_token_ids([]).shape == (0, 2)
    texts = ["a much longer prompt than the other one", "short"]
    by_length = encoder.encode(texts, batch_size=1)
    np.testing.assert_allclose(by_length, encoder.encode_token_ids(encoder.token_ids(texts)), rtol=1e-6)


def test_a_graph_encoder_runs_on_the_cpu_only() -> None:
    with pytest.raises(ValueError, match="the fake backend runs on the CPU only"):
        FakeGraph(EncoderSettings(device="cuda:0"))
