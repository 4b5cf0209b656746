"""Matmul FLOPs of the model's passes, as this code runs them (dense attention over the slots).

Counted per token: the projections (q, k, v, o, and the gated MLP's three matrices) and the two
attention products over ``context`` key slots; the unembedding only where a pass computes logits.
Norms, rotary embedding and softmax are left out (a few percent at these widths). The trainer
divides them by each phase's wall time for its achieved FLOP/s (``flops/*`` metrics).
"""

from __future__ import annotations

from collections.abc import Sequence

from alphaalign_jax.models.config import ModelConfig


def layer_flops(cfg: ModelConfig, tokens: float, context: float) -> float:
    """Every block over ``tokens`` query tokens, each attending to ``context`` key slots."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    projections = 2 * (d * q + 2 * d * kv + q * d + 3 * d * f)
    attention = 2 * 2 * q * context  # scores and the weighted sum of values
    return tokens * cfg.num_layers * (projections + attention)


def head_flops(cfg: ModelConfig, tokens: float) -> float:
    """The output layer (vocabulary logits, or a classifier's labels) at ``tokens`` positions."""
    return 2 * cfg.hidden_size * (cfg.num_labels or cfg.vocab_size) * tokens


def grouped_pass_flops(cfg: ModelConfig, prompts: int, width: int, rows: int,
                       completion_len: int) -> float:
    """One forward of the update's grouped pass (rl/step.py): each prompt once over a cache of
    ``width + completion_len - 1`` slots, then its rows' completions over it, logits at every
    completion position."""
    slots = width + completion_len - 1
    return (layer_flops(cfg, prompts * width + rows * (completion_len - 1), slots)
            + head_flops(cfg, rows * completion_len))


def sampling_flops(cfg: ModelConfig, prompts: int, width: int, rows: int, steps: int) -> float:
    """The sampler: a prefill of each prompt (logits at its last position), then ``steps``
    decode steps of every row over the cache written so far."""
    prefill = layer_flops(cfg, prompts * width, width) + head_flops(cfg, prompts)
    decode = (layer_flops(cfg, rows * steps, width + steps / 2)
              + head_flops(cfg, rows * steps))
    return prefill + decode


def step_phase_flops(models: Sequence[ModelConfig], shape: tuple[int, int, int, int], *,
                     reference: bool, remat: bool, num_updates: int) -> dict[str, float]:
    """Model FLOPs of an RL step's reference phase (the reference log-probs when
    ``reference``, the critic's values) and update phase (forward + backward, + a forward
    with remat, per epoch) over a batch of ``shape`` = (prompts, width, rows, completion
    length); ``models``: the policy, then the critic if there is one."""
    forward = [grouped_pass_flops(m, *shape) for m in models]
    return {"flops/reference": forward[0] * reference + sum(forward[1:]),
            "flops/update": (3 + remat) * num_updates * sum(forward)}
