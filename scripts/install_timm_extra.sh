#!/usr/bin/env bash
# Installs the optional "timm" test extra (real timm on a CPU torch) into a virtualenv.
#
#   bash scripts/install_timm_extra.sh VENV_PYTHON     e.g. .venv/bin/python
#
# Idempotent and quiet; returns at once when timm already imports. What it does:
#   1. pip installs torch==2.13.0+cpu (a CPU wheel served from this machine's wheel folder /
#      the registry), torchvision==0.28.0, timm and safetensors;
#   2. empties torchvision's _meta_registrations.py: the registry's torchvision 0.28.0 is built
#      for the CUDA torch, and on the CPU torch registering fake kernels for its C operators
#      fails ("operator torchvision::nms does not exist"), which breaks `import timm`.
#      NFNets use none of those operators.
# The library never needs torch; only the timm interop tests (tests/weights/test_timm.py,
# tests/test_pretrained.py, ...) and scripts/check_timm_parity.py use timm: the tests are skipped
# with the reason (pytest -rs, see pytest.ini; `make test` prints a banner), the script fails.
set -euo pipefail

PY="${1:-}"
if [[ -z "$PY" || ! -x "$PY" ]]; then
  echo "usage: $0 VENV_PYTHON (an executable python of the virtualenv to install into)" >&2
  exit 2
fi

timm_ok() {
  "$PY" - <<'PYEOF' >/dev/null 2>&1
import safetensors.numpy  # noqa: F401
import timm  # noqa: F401
import torch
assert torch.__version__.startswith("2.13.0")
PYEOF
}

if timm_ok; then
  exit 0
fi

LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
if ! "$PY" -m pip install --quiet --disable-pip-version-check \
    "torch==2.13.0+cpu" "torchvision==0.28.0" timm safetensors >"$LOG" 2>&1; then
  cat "$LOG" >&2
  echo "install_timm_extra: pip install failed (output above)." >&2
  exit 1
fi

# Empty torchvision's fake-kernel registrations (see above). Located without importing
# torchvision, which is what fails.
META="$("$PY" - <<'PYEOF'
import importlib.util, os
spec = importlib.util.find_spec("torchvision")
print(os.path.join(os.path.dirname(spec.origin), "_meta_registrations.py"))
PYEOF
)"
if [[ -f "$META" && -s "$META" ]]; then
  : > "$META"
fi

if ! timm_ok; then
  echo "install_timm_extra: timm still fails to import after installing; run" \
       "'$PY -c \"import timm\"' to see why." >&2
  exit 1
fi
