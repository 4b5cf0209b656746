#!/usr/bin/env bash
# Copy a checkpoint step back from the run directory (a gs:// bucket or host 0's disk) and
# convert it to a Hugging Face directory.
#   bash tools/tpu/pull_checkpoint.sh gs://BUCKET/runs/qwen3b 200 out/qwen3b-alphaalign
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools/tpu/common.sh
source "$here/common.sh"
if [ $# -ne 3 ]; then
  echo "usage: $0 WORKDIR STEP OUT_HF_DIR" >&2
  exit 2
fi
workdir=$1 step=$2 out=$3
local_ckpt=$(mktemp -d)
trap 'rm -rf "$local_ckpt"' EXIT
case "$workdir" in
  gs://*) gcloud storage cp -r "$workdir/checkpoints/$step" "$local_ckpt/" ;;
  *) gcloud compute tpus tpu-vm scp --recurse "$TPU_NAME:$workdir/checkpoints/$step" \
       "$local_ckpt/" --zone="$ZONE" --project="$PROJECT" --worker=0 ;;
esac
python "$here/../convert_checkpoint.py" orbax-to-hf "$local_ckpt/$step" "$out"
