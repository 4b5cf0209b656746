#!/usr/bin/env bash
# Settings shared by the Cloud TPU scripts; override any of them in the environment.
# shellcheck disable=SC2034  # sourced by the other scripts
TPU_NAME=${TPU_NAME:-alphaalign}
ZONE=${ZONE:-us-central2-b}
PROJECT=${PROJECT:-$(gcloud config get-value project 2>/dev/null)}
ACCELERATOR=${ACCELERATOR:-v4-32}
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
REPO_DIR=${REPO_DIR:-alphaalign-jax}
JAX_VERSION=${JAX_VERSION:-0.10.2}

tpu_ssh() {
  # Run one command on every host of the slice (the same command everywhere, as JAX expects).
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" \
    --worker=all --command="$1"
}
