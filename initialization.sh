#!/usr/bin/env bash
# RealMix as a ModelArts job on the Ascend 910 image (TensorFlow 1.15 + CANN), in shell form.
# The steps of run_sh.py: install what the image lacks, stage the data from OBS, draw the split,
# train on the NPU in mixed precision, evaluate the last checkpoint, copy the outputs to OBS.
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

# The steps run in the code folder: make local paths absolute first.
absolute() { case "$1" in obs://* | /*) echo "$1" ;; *) echo "$PWD/${1#./}" ;; esac; }
DATA_URL="$(absolute "$DATA_URL")"
TRAIN_URL="$(absolute "$TRAIN_URL")"
ML_DATA="$(absolute "$ML_DATA")"
TRAIN_DIR="$(absolute "$TRAIN_DIR")"
WORK_DIR="$PWD"
export ML_DATA
cd "$(dirname "${BASH_SOURCE[0]}")"
DATASET_ID="$DATASET.$SEED@$LABELS-$VALID"
SPLIT="$ML_DATA/SSL/$DATASET.$SEED@$LABELS"
read -r -a EXTRA_FLAGS <<< "$REALMIX_FLAGS"
TRAIN_FLAGS=(--dataset="$DATASET_ID" --train_dir="$TRAIN_DIR" --epochs="$EPOCHS" --device="$DEVICE"
             --precision="$PRECISION")
TRAIN_FLAGS+=(${EXTRA_FLAGS[@]+"${EXTRA_FLAGS[@]}"} ${ARG_FLAGS[@]+"${ARG_FLAGS[@]}"})

# read_fromobs.sync_up compares content, so a rewritten tf/checkpoint of the same size is sent too.
SYNC_PY='import sys, read_fromobs
from libml.utils import UserError
try:
    read_fromobs.sync_up(sys.argv[1], sys.argv[2])
except UserError as e:
    sys.exit("error: %s" % e)'
sync_outputs() { python -c "$SYNC_PY" "$TRAIN_DIR" "$TRAIN_URL"; }

# Copy TRAIN_DIR to TRAIN_URL whenever a checkpoint file changes, so a stopped job keeps its epochs.
checkpoint_stamp() {
  { find "$TRAIN_DIR" -name checkpoint -printf '%T@ %p\n' 2>/dev/null || true; } | sort | cksum
}
sync_on_new_checkpoint() {
  local last now
  last="$(checkpoint_stamp)"
  while sleep "$SYNC_EVERY_S"; do
    now="$(checkpoint_stamp)"
    if [ "$now" != "$last" ]; then
      if sync_outputs; then
        last="$now"
      else
        echo "warning: copying checkpoints to $TRAIN_URL failed; will retry" >&2
      fi
    fi
  done
}

newest_run() {  # realmix.py rewrites RUN/args/args.json whenever training starts
  local args_dir
  args_dir="$({ find "$TRAIN_DIR/$DATASET_ID" -mindepth 3 -maxdepth 3 -path '*/args/args.json' \
                  -printf '%T@ %h\n' 2>/dev/null || true; } | sort -n | tail -n 1 | cut -d' ' -f2-)"
  echo "${args_dir%/args}"
}

if [ "$PIP_INSTALL" = 1 ]; then
  echo "==> installing requirements-ascend.txt"
  python -m pip install --quiet -r requirements-ascend.txt
fi

if [ "$DATA_URL" != "$ML_DATA" ]; then
  echo "==> staging $DATA_URL -> $ML_DATA"
  python read_fromobs.py --src="$DATA_URL" --dst="$ML_DATA"
fi

if [ ! -f "$SPLIT-label.tfrecord" ] || [ ! -f "$SPLIT-unlabel.tfrecord" ]; then
  echo "==> drawing the split $SPLIT"
  INPUTS=("$ML_DATA/$DATASET-train.tfrecord")
  if [ -f "$ML_DATA/$DATASET-extra.tfrecord" ]; then
    INPUTS+=("$ML_DATA/$DATASET-extra.tfrecord")
  fi
  python scripts/create_split.py --seed="$SEED" --label_split_size="$LABELS" \
    "$ML_DATA/SSL/$DATASET" "${INPUTS[@]}"
fi

echo "==> training $DATASET_ID on $DEVICE ($PRECISION)"
sync_on_new_checkpoint &
SYNC_PID=$!
trap 'kill "$SYNC_PID" 2>/dev/null || true' EXIT
status=0
python realmix.py "${TRAIN_FLAGS[@]}" || status=$?
kill "$SYNC_PID" 2>/dev/null || true
if [ -d "$TRAIN_DIR" ]; then
  sync_outputs  # also after a failed run: keep what was trained
fi
if [ "$status" -ne 0 ]; then
  exit "$status"
fi

RUN_DIR="$(newest_run)"
if [ -z "$RUN_DIR" ]; then
  echo "error: training left no run folder under $TRAIN_DIR/$DATASET_ID" >&2
  exit 1
fi
echo "==> evaluating $RUN_DIR/tf"
python realmix.py "${TRAIN_FLAGS[@]}" --eval_ckpt="$RUN_DIR/tf"

# result.txt in the working folder and at the top of TRAIN_URL, each written whole then renamed
# (the temporary name is one that read_fromobs.py skips).
for dest in "$WORK_DIR/result.txt" "$TRAIN_DIR/result.txt"; do
  tmp="$(dirname "$dest")/.result.txt.tmp-$$"
  cp "$RUN_DIR/result.txt" "$tmp"
  mv -f "$tmp" "$dest"
done
sync_outputs
echo "==> run folder $RUN_DIR, copied to $TRAIN_URL"
cat "$WORK_DIR/result.txt"
