"""Run a snippet in a fresh Python with 8 simulated CPU devices.

XLA_FLAGS must be set before JAX initialises, so multi-device checks run in a
child process rather than in the (single-device) test process.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parent.parent


def run_on_8_devices(code: str, timeout: int = 600) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"8-device child failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result.stdout
