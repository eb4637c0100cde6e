#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md in one run, on a machine with JAX + CUDA (tested setup:
# JAX 0.11, optax, chex, orbax; dm-haiku and ml_collections from a wheel folder when missing;
# TensorFlow not needed: synthetic data only). From the repository root:
#
#   bash scripts/gpu_check.sh [OUT_DIR]        # default OUT_DIR: ./gpu_check
#
# Wheels: put dm-haiku, jmp and ml_collections wheels in ./.whl (see docs/benchmarks.md,
# "GPU check") if the machine lacks them; they are installed to a private --target folder.
# Produces, in OUT_DIR (JSON + the printed tables in log.txt):
#   1. F0 bfloat16 training img/s and MFU, 32 per device, pmap vs mesh (engine.json);
#   2. F0 float32 eval img/s (eval.json);
#   3. F7 per-device compiled memory, remat none vs blocks (f7_memory.json);
#   4. timm's dm_nfnet_f0 under torch on the same GPU, bf16 autocast (timm.json), if torch is there.
# GPU_CHECK_SMOKE=1 runs the same steps with a tiny model (a CPU check that the script works).
set -u -o pipefail
OUT=${1:-gpu_check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
if ! "$PY" -c "import haiku, ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/nfnets_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/nfnets_site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "dm-haiku / ml_collections missing and no wheels in ./.whl: see docs/benchmarks.md." >&2
    exit 1
  fi
fi
if [ "${GPU_CHECK_SMOKE:-0}" = 1 ]; then
  F0=(--model=nf_demo_tiny --image_size=28 --num_classes=10); F7=("${F0[@]}"); BATCH=4
  EVAL_BATCH=16; STEPS=2; TIMM_ARGS=(--smoke); REMATS=none
else
  F0=(--model=nfnet_f0); F7=(--model=nfnet_f7); BATCH=32; EVAL_BATCH=256; STEPS=20; TIMM_ARGS=()
  REMATS=none,blocks
fi
status=0
run() {  # name, command...: log it, keep going on failure (each part reports on its own)
  local name=$1; shift
  echo "== $name: $*" | tee -a "$OUT/log.txt"
  "$@" 2>&1 | grep -v -e oneDNN -e "^WARNING: All log" | tee -a "$OUT/log.txt" || status=1
}
run device "$PY" -c "import jax; print(jax.__version__, jax.devices())"
run engine "$PY" scripts/benchmark.py --mode=engine --engine_run "${F0[@]}" --precision=bfloat16 \
  --per_device_batch=$BATCH --engine_layouts=pmap,mesh:1 --engine_remat=none --steps=$STEPS \
  --json="$OUT/engine.json"
run eval "$PY" scripts/benchmark.py --mode=eval "${F0[@]}" --batch=$EVAL_BATCH --steps=$STEPS \
  --no_peak --json="$OUT/eval.json"
run f7_memory "$PY" scripts/benchmark.py --mode=engine "${F7[@]}" --precision=bfloat16 \
  --per_device_batch=$BATCH --engine_layouts=mesh:1 --engine_remat=$REMATS \
  --json="$OUT/f7_memory.json"
if "$PY" -c "import torch, timm" 2>/dev/null; then
  run timm "$PY" scripts/gpu_check_timm.py --batch=$BATCH --eval_batch=$EVAL_BATCH \
    --steps=$STEPS --json="$OUT/timm.json" "${TIMM_ARGS[@]}"
else
  echo "== timm: torch or timm missing, skipped" | tee -a "$OUT/log.txt"
fi
exit $status
