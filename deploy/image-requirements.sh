#!/bin/sh
# Print the pip requirements of the container image, one per line, for `pip install -r`.
#
#   image-requirements.sh LOCK TORCH_VERSION ONNXRUNTIME_REQUIREMENT SETUPTOOLS_VERSION
#
# Everything exactly as LOCK pins it, except:
# - torch: the package index's own Linux x86_64 wheel, which already carries CUDA (13.0, through
#   NVIDIA's pip packages: cuda-toolkit, nvidia-cudnn-cu13), so no external wheel index is needed;
# - onnxruntime: replaced by ONNXRUNTIME_REQUIREMENT: in the CUDA image its GPU build, with the
#   extras that pull the same CUDA 13 / cuDNN 9 pip packages torch uses (the GPU build is published
#   later than the CPU one and may lag its version); in the CPU variant the lock's own onnxruntime.
# The Dockerfile runs this script, and tests/deploy/test_image_dependencies.py resolves its output for
# the image's Python and platform, so what the image installs is what the test checks.
set -eu
if [ "$#" -ne 4 ]; then
    echo "usage: $0 LOCK TORCH_VERSION ONNXRUNTIME_REQUIREMENT SETUPTOOLS_VERSION" >&2
    exit 2
fi
grep -viE '^(torch|onnxruntime)==' "$1"
echo "torch==$2"
echo "$3"
echo "setuptools==$4"
