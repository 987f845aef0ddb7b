#!/bin/sh
# FLARE challenge contract: the organisers run
#   docker container run --gpus "device=0" -m 28G --rm \
#     -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/ IMAGE /bin/bash -c "sh predict.sh"
# which segments every CT in /workspace/inputs into /workspace/outputs/CASE.nii.gz.
set -eu
exec swinxseg batch "${SWINXSEG_INPUTS:-/workspace/inputs}" "${SWINXSEG_OUTPUTS:-/workspace/outputs}" "$@"
