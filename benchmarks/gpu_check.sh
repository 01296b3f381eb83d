#!/bin/bash
# GPU node check, unattended, under 8 minutes on one GPU (most of it the GPU set's download):
#   1. installs the GPU set (make install-gpu: requirements-gpu.txt, then pip check);
#   2. runs the tests marked `gpu` (vLLM environment, two vLLM engines one after the other);
#   3. predicts the demo test set on the embedded SmolLM2-135M with the hf and the vllm backend and
#      prints the vLLM/HF throughput ratio;
#   4. trains 5 steps of the demo's SFT recipe in bf16 with DeepSpeed ZeRO-3 (ds_z3_config.json) on the GPU.
# Every step runs even when an earlier one failed; the numbers go to <out>/gpu_check.json (and the logs
# beside it); the exit status is 1 when any step failed.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (default runs/gpu_check; works from any directory)
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 2
out=${1:-runs/gpu_check}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export DISABLE_VERSION_CHECK=1  # LLaMA-Factory 0.9.5 refuses vllm > 0.11.0 (docs/inference.md)
python=${VIRTUAL_ENV:-$repo/.venv}/bin/python
data=data/prepared/smollm2-135m
model=models/smollm2-135m-instruct
failed=()
declare -A seconds

run_step() {  # run_step NAME LOG COMMAND...: times a step, keeps its output in LOG, records a failure
  local name=$1 log=$2 start=$SECONDS
  shift 2
  echo "== $name ($(date +%T)); log: $log"
  if ! "$@" >"$log" 2>&1; then
    failed+=("$name")
    echo "   FAILED: $name (last lines of $log):"
    tail -n 15 "$log" | sed 's/^/   /'
  fi
  seconds[$name]=$((SECONDS - start))
  echo "   ${seconds[$name]} s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
run_step install "$out/install.log" make install-gpu
run_step model "$out/model.log" "$python" -m coretech prepare model --out "$model"
run_step data "$out/data.log" "$python" -m coretech prepare sft --config configs/smollm2-135m/prepare_sft.yaml --out "$data"
run_step tests "$out/pytest_gpu.log" "$python" -m pytest -m gpu -q -rs -p no:cacheprovider tests
tail -n 3 "$out/pytest_gpu.log"

for backend in hf vllm; do
  rm -f "$out/predictions_$backend.jsonl"
  run_step "predict_$backend" "$out/predict_$backend.log" "$python" -m coretech predict --model "$model" \
    --dataset coretech_sft_test --dataset-dir "$data" --recipe configs/smollm2-135m/predict.yaml \
    --backend "$backend" --out "$out/predictions_$backend.jsonl"
done

rm -rf "$out/train"
run_step train_zero3_bf16 "$out/train.log" "$python" -m coretech train configs/smollm2-135m/sft_stage1.yaml \
  "model_name_or_path=$model" "dataset_dir=$data" "output_dir=$out/train" bf16=true max_steps=5 \
  deepspeed=configs/deepspeed/ds_z3_config.json overwrite_output_dir=true --nproc-per-node 1

steps_json=$(for name in "${!seconds[@]}"; do printf '%s=%s\n' "$name" "${seconds[$name]}"; done)
STEPS="$steps_json" FAILED="${failed[*]:-}" OUT="$out" "$python" - <<'PY'
"""Collect the numbers of this check into gpu_check.json and print the ratio."""
import json
import os
import re
from pathlib import Path

out = Path(os.environ["OUT"])
result = {
    "gpu": (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else None,
    "step_seconds": dict(line.split("=") for line in os.environ["STEPS"].split()),
    "failed_steps": os.environ["FAILED"].split(),
}
pytest_log = (out / "pytest_gpu.log").read_text() if (out / "pytest_gpu.log").exists() else ""
summary = re.findall(r"^=*\s*(\d+ (?:passed|failed|skipped).*?)\s*=*$", pytest_log, re.M)
result["gpu_tests"] = summary[-1] if summary else None
for backend in ("hf", "vllm"):
    log = out / f"predict_{backend}.log"
    found = re.findall(r"(\d+) written.*?\((\w+), ([\d.]+) items/s\)", log.read_text() if log.exists() else "")
    result[f"{backend}_items_per_second"] = float(found[-1][2]) if found else None
    result[f"{backend}_items"] = int(found[-1][0]) if found else None
hf, vllm = result["hf_items_per_second"], result["vllm_items_per_second"]
result["vllm_over_hf"] = round(vllm / hf, 2) if hf and vllm else None
train = out / "train" / "train_results.json"
if train.exists():
    numbers = json.loads(train.read_text())
    result["train"] = {k: numbers.get(k) for k in ("train_runtime", "train_loss", "train_samples_per_second")}
(out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
print(f"vLLM/HF throughput ratio: {result['vllm_over_hf']}")
PY
if ((${#failed[@]})); then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed; numbers in $out/gpu_check.json"
