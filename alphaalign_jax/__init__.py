"""AlphaAlign in JAX: safety alignment by RL with verifiable rewards."""

__version__ = "0.1.0"
