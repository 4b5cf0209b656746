"""AlphaAlign rewards: prompt template, verifiers, safety reward, numeric combination."""

from alphaalign_jax.rewards.combine import (
    group_normalise,
    helpfulness_reward,
    reward_metrics,
    total_reward,
)
from alphaalign_jax.rewards.reward_fn import AlphaAlignReward, RewardFn, alphaalign_reward
from alphaalign_jax.rewards.safety import (
    LABELS,
    SafetyBatch,
    SafetyRewardConfig,
    SafetyScore,
    safety_reward,
    score_groups,
)
from alphaalign_jax.rewards.template import (
    DEFAULT_SAFETY_TEMPLATE,
    WORKED_EXAMPLES_SYSTEM_PROMPT,
    apply_template,
    build_chat_prompt,
    policy_prompt,
    scored_response,
)
from alphaalign_jax.rewards.verifiers import (
    DEFAULT_REFUSAL_PHRASES,
    MARKER_SCOPES,
    REFUSAL_MARKERS,
    extract_answer,
    extract_boxed,
    format_progress,
    format_verifier,
    is_refusal,
    markers_for,
    refusal_verifier,
    visible_answer,
)

__all__ = [
    "AlphaAlignReward",
    "alphaalign_reward",
    "policy_prompt",
    "scored_response",
    "RewardFn",
    "WORKED_EXAMPLES_SYSTEM_PROMPT",
    "format_progress",
    "DEFAULT_REFUSAL_PHRASES",
    "REFUSAL_MARKERS",
    "MARKER_SCOPES",
    "DEFAULT_SAFETY_TEMPLATE",
    "LABELS",
    "SafetyBatch",
    "SafetyRewardConfig",
    "SafetyScore",
    "apply_template",
    "build_chat_prompt",
    "extract_answer",
    "extract_boxed",
    "format_verifier",
    "group_normalise",
    "helpfulness_reward",
    "is_refusal",
    "markers_for",
    "refusal_verifier",
    "reward_metrics",
    "safety_reward",
    "score_groups",
    "total_reward",
    "visible_answer",
]
