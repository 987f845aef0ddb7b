#!/bin/sh
# Container entry point.
#   docker run IMAGE                     -> swinxseg serve on 0.0.0.0:8000 (SWINXSEG_HOST/PORT change it)
#   docker run IMAGE serve [flags]       -> the same, with extra `swinxseg serve` flags
#   docker run IMAGE worker [flags]      -> swinxseg worker (queue mode; needs SWINXSEG_QUEUE_URL, SWINXSEG_STORAGE_DIR)
#   docker run IMAGE batch [in out] [flags]
#                                        -> swinxseg batch /workspace/inputs /workspace/outputs
#   docker run IMAGE export|preview ...  -> that swinxseg subcommand (the image carries the serving
#                                           code only: train, phantom and demo are not in it)
#   docker run IMAGE /bin/bash -c "sh predict.sh"      -> any other command runs as given
#                                           (the FLARE challenge invocation)
set -eu

INPUTS="${SWINXSEG_INPUTS:-/workspace/inputs}"
OUTPUTS="${SWINXSEG_OUTPUTS:-/workspace/outputs}"

if [ "$#" -eq 0 ]; then
    set -- serve
fi

case "$1" in
    serve)
        shift
        exec swinxseg serve --host "${SWINXSEG_HOST:-0.0.0.0}" --port "${SWINXSEG_PORT:-8000}" "$@"
        ;;
    batch)
        shift
        # No folders given (only flags, or nothing): use the mounted workspace folders.
        case "${1:-}" in
            "" | -*) set -- "$INPUTS" "$OUTPUTS" "$@" ;;
        esac
        exec swinxseg batch "$@"
        ;;
    export | preview | worker)
        exec swinxseg "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
