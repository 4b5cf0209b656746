#!/usr/bin/env bash
# Delete the TPU VM (checkpoints in a gs:// workdir survive).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools/tpu/common.sh
source "$here/common.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" --quiet
