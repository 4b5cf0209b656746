"""Two local JAX processes (CPU, gloo collectives) train like one process with two devices."""

from __future__ import annotations

import os
import socket
import subprocess

import numpy as np
import pytest

from tests.test_train import tiny_setup  # noqa: F401  (fixture)
from tests.tiny_run import REPO, read_metrics, run_train, tiny_overrides, train_command

KEYS = ("loss", "reward/total", "grad_norm", "kl", "entropy")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.assets
@pytest.mark.slow
def test_two_processes_match_one_process(tiny_setup, tmp_path):  # noqa: F811
    overrides = tiny_overrides(*tiny_setup, steps=2) + ["--config.mesh.fsdp=2",
                                                        "--config.train.async_checkpointing=False"]
    single = tmp_path / "single"
    run_train(single, overrides, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    multi = tmp_path / "multi"
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {**os.environ, "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
        flags = ["--distributed", f"--coordinator_address=localhost:{port}",
                 "--num_processes=2", f"--process_id={pid}"]
        procs.append(subprocess.Popen(train_command(multi, overrides + flags),
                                      cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-4000:]
    a, b = read_metrics(single), read_metrics(multi)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for key in KEYS:
            assert np.isclose(ra[key], rb[key], rtol=1e-4, atol=1e-6), (ra["step"], key)
