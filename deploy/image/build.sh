#!/usr/bin/env bash
# Build splitasr's serving tree under PREFIX: PREFIX/venv (splitasr + ray + onnxruntime, no torch)
# and PREFIX/models (the int8 ONNX stages of each model, built ahead of time, without torch).
#
#   deploy/image/build.sh SRC PREFIX
#
# Used by deploy/image/Dockerfile for all of its work, and runnable anywhere else (tests/test_k8s.py
# runs it in a temporary directory). Environment:
#   FLAVOUR      cpu (onnxruntime, default) | gpu (onnxruntime-gpu with pip's CUDA/cuDNN libraries)
#   MODELS       models to export (default "tiny.en base")
#   RAY_SPEC     Ray of the image (default ray[default]==2.60.0: rayVersion of the deploy/k8s RayCluster;
#                "default" brings the dashboard agent whose health endpoint KubeRay probes, and the
#                autoscaler's dependencies)
#   ORT_GPU_SPEC onnxruntime-gpu requirement (default onnxruntime-gpu[cuda,cudnn]>=1.18)
#   PYTHON       interpreter for both venvs (default python3)
#
# No torch anywhere: the stages are built from the weights with onnx (models/graphs.py); the smoke
# checks below prove the serving venv holds no torch.
set -euo pipefail

if [ $# -ne 2 ]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
started=$(date +%s)
SRC=$(cd "$1" && pwd)
mkdir -p "$2"
PREFIX=$(cd "$2" && pwd)
FLAVOUR=${FLAVOUR:-cpu}
MODELS=${MODELS:-tiny.en base}
RAY_SPEC=${RAY_SPEC:-ray[default]==2.60.0}
ORT_GPU_SPEC=${ORT_GPU_SPEC:-onnxruntime-gpu[cuda,cudnn]>=1.18}
PYTHON=${PYTHON:-python3}
case "$FLAVOUR" in
  cpu | gpu) ;;
  *) echo "build.sh: FLAVOUR must be cpu or gpu, got '$FLAVOUR'" >&2; exit 2 ;;
esac

say() { echo "build.sh: $*" >&2; }
PIP=(-m pip --quiet --disable-pip-version-check)
VENV="$PREFIX/venv"
work=$(mktemp -d "${TMPDIR:-/tmp}/splitasr-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/tmp"
export TMPDIR="$work/tmp"  # scratch files go with the build

# 1. A clean copy of the source: building a wheel writes build/ and *.egg-info into the tree.
say "source $SRC (flavour $FLAVOUR, models: $MODELS)"
mkdir "$work/src"
tar -C "$SRC" --exclude=.git --exclude='.venv*' --exclude='.cache*' --exclude=build --exclude=dist \
  --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache \
  --exclude=samples --exclude=benchmarks -cf - . | tar -C "$work/src" -xf -

# 2. The serving venv: splitasr (non-editable, from its wheel) with the multilingual and ray extras.
say "serving venv $VENV"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" "${PIP[@]}" wheel --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/splitasr-*.whl)
"$VENV/bin/python" "${PIP[@]}" install "${wheel}[multilingual,ray]" "$RAY_SPEC"

# 3. Build the int8 stages of each model into PREFIX/models with the serving venv itself: the
#    stages are built from the weights without torch (models/graphs.py).
mkdir -p "$PREFIX/models"
for model in $MODELS; do
  say "building the stages of $model"
  SPLITASR_CACHE="$PREFIX/models" "$VENV/bin/python" -c \
    "from splitasr.models.stages import ensure_stages; ensure_stages('$model', int8=True, show_progress=False)"
done
find "$PREFIX/models" -name '*.lock' -delete

# 4. GPU: onnxruntime-gpu instead of onnxruntime (same module; uninstall first, they share files).
if [ "$FLAVOUR" = gpu ]; then
  say "swapping onnxruntime for $ORT_GPU_SPEC"
  "$VENV/bin/python" "${PIP[@]}" uninstall -y onnxruntime
  "$VENV/bin/python" "${PIP[@]}" install "$ORT_GPU_SPEC"
fi

# 5. Smoke checks of the serving venv.
say "smoke checks"
"$VENV/bin/splitasr" --help >/dev/null
if "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  say "FAILED: torch is importable in the serving venv"
  exit 1
fi
SPLITASR_CACHE="$PREFIX/models" FLAVOUR="$FLAVOUR" MODELS="$MODELS" "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import os

import onnxruntime as ort
import ray.dashboard.optional_deps  # noqa: F401  ray[default]: the dashboard agent KubeRay's probes ask

from splitasr.models.stages import ensure_stages

for model in os.environ["MODELS"].split():
    # the stages are in the cache, so this reads them
    artifacts = ensure_stages(model, int8=True, show_progress=False)
    missing = [s for s in artifacts.manifest["stages"] if not artifacts.stage_path(s, int8=True).is_file()]
    assert not missing, f"{model}: int8 stages missing: {missing}"
    print(f"build.sh: {model} stages in {artifacts.directory}", flush=True)
providers = ort.get_available_providers()
if os.environ["FLAVOUR"] == "gpu":
    assert "CUDAExecutionProvider" in providers, f"onnxruntime-gpu has no CUDA provider: {providers}"
dists = {d.metadata["Name"].lower() for d in md.distributions()}
assert "torch" not in dists, "torch is installed in the serving venv"
print(f"build.sh: serving venv: ray {md.version('ray')}, onnxruntime providers {providers}", flush=True)
EOF

# 6. Scratch files go with $work (trap).
say "done in $(($(date +%s) - started)) s: $(du -sh "$VENV" | cut -f1) venv, $(du -sh "$PREFIX/models" | cut -f1) models"
