"""AlphaAlign in JAX: safety alignment by RL with verifiable rewards."""

import os

__version__ = "0.1.0"

# XLA:CPU hands reductions and elementwise fusions to YNNPACK by default, and on this
# project's programs those run slower than XLA's own loops: the update's gradient took
# 9.7 s with them and 8.2 s with only the matmuls in YNNPACK (docs/speed.md). An
# ``xla_cpu_*`` option, which other backends ignore; read when JAX starts its backend, so
# it is set on import, before any computation; a value the user already set is kept.
_CPU_LIBRARY_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type=dot"
if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CPU_LIBRARY_FUSIONS}".strip()
