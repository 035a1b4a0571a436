#!/usr/bin/env bash
# The GPU throughput suite on one GPU, in under 8 minutes: hvae_jax vs the PyTorch reference and its optimised variant,
# Mult-VAE on ML-20M- and ML-1M-shaped synthetic data at batch 500 and 24,576, training and evaluation, float32
# matmuls on both sides; then the markdown table and chart. Installs nothing: it needs the project's environment
# (jax with CUDA, torch with CUDA, matplotlib) already present.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR] [extra benchmarks.throughput flags...]
#   bash benchmarks/gpu.sh /tmp/out --quick --device-kind cpu     # smoke-test the script on a CPU machine
#
# Then the 1,000,000-item catalogue on the one GPU (benchmarks/huge_catalogue.py, Mult-VAE [I-600-200-600-I]).
#
# Results: RESULTS_DIR/<gpu-name>-<date>.json (+ .md, .png) and RESULTS_DIR/huge-catalogue-<gpu-name>-<date>.json;
# RESULTS_DIR defaults to benchmarks/results.
set -euo pipefail
cd "$(dirname "$0")/.."

results_dir="${1:-benchmarks/results}"
shift || true
mkdir -p "$results_dir"
python="${PYTHON:-python3}"

# A hard ceiling keeps the whole script inside its 8-minute slot; the benchmark rewrites its JSON after every
# configuration, so whatever finished before the ceiling is kept and reported.
budget_seconds="${BENCH_BUDGET_SECONDS:-360}"
huge_seconds="${HUGE_BUDGET_SECONDS:-90}"
huge_items="${HUGE_ITEMS:-1000000}"
device_kind=gpu
for argument in "$@"; do
  if [[ "$argument" == "cpu" ]]; then device_kind=cpu; fi
done
if [[ "$device_kind" == gpu ]]; then
  "$python" - <<'PY'
import sys
import jax, torch
if jax.devices()[0].platform != "gpu" or not torch.cuda.is_available():
    sys.exit(f"gpu.sh needs a GPU for both frameworks: jax sees {jax.devices()}, torch.cuda {torch.cuda.is_available()}")
PY
fi

date_stamp="$(date +%Y-%m-%d)"
kind_flag="$device_kind"
device_name="$("$python" -c "from benchmarks.throughput import default_device_name; print(default_device_name('$kind_flag'))")"
out="$results_dir/$device_name-$date_stamp.json"
log="$results_dir/$device_name-$date_stamp.log"

status=0
timeout --signal=INT --kill-after=20 "$budget_seconds" \
  "$python" -m benchmarks.throughput --device-kind gpu --out "$out" \
    --shapes ml-20m,ml-1m --batch-sizes 500,24576 --phases train,eval --precision float32 \
    --worker-timeout 240 "$@" > /dev/null 2> >(tee "$log" >&2) || status=$?
if [[ $status -ne 0 ]]; then
  echo "benchmarks.throughput ended with status $status (124/130: hit the ${budget_seconds}s ceiling); reporting what finished" >&2
fi
if [[ ! -f "$out" ]]; then
  echo "no results in $out" >&2
  exit 1
fi
"$python" -m benchmarks.report "$out" --print
echo "results: $out (+ .md, .png, .log)" >&2

huge_out="$results_dir/huge-catalogue-$device_name-$date_stamp.json"
timeout --signal=INT --kill-after=10 "$huge_seconds" \
  "$python" -m benchmarks.huge_catalogue --devices 1 --items "$huge_items" --hidden 600 --latent 200 \
    --out "$huge_out" > /dev/null 2>> "$log" || echo "huge_catalogue ended with status $? (see $log)" >&2
[[ -f "$huge_out" ]] && echo "huge catalogue: $huge_out" >&2
