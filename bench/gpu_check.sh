#!/usr/bin/env bash
# GPU check in one command, from the repo root, on a machine with an NVIDIA GPU:
#
#     bash bench/gpu_check.sh            # or: make gpu-check
#
# 1. picks a Python whose torch sees CUDA (.venv first, then python3/python; installs nothing
#    when .venv has one), makes the project importable and fills in missing pure-Python deps
#    (from a local wheelhouse .whl/ when there is one: GPU machines are often offline);
# 2. makes phantom CTs on the eight grids of the paper's Table 4 (512x512 at 0.8 mm, 55..554
#    slices at 1-2.5 mm) while exporting the `full` preset with random weights (TorchScript+ONNX);
# 3. runs `swinxseg batch` over them under the 4096 MB GPU cap;
# 4. runs the authors' pipeline (bench.baseline) against ours on two of the sizes for the ratio;
# 5. prints the table (bench/gpu_report.py) on exit, whatever failed.
#
# Every step is time-boxed with `timeout` against one deadline (GPU_CHECK_DEADLINE_S, default
# 450 s) so the whole check ends within 8 minutes; a failed or timed-out step is recorded in
# the table and the next step still runs when it can. Outputs: gpu_check_out/ (logs/ per step).
#
# Knobs (environment; defaults are the real check, the others exist for a CPU smoke run):
#   GPU_CHECK_OUT, GPU_CHECK_PYTHON, GPU_CHECK_DEVICE=cuda, GPU_CHECK_PRESET=full,
#   GPU_CHECK_INPLANE=512, GPU_CHECK_SLICES="55 100 150 215 334 448 499 554",
#   GPU_CHECK_BASELINE_SLICES="55 100", GPU_CHECK_CAP_MB=4096, GPU_CHECK_DEADLINE_S=450,
#   GPU_CHECK_WHEELS=.whl
set -u
set -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$(pwd)
OUT=${GPU_CHECK_OUT:-$REPO/gpu_check_out}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PRESET=${GPU_CHECK_PRESET:-full}
INPLANE=${GPU_CHECK_INPLANE:-512}
SLICES=${GPU_CHECK_SLICES:-"55 100 150 215 334 448 499 554"}
BASE_SLICES=${GPU_CHECK_BASELINE_SLICES:-"55 100"}
CAP_MB=${GPU_CHECK_CAP_MB:-4096}
DEADLINE_S=${GPU_CHECK_DEADLINE_S:-450}
WHEELS=${GPU_CHECK_WHEELS:-$REPO/.whl}
RESERVE_S=20  # kept back from every step's budget for printing the table
START=$SECONDS
PY=""

if [[ -d $OUT && -n $(ls -A "$OUT") && ! -f $OUT/steps.tsv ]]; then
    echo "gpu_check: $OUT exists and is not a previous gpu_check output; set GPU_CHECK_OUT" >&2
    exit 2
fi
rm -rf "$OUT"
mkdir -p "$OUT/logs" "$OUT/cases"
: > "$OUT/steps.tsv"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the project without a build step or network
export PYTHONUNBUFFERED=1

log() { echo "[gpu_check $((SECONDS - START))s] $*" >&2; }

record() {  # record NAME STATUS SECONDS
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$OUT/steps.tsv"
}

# step NAME BUDGET_S CMD... : run CMD under `timeout`, at most BUDGET_S and never past the
# deadline; output to logs/NAME.log; status to steps.tsv. Returns CMD's exit code.
step() {
    local name=$1 budget=$2
    shift 2
    local left=$((DEADLINE_S - (SECONDS - START) - RESERVE_S))
    ((budget > left)) && budget=$left
    if ((budget < 5)); then
        record "$name" "skipped (out of time)" 0
        return 125
    fi
    log "$name (up to ${budget}s): $*"
    local t0=$SECONDS rc status=ok
    timeout --kill-after=10 "$budget" "$@" > "$OUT/logs/$name.log" 2>&1
    rc=$?
    if ((rc == 124 || rc == 137)); then
        status="timed out after ${budget}s"
    elif ((rc != 0)); then
        status="failed rc=$rc"
    fi
    record "$name" "$status" $((SECONDS - t0))
    if [[ $status != ok ]]; then
        log "$name: $status; last lines of logs/$name.log:"
        tail -n 15 "$OUT/logs/$name.log" >&2
    fi
    return $rc
}

print_table() {
    log "done in $((SECONDS - START)) s"
    "${PY:-python3}" -m bench.gpu_report "$OUT" 2> "$OUT/logs/report.log" \
        || python3 -m bench.gpu_report "$OUT" \
        || { echo "table unavailable; steps:"; cat "$OUT/steps.tsv"; }
}
trap print_table EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------ 1. Python with torch+CUDA
pick_python() {
    local candidate check="import sys, torch; sys.exit(0 if '$DEVICE' == 'cpu' or torch.cuda.is_available() else 1)"
    for candidate in "${GPU_CHECK_PYTHON:-}" "$REPO/.venv/bin/python" python3 python; do
        [[ -n $candidate ]] && command -v "$candidate" > /dev/null 2>&1 || continue
        if timeout 120 "$candidate" -c "$check" > /dev/null 2>&1; then
            PY=$(command -v "$candidate")
            return 0
        fi
    done
    return 1
}

# import name:pip name of what the batch, the export and the baseline need beyond torch.
DEPS="numpy:numpy scipy:scipy nibabel:nibabel SimpleITK:SimpleITK pydantic:pydantic
pydantic_settings:pydantic-settings tqdm:tqdm pynvml:nvidia-ml-py onnxruntime:onnxruntime
monai:monai onnx:onnx onnxscript:onnxscript"

missing_deps() {  # one interpreter for all the checks: each import of torch/monai costs seconds
    "$PY" - $DEPS 2> /dev/null << 'EOF' || echo "$DEPS" | tr '\n' ' ' | sed 's/[^ :]*://g'
import importlib.util
import sys

print(" ".join(pair.split(":")[1] for pair in sys.argv[1:] if importlib.util.find_spec(pair.split(":")[0]) is None))
EOF
}

pip_install() {  # time-boxed; pip refuses system Pythons marked externally managed (PEP 668) without the flag
    local pip=(timeout 120 "$PY" -m pip install -q --disable-pip-version-check)
    "${pip[@]}" "$@" >> "$OUT/logs/setup.log" 2>&1 \
        || "${pip[@]}" --break-system-packages "$@" >> "$OUT/logs/setup.log" 2>&1
}

install_missing() {
    # torch is never on the list, so the machine's CUDA build of it stays as it is. Not
    # `make install`: the lock pins a CPU torch and needs the network, which GPU boxes lack.
    local missing=$1
    log "installing missing:$missing"
    # shellcheck disable=SC2086  # one argument per package is intended
    [[ -d $WHEELS ]] && { pip_install --no-index --find-links "$WHEELS" $missing || true; }
    missing=$(missing_deps)
    # shellcheck disable=SC2086
    [[ -n ${missing// /} ]] && { pip_install --retries 0 --timeout 15 $missing || true; }
    if ! command -v swinxseg > /dev/null 2>&1; then  # PYTHONPATH already covers `python -m`
        pip_install --no-deps --no-build-isolation -e "$REPO" || true
    fi
}

setup_python() {
    local t0=$SECONDS missing
    if ! pick_python; then
        record setup "failed: no Python with torch and CUDA (device $DEVICE)" $((SECONDS - t0))
        log "no Python whose torch sees CUDA; set GPU_CHECK_PYTHON=/path/to/python"
        return 1
    fi
    log "python: $PY"
    "$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'available', c, torch.cuda.get_device_name(0) if c else '')" >&2 || true
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version \
        --format=csv,noheader >&2
    missing=$(missing_deps)
    # The project's own .venv is installed by `make install`: never modified here.
    if [[ -n ${missing// /} && $PY != "$REPO/.venv/bin/python" ]]; then
        install_missing "$missing"
        missing=$(missing_deps)
    fi
    if [[ -n ${missing// /} ]]; then
        record setup "still missing:$missing" $((SECONDS - t0))
        log "still missing:$missing (the steps that need them will fail)"
    else
        record setup ok $((SECONDS - t0))
    fi
}

# ------------------------------------------------------------------ 2. phantoms and model
make_model() {
    local model=$OUT/model
    step export 240 "$PY" -m service.cli export --random-init --preset "$PRESET" \
        --format torchscript,onnx --out "$model" && return 0
    # ONNX export of the full network is the fragile part; TorchScript alone is enough here.
    rm -rf "$model"
    step export_torchscript 120 "$PY" -m service.cli export --random-init --preset "$PRESET" \
        --format torchscript --out "$model"
}

# ------------------------------------------------------------------ main
setup_python || exit 1

# Phantoms (CPU) and export run side by side to save wall time; both are needed by step 3.
# shellcheck disable=SC2086  # word splitting of the slice lists is intended
step phantoms 200 "$PY" -m bench.gpu_cases "$OUT/cases" --inplane "$INPLANE" --slices $SLICES &
phantoms_pid=$!
make_model
wait "$phantoms_pid"

# 3. Our batch mode over every case that exists, under the cap (report.json survives a timeout).
if compgen -G "$OUT/cases/*.nii.gz" > /dev/null && [[ -f $OUT/model/manifest.json ]]; then
    step batch 240 "$PY" -m service.cli batch "$OUT/cases" "$OUT/batch" --model "$OUT/model" \
        --device "$DEVICE" --gpu-mem-cap-mb "$CAP_MB" --no-progress
else
    record batch "skipped (no cases or no model)" 0
fi

# 4. Baseline vs ours on two sizes, same weights, alternating in fresh processes. The two
# smallest by default: the baseline's host-side stitching and 15-channel Invertd grow with the
# volume (a 215-slice case alone can take minutes), and the deadline must hold.
base_cases=()
for n in $BASE_SLICES; do
    for f in "$OUT"/cases/p*_s"$(printf '%03d' "$n")"_*_0000.nii.gz; do
        [[ -f $f ]] && base_cases+=("$f")
    done
done
if ((${#base_cases[@]})) && [[ -f $OUT/model/manifest.json ]]; then
    step baseline_vs_ours 300 "$PY" -m bench.run_bench --model "$OUT/model" --device "$DEVICE" \
        --cases "${base_cases[@]}" --out "$OUT/bench" --timeout 150
else
    record baseline_vs_ours "skipped (no cases of ${BASE_SLICES// /, } slices or no model)" 0
fi
# Non-zero when any step was not ok, so a caller can tell; the table prints either way.
! cut -f2 "$OUT/steps.tsv" | grep -qv '^ok$'
