#!/usr/bin/env bash
# Download the wheels the GPU check needs on the lent GPU machine, into .whl/ (ignored by git).
#
# That machine's image has Python 3.12 (x86-64), torch with CUDA, numpy, scipy, pandas,
# scikit-learn, safetensors, pyyaml, tqdm, psutil, matplotlib and pytest, and nothing can be
# installed there from a registry; liverfat's deep and atlas paths need SimpleITK and MONAI
# besides (MONAI needs only numpy and torch, SimpleITK nothing), and the atlas's fireants backend
# FireANTs (installed without its dependencies, as `make` does). Versions: the ones the CPU
# tests run with. How the wheels travel and the `run` command line: docs/gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=("simpleitk==2.5.7" "monai==1.6.1" "fireants==1.5.0")  # fireants: pure Python, no deps needed
rm -rf .whl
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  --platform any -d .whl "${WHEELS[@]}"
ls -l .whl
du -ch .whl/*.whl | tail -1
