#!/usr/bin/env bash
# Calibrate this GPU and validate the simulator against it, in one bounded run (the command that
# produced calibration/h200-sxm.json). Usage, from the repository root on the GPU machine:
#
#   OUT=/tmp/out GPU=h200-sxm BUDGET_S=230 bash calibration/run_on_gpu.sh
#
# Writes $OUT/$GPU.json (the profile; with the budget spent, also $OUT/$GPU.json.partial.json for
# `moesim calibrate --resume`), $OUT/validate.tgz (one validate-<model>/ folder per model) and
# $OUT/log.txt. Where moesim's dependencies are not installed, wheels in .whl/ are installed into
# /tmp/site first (a machine without a package index).
set -u
OUT=${OUT:-/tmp/moesim-gpu}
GPU=${GPU:-h200-sxm}
BUDGET_S=${BUDGET_S:-1800}
mkdir -p "$OUT" /tmp/val
export PYTHONUNBUFFERED=1
if ! python3 -c "import simpy, pulp, pydantic, plotly" 2>/dev/null && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
moesim() { python3 -c "import sys; sys.argv[0] = 'moesim'; from moesim.cli import main; sys.exit(main())" "$@"; }
log() { echo "== $(date -u +%T) $*" | tee -a "$OUT/log.txt"; }

log "gpu: $(nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem --format=csv,noheader)"
log "torch: $(python3 -c 'import torch; print(torch.__version__, torch.version.cuda)')"
log calibrate
moesim calibrate --out "$OUT/$GPU.json" --budget-s "$BUDGET_S" 2>&1 | tee -a "$OUT/log.txt"
# model|extra validate options|time limit (s), space-separated
MODELS=${MODELS:-"olmoe-1b-7b||100 qwen3-30b-a3b|--layers=12|80 deepseek-v3|--layers=4_--quick|70 mixtral-8x7b|--layers=8_--quick|55"}
for spec in $MODELS; do
  IFS='|' read -r model opts limit <<<"$spec"
  opts=${opts//_/ }
  log "validate $model $opts"
  # shellcheck disable=SC2086
  timeout "$limit" bash -c "$(declare -f moesim); moesim validate --profile '$OUT/$GPU.json' --model $model $opts \
    -o /tmp/val/validate-$model" 2>&1 | tee -a "$OUT/log.txt"
done
tar czf "$OUT/validate.tgz" -C /tmp/val . && log done
