#!/usr/bin/env bash
# Copy this checkout to every host and install it there with jax[tpu].
#   bash tools/tpu/install.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tools/tpu/common.sh
source "$here/common.sh"
top=$(cd "$here/../.." && pwd)
archive=$(mktemp --suffix=.tar.gz)
trap 'rm -f "$archive"' EXIT
git -C "$top" archive --format=tar.gz -o "$archive" HEAD
gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:~/alphaalign.tar.gz" --zone="$ZONE" \
  --project="$PROJECT" --worker=all
tpu_ssh "mkdir -p ~/$REPO_DIR && tar -xzf ~/alphaalign.tar.gz -C ~/$REPO_DIR && cd ~/$REPO_DIR \
  && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
  && .venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION' && .venv/bin/pip install -q --no-deps -e ."
