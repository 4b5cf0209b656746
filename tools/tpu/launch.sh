#!/usr/bin/env bash
# Launch (or resume: the same command picks up the newest checkpoint) training on every host.
# Each host runs the same command; jax.distributed finds its peers from the TPU metadata.
#   bash tools/tpu/launch.sh configs/qwen2_5_3b_instruct.py gs://BUCKET/runs/qwen3b \
#        --config.model.hf_dir=/path/to/Qwen2.5-3B-Instruct
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools/tpu/common.sh
source "$here/common.sh"
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG WORKDIR [--config.a.b=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
overrides=""
for arg in "$@"; do overrides+=" $(printf '%q' "$arg")"; done
# Before any TPU time is spent: compile the config for $ACCELERATOR here, with the real TPU
# compiler, and stop if it does not fit the slice's HBM (SKIP_AOT=1 skips the check).
if [ "${SKIP_AOT:-0}" != 1 ]; then
  top=$(cd "$here/../.." && pwd)
  (cd "$top" && .venv/bin/python -m alphaalign_jax.aot --config="$config" \
      --topology="$ACCELERATOR" "$@") || {
    echo "not launched: $config does not compile or fit on $ACCELERATOR (see above)" >&2
    exit 1
  }
fi
tpu_ssh "cd ~/$REPO_DIR && nohup .venv/bin/python -m alphaalign_jax.train --config=$config \
  --workdir=$workdir --distributed$overrides > train.log 2>&1 &"
echo "launched on all hosts of $TPU_NAME; follow with:"
echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=0 --command='tail -f ~/$REPO_DIR/train.log'"
