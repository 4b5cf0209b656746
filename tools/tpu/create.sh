#!/usr/bin/env bash
# Create a TPU VM or pod slice (spot by default: cheaper, preemptible; training resumes).
#   ACCELERATOR=v4-32 TPU_NAME=alphaalign bash tools/tpu/create.sh [--on-demand]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools/tpu/common.sh
source "$here/common.sh"
capacity=(--spot)
if [ "${1:-}" = "--on-demand" ]; then capacity=(); fi
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
  --accelerator-type="$ACCELERATOR" --version="$RUNTIME" "${capacity[@]}"
