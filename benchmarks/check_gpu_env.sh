#!/usr/bin/env bash
# Check on a CPU that the GPU check imports and runs (skipping) with only what the lent GPU
# machine has: a fresh virtualenv with that image's relevant packages, and the carried wheels of
# .whl/ installed as on that machine (pip --no-index --no-deps --target, then PYTHONPATH).
# Run benchmarks/gpu_wheels.sh first. Takes a few minutes (it installs torch's CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
ENV=${ENV_DIR:-/tmp/liverfat-gpu-image}
SITE=$ENV/site
IMAGE_PACKAGES=(numpy scipy pandas scikit-learn statsmodels safetensors pyyaml tqdm psutil
  matplotlib pytest pytest-timeout)
rm -rf "$ENV"
"$PYTHON" -m venv "$ENV"
"$ENV/bin/python" -m pip install --quiet torch==2.13.0
"$ENV/bin/python" -m pip install --quiet "${IMAGE_PACKAGES[@]}"
"$ENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .whl/*.whl
export PYTHONPATH=$SITE:$PWD
"$ENV/bin/python" -m benchmarks gpu --out "$ENV/out"
"$ENV/bin/python" -m pytest -q -p no:cacheprovider -m gpu \
  $("$ENV/bin/python" -c "from benchmarks.bench_gpu import gpu_test_files; print(*gpu_test_files())")
"$ENV/bin/python" -m pip list --format=freeze | grep -qiE '^(dask|pingouin|pydicom|itk|pydeform|pyradiomics|xgboost)=' \
  && { echo "a package absent on the GPU machine is installed here"; exit 1; } || true
echo "GPU check import path OK in $ENV"
