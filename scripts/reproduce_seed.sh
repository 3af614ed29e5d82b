#!/usr/bin/env bash
# The seed's experiment on one GPU, NPU or CPU: CIFAR-10 with 250 labels (split seed 1, 500
# validation images), WRN-28-2, RealMix with the reference's recommended flags, for N epochs of
# 64 kimg, with the progress bar and img/s, then the result table.
#
#   scripts/reproduce_seed.sh [--epochs=N] [--images=ARCHIVE_OR_FOLDER] [--cifar=cifar-10-python.tar.gz] \
#       [--labels=250] [--valid=500] [--train_dir=DIR] [-- REALMIX_FLAGS...]
#
# Data ($ML_DATA, default ./data) is made only when missing: from the CIFAR-10 JPEG archive or a
# folder with train/<class>/ and test/<class>/ (--images, default ../shared/data/cifar10-jpeg.tar.gz),
# or from the CIFAR-10 python archive (--cifar). Flags after -- go to realmix.py (e.g. --device=gpu,
# --precision=fp32, --report_kimg=16). Rerunning the same command resumes from the last checkpoint.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python}"
export ML_DATA="${ML_DATA:-./data}"
epochs=700 labels=250 valid=500 cifar="" train_dir="./experiments"
images="$ROOT/../shared/data/cifar10-jpeg.tar.gz"
while [ $# -gt 0 ]; do
  case "$1" in
    --epochs=*) epochs="${1#*=}" ;;
    --images=*) images="${1#*=}" ;;
    --cifar=*) cifar="${1#*=}" ;;
    --labels=*) labels="${1#*=}" ;;
    --valid=*) valid="${1#*=}" ;;
    --train_dir=*) train_dir="${1#*=}" ;;
    --) shift; break ;;
    *) echo "error: unknown argument $1; see the top of $0 for the flags" >&2; exit 1 ;;
  esac
  shift
done
case "$epochs$labels$valid" in *[!0-9]*|"") echo "error: --epochs, --labels and --valid take whole numbers" >&2; exit 1 ;; esac

split="cifar10.1@$labels"
if [ ! -f "$ML_DATA/cifar10-test.tfrecord" ]; then
  if [ -n "$cifar" ]; then
    "$PYTHON" "$ROOT/scripts/create_datasets.py" cifar10 --source="$cifar"
  else
    # create_datasets.py custom on the images (an archive is extracted to a temporary folder)
    "$PYTHON" - "$ROOT/scripts" "$ROOT" "$images" <<'PY'
import sys
sys.path[:0] = sys.argv[1:3]
import experiment
try:
    experiment.build_from_images('cifar10', sys.argv[3], [])
except experiment.UserError as e:
    sys.exit('error: %s' % e)
PY
  fi
fi
if [ ! -f "$ML_DATA/SSL/$split-label.tfrecord" ]; then
  "$PYTHON" "$ROOT/scripts/create_split.py" --seed=1 --label_split_size="$labels" \
    "$ML_DATA/SSL/cifar10" "$ML_DATA/cifar10-train.tfrecord"
fi

# The reference's recommended CIFAR-10 command: TSA on the linear schedule (the reference's rule),
# no OOD masking; every other flag at the seed's default (WRN-28-2, batch 64, lr 0.002, wd 0.02,
# EMA 0.999, beta 0.75, w_match 75, warm-up 1024 kimg, epochs of 64 kimg).
start=$(date +%s)
"$PYTHON" "$ROOT/realmix.py" --dataset="$split-$valid" --train_dir="$train_dir" --epochs="$epochs" \
  --tsa=linear_schedule --tsa_rule=reference --percent_mask=-1 "$@" | tee "$ML_DATA/.reproduce_seed.log"
seconds=$(( $(date +%s) - start ))
run=$(sed -n 's/^Run folder //p' "$ML_DATA/.reproduce_seed.log" | tail -n 1)
"$PYTHON" - "$run" "$seconds" <<'PY'
import json, os, sys
run, seconds = sys.argv[1], max(1, int(sys.argv[2]))
with open(os.path.join(run, 'stats.json')) as f:
    stats = json.load(f)
log = open(os.path.join(os.environ['ML_DATA'], '.reproduce_seed.log')).read()
resumed = [int(line.rsplit('-', 1)[1]) for line in log.splitlines() if line.startswith('Resumed from')]
trained = stats['step'] - (resumed[-1] if resumed else 0)
print('\nRun %s\nkimg %d, EMA test accuracy %.2f %% (seed: 89.87 %% on Ascend 910 and 89.59 %% on GPU '
      'after 700-750 epochs; paper 90.21 %%)' % (run, stats['step'] >> 10, stats['table']['ema']['test']))
print('%d labeled images trained in %d s (evaluations included): %.1f img/s (seed: 740 img/s GPU, '
      '1,487 img/s Ascend 910)' % (trained, seconds, trained / float(seconds)))
print(open(os.path.join(run, 'result.txt')).read())
PY
