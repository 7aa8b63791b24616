#!/usr/bin/env bash
# Issue 5's measurements in one prepared run on a GPU machine (results under $OUT):
#   bash ../shared/gpu/fetch-wheels.sh              # here, once: MLflow + captum wheels into .whl/
#   run: bash benchmarks/gpu_check.sh              # there, with carry [".whl"]; about 10 minutes
# Knobs (environment): SIZE (256), IMAGES (30000), EPOCHS (3), BENCH (extra bench options),
# SKIP (space-separated parts to skip: tests bench folder train sweep).
set -u
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
SIZE=${SIZE:-256}; IMAGES=${IMAGES:-30000}; EPOCHS=${EPOCHS:-3}; SKIP=${SKIP:-}
BENCH=${BENCH:---norms torch_bn,bn,bin,gn --batch-sizes 32 --steps 30 --warmup 10 --share 1,3}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db" RESNORM_HOME="$OUT/home" MLFLOW_DISABLE_TELEMETRY=true
log() { echo "== $* ($(date +%T))" | tee -a "$OUT/summary.txt"; }
want() { case " $SKIP " in *" $1 "*) return 1;; esac; }
log "$(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")')"
if want tests; then
  log "gpu tests"
  if python3 -c 'import pytest' 2>/dev/null; then
    timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_fast_gpu.py > "$OUT/tests.txt" 2>&1
    tail -3 "$OUT/tests.txt" | tee -a "$OUT/summary.txt"
  else
    echo "pytest is not installed here: add its wheels to .whl" | tee -a "$OUT/summary.txt"
  fi
fi
if want bench; then
  log "bench $BENCH"
  # shellcheck disable=SC2086
  timeout 330 python3 entrypoints/bench.py --image-size "$SIZE" $BENCH > "$OUT/bench.txt" 2>&1
  grep -v '^W[0-9]' "$OUT/bench.txt" | tail -25 | tee -a "$OUT/summary.txt"
fi
if want folder; then
  log "folder of $IMAGES JPEGs"
  python3 benchmarks/make_folder.py --out /tmp/folder --images "$IMAGES" --size $((SIZE * 117 / 100)) | tee -a "$OUT/summary.txt"
fi
if want train; then
  for pass in cold warm; do  # warm: the decoded images and the compiled graphs come from their caches
    log "train bn, $EPOCHS epochs, $pass"
    start=$(date +%s.%N)
    timeout 240 python3 entrypoints/train.py --norm bn --data /tmp/folder --image-size "$SIZE" --epochs "$EPOCHS" \
      > "$OUT/train-$pass.txt" 2>&1
    echo "rc $? in $(echo "$(date +%s.%N) - $start" | bc) s" | tee -a "$OUT/summary.txt"
    grep -E '^fast|^epoch|^run ' "$OUT/train-$pass.txt" | tail -8 | tee -a "$OUT/summary.txt"
  done
  python3 - <<'PY' | tee -a "$OUT/summary.txt"
import mlflow
runs = mlflow.search_runs(experiment_names=["resnorm"], order_by=["start_time"])
cols = [c for c in runs.columns if c.split(".")[-1] in (
    "compile_seconds", "overhead_seconds", "best_test_accuracy", "images_per_second", "epoch_seconds")]
runs["wall_s"] = (runs["end_time"] - runs["start_time"]).dt.total_seconds()
print(runs[["tags.resnorm.speed", "wall_s", *cols]].to_string())
PY
fi
if want sweep; then  # the local pool forks its workers from a server that never touched CUDA: each must reach the GPU
  log "local sweep on CUDA: bn and gn, two forked workers sharing the GPU"
  timeout 300 python3 entrypoints/sweep.py --preset custom --grid norm=bn,gn --epochs 1 --image-size 32 \
    --device cuda --parallel 2 > "$OUT/sweep.txt" 2>&1
  echo "rc $?" | tee -a "$OUT/summary.txt"
  grep -E '^\[|^error|^fast' "$OUT/sweep.txt" | tail -8 | tee -a "$OUT/summary.txt"
fi
log done
