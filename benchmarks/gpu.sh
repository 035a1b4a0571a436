#!/usr/bin/env bash
# Every benchmark on one GPU in under 8 minutes, into one JSON (benchmarks/suite.py): hvae_jax against the PyTorch
# reference and its optimised variant (Mult-VAE, ML-20M and ML-1M shapes, batch 500 and 24,576, train and eval,
# float32 matmuls on both sides, dense and executed-FLOP rooflines); the hierarchical models (hvae, hvae-vamp with
# K=1000 pseudo-inputs, Kim & Suh's H+Vamp, RecVAE's two phases) and the VampPrior pass's share of a step; Mult-VAE
# end to end with its per-phase breakdown; the scaling curves (catalogue 1k-3M items, batch, levels, ensemble members);
# the 1,000,000-item catalogue at Liang's widths. Installs nothing: it needs the project's environment (jax with
# CUDA, torch with CUDA, matplotlib) already present.
#
#   bash benchmarks/gpu.sh [RESULTS_DIR] [extra benchmarks.suite flags...]
#   bash benchmarks/gpu.sh /tmp/out --quick             # small sizes on CPU: a smoke test of the whole script
#
# Results: RESULTS_DIR/suite-<gpu-name>-<date>.json, its markdown digest (.md) and the throughput chart (.png);
# RESULTS_DIR defaults to benchmarks/results.
set -euo pipefail
cd "$(dirname "$0")/.."

results_dir="${1:-benchmarks/results}"
shift || true
mkdir -p "$results_dir"
python="${PYTHON:-python3}"

# The suite divides this budget between its parts and stops each at its share; a hard ceiling above it keeps the
# whole script inside its 8-minute slot. Every part writes its JSON as it goes, so what finished is kept.
budget_seconds="${BENCH_BUDGET_SECONDS:-420}"
device_kind=gpu
for argument in "$@"; do
  if [[ "$argument" == "--quick" ]]; then device_kind=cpu; fi
done
if [[ "$device_kind" == gpu ]]; then
  "$python" - <<'PY'
import sys
import jax, torch
if jax.devices()[0].platform != "gpu" or not torch.cuda.is_available():
    sys.exit(f"gpu.sh needs a GPU for both frameworks: jax sees {jax.devices()}, torch.cuda {torch.cuda.is_available()}"
             " (bash benchmarks/gpu.sh DIR --quick runs the small CPU version)")
PY
fi

device_name="$("$python" -c "from benchmarks.throughput import default_device_name; print(default_device_name('$device_kind'))")"
out="$results_dir/suite-$device_name-$(date +%Y-%m-%d)$([[ " $* " == *" --quick "* ]] && echo -quick || true).json"

status=0
timeout --signal=INT --kill-after=20 "$((budget_seconds + 40))" \
  "$python" -m benchmarks.suite --device-kind "$device_kind" --budget-seconds "$budget_seconds" --out "$out" "$@" \
  > "${out%.json}.md" || status=$?
if [[ $status -ne 0 ]]; then
  echo "benchmarks.suite ended with status $status (124/130: hit the ceiling); reporting what finished" >&2
fi
if [[ ! -f "$out" ]]; then
  echo "no results in $out" >&2
  exit 1
fi
"$python" - "$out" <<'PY'
import json, pathlib, sys
from benchmarks import report
path = pathlib.Path(sys.argv[1])
suite = json.loads(path.read_text())
throughput = suite["parts"].get("throughput")
if throughput and throughput.get("runs"):
    report.plot(throughput, path.with_suffix(".png"))
print(f"results: {path} (+ .md, .png); parts: " + ", ".join(
    f"{part} {status.get('returncode')}" for part, status in suite["part_status"].items()), file=sys.stderr)
PY
