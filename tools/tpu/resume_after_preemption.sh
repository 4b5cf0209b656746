#!/usr/bin/env bash
# A spot slice was preempted: recreate it if it is gone, reinstall, relaunch the same run.
#   bash tools/tpu/resume_after_preemption.sh CONFIG WORKDIR [overrides...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools/tpu/common.sh
source "$here/common.sh"
state=$(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
  --format='value(state)' 2>/dev/null || echo MISSING)
if [ "$state" != "READY" ]; then
  if [ "$state" != "MISSING" ]; then
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet
  fi
  bash "$here/create.sh"
  bash "$here/install.sh"
fi
bash "$here/launch.sh" "$@"
