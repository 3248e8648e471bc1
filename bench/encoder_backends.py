"""Encoder backends compared with fp32 torch: decision agreement, routing metrics, in-process speed.

``agreement``: for each shared data set, every backend embeds the same prompts (through the on-disk
embedding cache, one cache per backend and ONNX file), the policy (the shipped one by default) decides
greedily at every w_q of the grid 0, 0.1 … 1, and the table reports the share of prompts whose model is
the same as with torch (target ≥ 99.5% at every w_q), the cosine of the embeddings to torch's, and, on
data sets with scores and costs, the largest change of the routing metrics (score, reward; target ≤
0.002) over the grid. Large sets are subsampled (``--max-prompts``, seeded; the table says so).

``speed``: the in-process encoders side by side in ONE run, rounds interleaved, at 16/64/256 tokens and
batch 1/8/32 (prompts/s and per-batch p50). ``--encoder-models DIR ...`` adds other sentence-transformers
models (torch, fp32) to the same rounds, named ``torch:<directory name>`` (issue 12's encoder cost).

``variants``: int8 variants of the fused fp32 graph that are NOT shipped (dynamic, SmoothQuant + dynamic,
block-wise 8-bit): cosine to fp32 on AlpacaEval prompts and prompts/s next to fp32 ONNX and torch.

``threads``: ONNX Runtime session settings for the int8 file (intra-op threads, spinning, memory arena).

    python -m bench.encoder_backends agreement --cache-dir /work/cache/embeddings --json out/agree.json
    OMP_WAIT_POLICY=PASSIVE python -m bench.encoder_backends speed --threads 2 --json out/encoder_speed.json
    python -m bench.encoder_backends speed --backends torch --encoder-models /path/all-mpnet-base-v2
    python -m bench.encoder_backends threads --json out/encoder_threads.json
    OMP_WAIT_POLICY=PASSIVE python -m bench.encoder_backends variants --threads 2 --tokens 16 64
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from barp_sidecar.errors import DataError
from barp_sidecar.policy.backends import BACKENDS, BackendChoice, default_onnx_dir, load_backend_encoder
from barp_sidecar.policy.builtin import builtin_policy_dir
from barp_sidecar.policy.checkpoint import LoadedPolicy, load_checkpoint
from barp_sidecar.policy.encoder import (
    BUILTIN_MODEL,
    BUILTIN_MODEL_ID,
    Encoder,
    EncoderSettings,
    SentenceTransformerEncoder,
)
from trainer.offline.datasets import RoutingTable, load_table
from trainer.offline.embedding_cache import EmbeddingCache
from trainer.offline.evaluation import QUALITY_WEIGHT_GRID, metrics_for_actions

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
DEFAULT_SETS = ("routerbench", "alpacaeval/alpacaeval.jsonl", "routerdc7/routerdc7.jsonl")
AGREEMENT_TARGET = 0.995
METRIC_TARGET = 0.002


def load_encoder_for(policy: LoadedPolicy, backend: str, onnx_dir: Path, threads: int = 0) -> Encoder:
    identity = policy.manifest.encoder
    model = BUILTIN_MODEL if identity.encoder_id == BUILTIN_MODEL_ID else identity.encoder_id
    settings = identity.settings(model, device="cpu")
    return load_backend_encoder(settings, BackendChoice(backend, onnx_dir, threads))


def subsample(table: RoutingTable, max_prompts: int, seed: int, test_split: bool) -> tuple[RoutingTable, str]:
    """The test split (RouterBench) or all rows; at most ``max_prompts`` seeded ones (said in the note)."""
    if test_split:
        table = table.select([i for i, s in enumerate(table.splits) if s == "test"])
        note = "test split"
    else:
        note = "all rows"
    if len(table) > max_prompts:
        rows = sorted(random.Random(seed).sample(range(len(table)), max_prompts))
        return table.select(rows), f"{max_prompts} of {len(table)} rows (seeded sample)"
    return table, note


def prompts_only(path: Path, max_prompts: int, seed: int) -> RoutingTable:
    """A JSONL file's prompts as a table without models (no routing metrics), seeded subsample."""
    with path.open() as lines:
        prompts = [str(json.loads(line)["prompt"]) for line in lines if line.strip()]
    if len(prompts) > max_prompts:
        prompts = [prompts[i] for i in sorted(random.Random(seed).sample(range(len(prompts)), max_prompts))]
    n = len(prompts)
    return RoutingTable(
        tuple(prompts), ("-",) * n, ("-",) * n, (), np.zeros((n, 0)), np.zeros((n, 0)), source=str(path)
    )


def greedy(policy: LoadedPolicy, embeddings: np.ndarray, quality_weight: float) -> np.ndarray:
    with torch.inference_mode():
        weights = torch.full((len(embeddings),), quality_weight)
        probabilities = policy.network.probabilities(torch.as_tensor(embeddings), weights, None)
    return probabilities.argmax(dim=1).numpy()


@dataclass
class AgreementRow:
    data: str
    note: str
    backend: str
    prompts: int
    min_agreement: float
    agreement_by_wq: dict[str, float]
    cosine_mean: float
    cosine_min: float
    max_score_delta: float | None
    max_reward_delta: float | None


def run_agreement(args: argparse.Namespace) -> list[AgreementRow]:
    policy = load_checkpoint(args.checkpoint)
    tables = []
    for name in args.data:
        path = Path(name) if Path(name).exists() else args.data_root / name
        if not path.exists():
            print(f"skipping {name}: {path} is absent", file=sys.stderr)
            continue
        try:
            table, note = subsample(
                load_table(path), args.max_prompts, args.seed, test_split=name.startswith("routerbench")
            )
        except DataError as exc:  # e.g. AlpacaEval rows score different model sets: prompts only
            print(f"{name}: no routing table ({exc}); agreement on its prompts only", file=sys.stderr)
            table, note = prompts_only(path, args.max_prompts, args.seed), "prompts only"
        tables.append((name.split("/")[0], table, note))
    embeddings: dict[tuple[str, str], np.ndarray] = {}
    for backend in args.backends:
        encoder = load_encoder_for(policy, backend, args.onnx_dir)
        cache = EmbeddingCache(args.cache_dir, encoder)
        for name, table, _ in tables:
            started = time.perf_counter()
            embeddings[(name, backend)] = cache.embed(list(table.prompts))
            print(f"{backend}: {name} embedded in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        del encoder
    rows = []
    tau = policy.manifest.tau_usd
    for name, table, note in tables:
        reference = embeddings[(name, "torch")]
        has_metrics = tuple(table.models) == policy.manifest.models
        torch_decisions = {w: greedy(policy, reference, w) for w in QUALITY_WEIGHT_GRID}
        for backend in args.backends:
            if backend == "torch":
                continue
            vectors = embeddings[(name, backend)]
            cosine = (vectors * reference).sum(axis=1)
            agreement: dict[str, float] = {}
            deltas = {"score": 0.0, "reward": 0.0}  # largest |change| of the routing metric over the grid
            for w in QUALITY_WEIGHT_GRID:
                decisions = greedy(policy, vectors, w)
                agreement[f"{w:.1f}"] = float((decisions == torch_decisions[w]).mean())
                if has_metrics:
                    ours = metrics_for_actions(table, decisions, w, tau)
                    theirs = metrics_for_actions(table, torch_decisions[w], w, tau)
                    for key in deltas:
                        delta = abs(float(ours[key]) - float(theirs[key]))  # type: ignore[arg-type]
                        deltas[key] = max(deltas[key], delta)
            rows.append(
                AgreementRow(
                    name,
                    note,
                    backend,
                    len(table),
                    min(agreement.values()),
                    agreement,
                    float(cosine.mean()),
                    float(cosine.min()),
                    deltas["score"] if has_metrics else None,
                    deltas["reward"] if has_metrics else None,
                )
            )
    return rows


def agreement_table(rows: list[AgreementRow]) -> str:
    lines = [
        "| data | prompts | backend | min agreement over w_q (≥ 99.5%) | cosine mean / min | "
        "max Δscore | max Δreward |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        flag = "" if r.min_agreement >= AGREEMENT_TARGET else " (missed)"
        score = "—" if r.max_score_delta is None else f"{r.max_score_delta:.4f}"
        reward = "—" if r.max_reward_delta is None else f"{r.max_reward_delta:.4f}"
        lines.append(
            f"| {r.data} | {r.prompts} ({r.note}) | {r.backend} | {100 * r.min_agreement:.2f}%{flag} | "
            f"{r.cosine_mean:.4f} / {r.cosine_min:.4f} | {score} | {reward} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ speed


def synthetic_token_ids(tokens: int, count: int, seed: int) -> list[list[int]]:
    """Distinct word-piece id sequences of exactly ``tokens`` ids (unused by the speed of the graph)."""
    rng = random.Random(seed)
    return [[rng.randrange(2000, 29000) for _ in range(tokens)] for _ in range(count)]


@dataclass
class SpeedRow:
    backend: str
    tokens: int
    batch: int
    prompts_per_s: float
    batch_p50_ms: float
    rounds: list[float]


def run_speed(args: argparse.Namespace) -> list[SpeedRow]:
    policy = load_checkpoint(args.checkpoint)
    variants: dict[str, Encoder] = {}
    for backend in args.backends:
        variants[backend] = load_encoder_for(policy, backend, args.onnx_dir, args.threads)
    for model in args.encoder_models:
        settings = EncoderSettings(model=str(model), device="cpu")
        variants[f"torch:{model.name}"] = SentenceTransformerEncoder(settings).load()
    torch.set_num_threads(args.threads or torch.get_num_threads())
    results: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    seed = 0
    for _round in range(args.rounds):
        for tokens in args.tokens:
            for batch in args.batches:
                for name, encoder in variants.items():
                    seed += 1
                    ids = synthetic_token_ids(tokens, batch, seed)
                    encoder.encode_token_ids(ids)  # warm the shapes
                    timings = []
                    deadline = time.perf_counter() + args.seconds
                    while time.perf_counter() < deadline and len(timings) < 10_000:
                        started = time.perf_counter()
                        encoder.encode_token_ids(ids)
                        timings.append(time.perf_counter() - started)
                    rate = batch * len(timings) / sum(timings)
                    results.setdefault((name, tokens, batch), []).append(
                        (rate, statistics.median(timings) * 1000)
                    )
    rows = []
    for (name, tokens, batch), runs in results.items():
        rates = [r for r, _ in runs]
        rows.append(
            SpeedRow(
                name,
                tokens,
                batch,
                statistics.median(rates),
                statistics.median(p for _, p in runs),
                [round(r, 1) for r in rates],
            )
        )
    return rows


def speed_table(rows: list[SpeedRow]) -> str:
    reference = {(r.tokens, r.batch): r.prompts_per_s for r in rows if r.backend == "torch"}
    lines = [
        "| tokens | batch | backend | prompts/s (median of rounds) | × torch | batch p50 ms | rounds |",
        "|---:|---:|---|---:|---:|---:|---|",
    ]
    order = list(dict.fromkeys(r.backend for r in rows))  # backends, then --encoder-models
    for r in sorted(rows, key=lambda r: (r.tokens, r.batch, order.index(r.backend))):
        ratio = r.prompts_per_s / reference[(r.tokens, r.batch)] if (r.tokens, r.batch) in reference else 0
        lines.append(
            f"| {r.tokens} | {r.batch} | {r.backend} | {r.prompts_per_s:.1f} | {ratio:.2f} | "
            f"{r.batch_p50_ms:.1f} | {', '.join(map(str, r.rounds))} |"
        )
    return "\n".join(lines)


def run_threads(args: argparse.Namespace) -> list[dict[str, Any]]:
    """ONNX Runtime session settings for the int8 file: intra-op threads x spinning x memory arena,
    at batch 1 and 8 of 64 tokens, interleaved in rounds (each configuration its own session)."""
    import onnxruntime

    from barp_sidecar.policy.encoder import builtin_model_path
    from barp_sidecar.policy.onnx_export import ensure_onnx_model

    model = ensure_onnx_model(Path(builtin_model_path()), args.onnx_dir, "onnx-int8")
    configs = [
        (threads, spinning, arena)
        for threads in (1, 2)
        for spinning in (False, True)
        for arena in (True, False)
    ]
    sessions = {}
    for threads, spinning, arena in configs:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = arena
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        sessions[(threads, spinning, arena)] = onnxruntime.InferenceSession(
            str(model.path), options, providers=["CPUExecutionProvider"]
        )
    rates: dict[tuple[Any, ...], list[float]] = {}
    for _round in range(args.rounds):
        for batch in (1, 8):
            ids = np.asarray(synthetic_token_ids(64, batch, batch), dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            for key, session in sessions.items():
                session.run(None, feeds)
                count, started = 0, time.perf_counter()
                while time.perf_counter() - started < args.seconds and count < 10_000:
                    session.run(None, feeds)
                    count += 1
                rates.setdefault((*key, batch), []).append(batch * count / (time.perf_counter() - started))
    return [
        {"threads": t, "spinning": sp, "arena": ar, "batch": b, "prompts_per_s": statistics.median(v),
         "rounds": [round(x, 1) for x in v]}
        for (t, sp, ar, b), v in rates.items()
    ]  # fmt: skip


def threads_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| intra-op threads | spinning | arena | batch | prompts/s (64 tokens, int8) | rounds |",
        "|---:|---|---|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["batch"], r["threads"], r["spinning"], not r["arena"])):
        lines.append(
            f"| {r['threads']} | {r['spinning']} | {r['arena']} | {r['batch']} | {r['prompts_per_s']:.1f} | "
            f"{', '.join(map(str, r['rounds']))} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- int8 variants


def int8_variants(fp32: Path, scratch: Path, calibration: list[list[int]]) -> dict[str, Path]:
    """Quantised copies of the fused fp32 graph, none of them shipped (docs/benchmarks.md says why):
    dynamic int8 (per-channel weights, per-tensor activations) of the MatMuls (the FFN and attention
    output; the fused Attention's Q/K/V stay fp32); the same after SmoothQuant-style per-channel scales
    (α = 0.85, from ``calibration``) moved from the activations into the weights; ONNX Runtime's
    block-wise 8-bit MatMulNBits with int8 compute (accuracy level 4) at block 32 and 128."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    options = {"MatMulConstBOnly": True, "DefaultTensorType": TensorProto.FLOAT}
    out = {"dynamic-matmul": scratch / "dynamic-matmul.onnx"}
    quantize_dynamic(fp32, out["dynamic-matmul"], weight_type=QuantType.QInt8, per_channel=True,
                     op_types_to_quantize=["MatMul"], extra_options=options)  # fmt: skip
    for block in (32, 128):
        config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), algo_config=config)
        quantizer.process()
        out[f"nbits8-block{block}"] = scratch / f"nbits8-block{block}.onnx"
        quantizer.model.save_model_to_file(str(out[f"nbits8-block{block}"]), use_external_data_format=False)
    # SmoothQuant: x·W = (x / s)·(s·W) with s = max|x|^α / max|W|^(1-α) per input channel.
    model = onnx.load(str(fp32))
    weights = {i.name: i for i in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    probe = onnx.load(str(fp32))
    probe.graph.output.extend(
        helper.make_tensor_value_info(n.input[0], TensorProto.FLOAT, None) for n in matmuls
    )
    session = _session(probe.SerializeToString(), 2)
    peak: dict[str, np.ndarray] = {}
    for ids in calibration:
        feeds = _feeds([ids])
        for node, value in zip(matmuls, session.run([n.input[0] for n in matmuls], feeds), strict=True):
            current = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peak[node.input[0]] = np.maximum(peak.get(node.input[0], current), current)
    nodes = []
    for node in model.graph.node:
        if node in matmuls:
            weight = numpy_helper.to_array(weights[node.input[1]])
            scale = (np.maximum(peak[node.input[0]], 1e-5) ** 0.85
                     / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** 0.15).astype(np.float32)  # fmt: skip
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
            model.graph.initializer.append(numpy_helper.from_array(1 / scale, f"{node.name}_smooth"))
            nodes.append(helper.make_node("Mul", [node.input[0], f"{node.name}_smooth"], [f"{node.name}_in"]))
            node.input[0] = f"{node.name}_in"
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(scratch / "smooth-fp32.onnx"))
    out["smoothquant-dynamic"] = scratch / "smoothquant-dynamic.onnx"
    quantize_dynamic(scratch / "smooth-fp32.onnx", out["smoothquant-dynamic"], weight_type=QuantType.QInt8,
                     per_channel=True, op_types_to_quantize=["MatMul"], extra_options=options)  # fmt: skip
    return out


def _session(model: Path | bytes, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def _feeds(token_ids: list[list[int]]) -> dict[str, np.ndarray]:
    """[CLS] ids [SEP] rows of equal length (the variants mode never pads)."""
    input_ids = np.asarray([[101, *ids, 102] for ids in token_ids], dtype=np.int64)
    return {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}


def run_variants(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each int8 variant's cosine to the fp32 graph on real prompts, and prompts/s side by side in one
    run with the fp32 graph and torch (interleaved rounds)."""
    import logging
    import tempfile

    from barp_sidecar.policy.encoder import builtin_model_path
    from barp_sidecar.policy.onnx_export import ensure_onnx_model

    fp32 = ensure_onnx_model(Path(builtin_model_path()), args.onnx_dir, "onnx").path
    policy = load_checkpoint(args.checkpoint)
    reference = load_encoder_for(policy, "torch", args.onnx_dir, args.threads)
    prompts = prompts_only(args.data_root / "alpacaeval" / "alpacaeval.jsonl", 10_000, args.seed).prompts
    calibration = prompts_only(args.data_root / "routerdc7" / "routerdc7.jsonl", 128, args.seed).prompts
    measured = reference.token_ids(list(prompts[: args.variant_prompts]))
    logging.disable(logging.WARNING)  # the quantisers log every node
    try:
        with tempfile.TemporaryDirectory(dir=args.json.parent if args.json else None) as scratch:
            paths = {
                "fp32": fp32,
                **int8_variants(fp32, Path(scratch), reference.token_ids(list(calibration))),
            }
            sessions = {name: _session(path, args.threads) for name, path in paths.items()}
            embeddings = {
                name: np.concatenate([session.run(None, _feeds([ids]))[0] for ids in measured])
                for name, session in sessions.items()
            }
            rows = []
            for name in sessions:
                cosine = (embeddings[name] * embeddings["fp32"]).sum(axis=1) / np.linalg.norm(
                    embeddings[name], axis=1
                )
                rows.append({"variant": name, "one_minus_cosine_mean": float((1 - cosine).mean()),
                             "one_minus_cosine_max": float((1 - cosine).max())})  # fmt: skip
            runners: dict[str, Any] = {"torch": reference.encode_token_ids}
            runners.update({name: _runner(session) for name, session in sessions.items()})
            rates = _interleaved_rates(runners, args)
    finally:
        logging.disable(logging.NOTSET)
    for row in rows:
        row["prompts_per_s"] = {
            f"{t}x{b}": rates[(str(row["variant"]), t, b)] for t in args.tokens for b in args.batches
        }
    rows.append({"variant": "torch", "prompts_per_s": {
        f"{t}x{b}": rates[("torch", t, b)] for t in args.tokens for b in args.batches}})  # fmt: skip
    return rows


def _runner(session: Any) -> Any:
    return lambda ids: session.run(None, _feeds(ids))


def _interleaved_rates(
    runners: dict[str, Any], args: argparse.Namespace
) -> dict[tuple[str, int, int], float]:
    """Median prompts/s over ``args.rounds`` interleaved rounds per (runner, tokens, batch)."""
    rounds: dict[tuple[str, int, int], list[float]] = {}
    for round_index in range(args.rounds):
        for tokens in args.tokens:
            for batch in args.batches:
                ids = synthetic_token_ids(tokens, batch, round_index)
                for name, run in runners.items():
                    run(ids)
                    count, started = 0, time.perf_counter()
                    while time.perf_counter() - started < args.seconds and count < 10_000:
                        run(ids)
                        count += 1
                    rate = batch * count / (time.perf_counter() - started)
                    rounds.setdefault((name, tokens, batch), []).append(rate)
    return {key: statistics.median(values) for key, values in rounds.items()}


def variants_table(rows: list[dict[str, Any]]) -> str:
    shapes = list(rows[0]["prompts_per_s"])
    torch_rates = next(r for r in rows if r["variant"] == "torch")["prompts_per_s"]
    lines = [
        "| variant | 1 − cosine to fp32 mean / max | " + " | ".join(f"{s} ×torch" for s in shapes) + " |",
        "|---|---:|" + "---:|" * len(shapes),
    ]
    for r in rows:
        cosine = (f"{r['one_minus_cosine_mean']:.1e} / {r['one_minus_cosine_max']:.1e}"
                  if "one_minus_cosine_mean" in r else "—")  # fmt: skip
        speed = " | ".join(
            f"{r['prompts_per_s'][s]:.0f} ({r['prompts_per_s'][s] / torch_rates[s]:.2f})" for s in shapes
        )
        lines.append(f"| {r['variant']} | {cosine} | {speed} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("mode", choices=("agreement", "speed", "threads", "variants"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="policy dir (default: the shipped one)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--onnx-dir", type=Path, default=None, help="ONNX files (default: the user cache)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    agreement = parser.add_argument_group("agreement")
    agreement.add_argument(
        "--data", nargs="+", default=list(DEFAULT_SETS), help="paths or names under shared/data"
    )
    agreement.add_argument("--data-root", type=Path, default=DATA, help="default: ../shared/data")
    agreement.add_argument("--cache-dir", type=Path, default=REPO / ".cache" / "embeddings")
    agreement.add_argument("--max-prompts", type=int, default=1000)
    agreement.add_argument("--seed", type=int, default=0)
    speed = parser.add_argument_group("speed")
    speed.add_argument("--tokens", nargs="+", type=int, default=[16, 64, 256])
    speed.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    speed.add_argument("--rounds", type=int, default=3)
    speed.add_argument("--seconds", type=float, default=1.5, help="per backend, shape and round")
    speed.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = runtime default)")
    speed.add_argument(
        "--encoder-models", nargs="*", type=Path, default=[], help="speed: more model dirs (torch, fp32)"
    )
    speed.add_argument("--variant-prompts", type=int, default=300, help="variants: AlpacaEval prompts")
    args = parser.parse_args(argv)
    args.checkpoint = args.checkpoint or builtin_policy_dir()
    args.onnx_dir = args.onnx_dir or default_onnx_dir()
    if "torch" not in args.backends:
        args.backends = ["torch", *args.backends]  # everything is compared with torch
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output: dict[str, Any]
    if args.mode == "agreement":
        rows = run_agreement(args)
        print(agreement_table(rows))
        output = {"agreement": [row.__dict__ for row in rows]}
    elif args.mode == "variants":
        variant_rows = run_variants(args)
        print(variants_table(variant_rows))
        output = {"variants": variant_rows}
    elif args.mode == "threads":
        thread_rows = run_threads(args)
        print(threads_table(thread_rows))
        output = {"threads": thread_rows}
    else:
        speed_rows = run_speed(args)
        print(speed_table(speed_rows))
        output = {"speed": [row.__dict__ for row in speed_rows]}
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(output, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
