"""The XLA:CPU option set on import (alphaalign_jax/__init__.py): present, effective, and
never overriding the user's own value. Subprocesses, since XLA reads it once at start."""

import os
import subprocess
import sys

PROBE = """
import os, alphaalign_jax, jax, jax.numpy as jnp
text = jax.jit(lambda x: jnp.exp(x).sum(-1)).lower(jnp.ones((64, 4096))).compile().as_text()
print(os.environ["XLA_FLAGS"]); print("ynn reduce" if "ynn_fusion" in text else "xla reduce")
"""


def probe(xla_flags: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.split("\n")[:2]


def test_reductions_stay_with_xla_and_other_flags_are_kept():
    flags, reduce = probe("--xla_force_host_platform_device_count=2")
    assert flags.split() == ["--xla_force_host_platform_device_count=2",
                             "--xla_cpu_experimental_ynn_fusion_type=dot"]
    assert reduce == "xla reduce"


def test_the_users_own_choice_wins():
    flags, reduce = probe("--xla_cpu_experimental_ynn_fusion_type=dot,reduce")
    assert flags == "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    assert reduce == "ynn reduce"
