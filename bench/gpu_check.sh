#!/usr/bin/env bash
# GPU check (issue 16, item 5): on a CUDA machine, in under 8 minutes and without preparation,
#   1. the suite's CUDA tests (tests whose name mentions cuda; they skip on CPU-only machines),
#   2. the route benchmark with the CUDA image settings: device auto (= CUDA, float16), encoder.backend
#      auto (= torch on CUDA), batches up to 256 prompts, 64-token prompts, 512 callers from 8 client
#      processes (one Python client cannot drive more than a few thousand calls/s),
# and prints one table. Target on one modern datacenter GPU: >= 10,000 routes/s at 64 tokens, p99 <= 50 ms.
#
#   bash bench/gpu_check.sh            # from the repository root; PYTHON=... picks the interpreter
#
# Exits 2 with one line when torch sees no CUDA device, 1 when a step fails. Writes out/gpu_check/.
set -euo pipefail

PYTHON="${PYTHON:-python}"
OUT_DIR="${OUT_DIR:-out/gpu_check}"
cd "$(dirname "$0")/.."

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device: torch.cuda.is_available() is False for $PYTHON (needs a GPU and a CUDA build of torch)" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1

gpu="$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name(0))")"
echo "gpu_check: $gpu" >&2

# 1. CUDA tests (~1 min).
set +e
timeout 240 "$PYTHON" -m pytest -q -p no:cacheprovider -k cuda -rA tests/ >"$OUT_DIR/cuda_tests.log" 2>&1
tests_rc=$?
set -e
tests_line="$(tail -n 1 "$OUT_DIR/cuda_tests.log")"

# 2. Route benchmark, CUDA settings (~4 min: 2 rounds x (ceiling + sidecar + 1-client latency)).
set +e
timeout 330 "$PYTHON" -m bench.route_load --prompt-tokens 64 --concurrency 512 --client-processes 8 \
    --max-batch-size 256 --max-batch-tokens 65536 --max-wait-ms 2 --ceiling-batch-sizes 64 128 256 \
    --encoder-backend auto --skip-unbatched --duration-s 10 --rounds 2 --threads 4 \
    --json "$OUT_DIR/route_load.json" >"$OUT_DIR/route_load.md" 2>"$OUT_DIR/route_load.log"
bench_rc=$?
set -e

"$PYTHON" - "$OUT_DIR/route_load.json" "$gpu" "$tests_rc" "$tests_line" "$bench_rc" <<'EOF'
import json, sys
path, gpu, tests_rc, tests_line, bench_rc = sys.argv[1:]
print(f"## GPU check: {gpu}\n")
print("| check | result | target |")
print("|---|---|---|")
print(f"| CUDA tests | {'passed' if tests_rc == '0' else 'FAILED'}: {tests_line} | all pass |")
if bench_rc != "0":
    print(f"| route benchmark | FAILED (exit {bench_rc}, see route_load.log) | |")
    sys.exit(1)
results = json.load(open(path))["results"]
for r in results:
    if r["name"] == "sidecar" and r["concurrency"] > 1:
        ok = r["throughput_rps"] >= 10000 and r["p99_ms"] <= 50
        print(f"| sidecar, {r['prompt_tokens']} tokens, {r['concurrency']} callers | "
              f"{r['throughput_rps']:.0f} routes/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
              f"mean batch {r['mean_batch_size']:.0f} | >= 10,000/s, p99 <= 50 ms: {'met' if ok else 'missed'} |")
    elif r["name"] == "sidecar":
        print(f"| sidecar, {r['prompt_tokens']} tokens, 1 caller | p50 {r['p50_ms']:.2f} ms | |")
    elif r["name"] == "ceiling" and r["concurrency"] > 1:
        print(f"| in-process ceiling, {r['prompt_tokens']} tokens | {r['throughput_rps']:.0f} prompts/s "
              f"(batch {r['mean_batch_size']:.0f}) | |")
sys.exit(0 if tests_rc == "0" else 1)
EOF
