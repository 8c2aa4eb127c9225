#!/usr/bin/env bash
# On a machine with CUDA, in a few minutes: the Triton kernels against their references
# on the GPU, a bf16 training run with the kernels on, the GPU comparison with
# flash-linear-attention's kernel, titans.nl's training step compiled with CUDA graphs
# (whether they record, and the step against eager), and the fused training steps of
# hope, titans and gated_deltanet against their reference paths. Everything goes to one folder;
# SUMMARY.md says what ran, on which device, and what it measured (docs/benchmarks.md
# records it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu-check}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
summary="$OUT/SUMMARY.md"

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu-check: torch sees no CUDA device here; nothing was run" | tee "$summary"
    exit 1
fi
{
    echo "# gpu-check, $(date -u +%Y-%m-%dT%H:%MZ)"
    "$PY" -c 'import torch, triton; p = torch.cuda.get_device_properties(0); print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}")'
} > "$summary"

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, note how it ended
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "- $name: exit $rc after $((SECONDS - start)) s ($*): $(tail -n 1 "$OUT/$name.txt")" >> "$summary"
}

step kernels 240 env NLDSL_TEST_DEVICE=cuda TRITON_INTERPRET=0 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels.py
step train-bf16 240 "$PY" -m nldsl train gated_deltanet --device cuda --precision bf16 --steps 60 --eval-every 30 \
    --set dim=256 --set context=512 --quiet --out "$OUT/run-gated_deltanet"
step peers-gpu 240 "$PY" benchmarks/peers.py --only gpu --json "$OUT/peers-gpu.json"
step cuda-graphs 240 "$PY" benchmarks/compiled.py titans --device cuda --mode reduce-overhead --set context=64 \
    --repeats 5
step bench 240 "$PY" -m nldsl bench hope titans gated_deltanet --device cuda --no-memory --scaling-tokens '' \
    --repeats 5 --json "$OUT/bench.json"
cat "$summary"
