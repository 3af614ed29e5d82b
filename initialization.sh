#!/usr/bin/env bash
# RealMix as a ModelArts job on the Ascend 910 image (TensorFlow 1.15 + CANN), in shell form: sets
# the Ascend environment, installs what the image lacks, then runs run_sh.py, which stages the data
# from OBS, draws the split, trains, evaluates and copies the outputs (and result.txt) back.
#
# Edit the variables below, or set them in the environment. ModelArts' --data_url=... and
# --train_url=... arguments override DATA_URL and TRAIN_URL; other --flags go to realmix.py.
# A trial off the NPU, with local folders and a tiny schedule:
#   DEVICE=cpu PRECISION=fp32 PIP_INSTALL=0 DATA_URL=./data-src TRAIN_URL=./out \
#   ML_DATA=/tmp/data TRAIN_DIR=/tmp/experiments EPOCHS=1 \
#   REALMIX_FLAGS="--arch=smallconv --filters=8 --train_kimg=1 --report_kimg=1" bash initialization.sh
set -euo pipefail

DATA_URL="${DATA_URL:-obs://YOUR-BUCKET/realmix/data}"     # $ML_DATA layout: NAME-train/-test.tfrecord
TRAIN_URL="${TRAIN_URL:-obs://YOUR-BUCKET/realmix/output}" # run folders and result.txt go here
DATASET="${DATASET:-cifar10}"
SEED="${SEED:-1}"          # seed of the labeled/unlabeled split
LABELS="${LABELS:-250}"    # labeled images
VALID="${VALID:-500}"      # unlabeled images held out for validation
EPOCHS="${EPOCHS:-700}"    # epochs of --report_kimg (64 kimg by default)
DEVICE="${DEVICE:-npu}"
PRECISION="${PRECISION:-mixed}"
REALMIX_FLAGS="${REALMIX_FLAGS:-}"  # more realmix.py flags, e.g. "--tsa=linear_schedule --percent_mask=0.3"
PIP_INSTALL="${PIP_INSTALL:-1}"     # 0 skips pip (the packages are there already)
ML_DATA="${ML_DATA:-/cache/data}"
TRAIN_DIR="${TRAIN_DIR:-/cache/experiments}"
SYNC_EVERY_S="${SYNC_EVERY_S:-10}"  # how often to look for a new checkpoint to copy to TRAIN_URL
PYTHON="${PYTHON:-python}"

ARG_FLAGS=()
for arg in "$@"; do
  case "$arg" in
    --data_url=*) DATA_URL="${arg#*=}" ;;
    --train_url=*) TRAIN_URL="${arg#*=}" ;;
    --*) ARG_FLAGS+=("$arg") ;;
    *) echo "error: unexpected argument '$arg': write flags as --name=value" >&2; exit 1 ;;
  esac
done
for url in "$DATA_URL" "$TRAIN_URL"; do
  case "$url" in
    *YOUR-BUCKET*) echo "error: $url is a placeholder: set DATA_URL and TRAIN_URL at the top of $0" >&2
                   exit 1 ;;
  esac
done

# CANN logs go to their log files, not the job log; errors only; no graph dumps.
export ASCEND_SLOG_PRINT_TO_STDOUT="${ASCEND_SLOG_PRINT_TO_STDOUT:-0}"
export ASCEND_GLOBAL_LOG_LEVEL="${ASCEND_GLOBAL_LOG_LEVEL:-3}"
export ASCEND_GLOBAL_EVENT_ENABLE="${ASCEND_GLOBAL_EVENT_ENABLE:-0}"
unset DUMP_GE_GRAPH DUMP_GRAPH_LEVEL
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export PYTHONUNBUFFERED=1
export ML_DATA

CODE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ "$PIP_INSTALL" = 1 ]; then
  echo "==> installing requirements-ascend.txt"
  "$PYTHON" -m pip install --quiet -r "$CODE_DIR/requirements-ascend.txt"
fi

read -r -a EXTRA_FLAGS <<< "$REALMIX_FLAGS"
# run_sh.py writes result.txt into the working folder, as the ModelArts job expects.
exec "$PYTHON" "$CODE_DIR/run_sh.py" --data_url="$DATA_URL" --train_url="$TRAIN_URL" \
  --dataset="$DATASET" --seed="$SEED" --label_size="$LABELS" --valid_size="$VALID" \
  --epochs="$EPOCHS" --device="$DEVICE" --precision="$PRECISION" --train_dir="$TRAIN_DIR" \
  --sync_every_s="$SYNC_EVERY_S" ${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"} ${ARG_FLAGS[@]+"${ARG_FLAGS[@]}"}
