#!/usr/bin/env bash
# Build splitasr's serving tree under PREFIX: PREFIX/venv (splitasr + ray + onnxruntime, no torch)
# and PREFIX/models (the int8 ONNX stages of each model, exported ahead of time).
#
#   deploy/image/build.sh SRC PREFIX
#
# Used by deploy/image/Dockerfile for all of its work, and runnable anywhere else (tests/test_k8s.py
# runs it in a temporary directory). Environment:
#   FLAVOUR      cpu (onnxruntime, default) | gpu (onnxruntime-gpu with pip's CUDA/cuDNN libraries)
#   MODELS       models to export (default "tiny.en base")
#   TORCH_SPEC   torch for the export (default torch==2.13.0)
#   TORCH_INDEX  pip index flags for torch (default none; elsewhere than this project's machines
#                use TORCH_INDEX='--index-url https://download.pytorch.org/whl/cpu' for the CPU build)
#   RAY_SPEC     Ray of the image (default ray[default]==2.60.0: rayVersion of the deploy/k8s RayCluster;
#                "default" brings the dashboard agent whose health endpoint KubeRay probes, and the
#                autoscaler's dependencies)
#   ORT_GPU_SPEC onnxruntime-gpu requirement (default onnxruntime-gpu[cuda,cudnn]>=1.18)
#   PYTHON       interpreter for both venvs (default python3)
#
# torch is only needed to export the ONNX stages. It goes into a throwaway build venv layered on
# the serving venv (a .pth file puts the serving venv's site-packages on its path, so nothing is
# installed twice; pip never changes packages outside its own venv). The build venv is removed at
# the end; the serving venv never holds torch, which the smoke checks below prove.
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
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCH_INDEX=${TORCH_INDEX:-}
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
export TMPDIR="$work/tmp"  # torch's compile cache and other scratch files go with the build

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

# 3. The build venv: the serving venv plus torch and the export extra.
say "build venv (torch: $TORCH_SPEC ${TORCH_INDEX:+$TORCH_INDEX})"
"$PYTHON" -m venv "$work/build-venv"
serving_site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
build_site=$("$work/build-venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$serving_site" >"$build_site/_splitasr_serving.pth"
# shellcheck disable=SC2086  # TORCH_INDEX is a list of pip flags
"$work/build-venv/bin/python" "${PIP[@]}" install $TORCH_INDEX "$TORCH_SPEC"
"$work/build-venv/bin/python" "${PIP[@]}" install "${wheel}[export]"

# 4. Export the int8 stages of each model into PREFIX/models.
mkdir -p "$PREFIX/models"
for model in $MODELS; do
  say "exporting $model"
  SPLITASR_CACHE="$PREFIX/models" "$work/build-venv/bin/python" -c \
    "from splitasr.models.stages import ensure_stages; ensure_stages('$model', int8=True, show_progress=False)"
done
find "$PREFIX/models" -name '*.lock' -delete

# 5. GPU: onnxruntime-gpu instead of onnxruntime (same module; uninstall first, they share files).
if [ "$FLAVOUR" = gpu ]; then
  say "swapping onnxruntime for $ORT_GPU_SPEC"
  "$VENV/bin/python" "${PIP[@]}" uninstall -y onnxruntime
  "$VENV/bin/python" "${PIP[@]}" install "$ORT_GPU_SPEC"
fi

# 6. Smoke checks of the serving venv.
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
    # the stages are in the cache, so this reads them: an export here would need torch and fail
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

# 7. The build venv goes with $work (trap).
say "done in $(($(date +%s) - started)) s: $(du -sh "$VENV" | cut -f1) venv, $(du -sh "$PREFIX/models" | cut -f1) models"
