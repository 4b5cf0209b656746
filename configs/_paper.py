"""The method's settings shared by the paper-scale configs (AlphaAlign, App. E and method.md)."""

from alphaalign_jax.config import base_config, parse_config_arg
from alphaalign_jax.rl import algorithms


def paper_config(hf_dir: str, arg: str = ""):
    """``arg``: the algorithm (``grpo``, the paper's appendix E.2, by default; ``ppo``, its
    main runs: a critic at lr 1e-5 started from the policy, GAE, the reward on the last token)."""
    algorithm, _ = parse_config_arg(arg)
    c = base_config(algorithm)
    c.model.hf_dir = hf_dir
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    c.model.remat = True  # without it the 2k-token update needs 100+ GB a chip (aot)
    c.model.scan_layers = True  # compile time independent of depth (docs/tpu_plans.md)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)  # FSDP over every chip of the slice
    c.rollout.num_samples = 8  # n = 8 rollouts a prompt
    c.rollout.max_prompt_len = 512
    c.rollout.max_new_tokens = 1536  # max length 2048 in all
    c.reward.helpfulness = "classifier"
    c.reward.rm_dir = "models/FsfairX-LLaMA3-RM-v0.1"  # HF directory, fetched by the user
    c.reward.rm_batch_size = 32
    c.reward.rm_max_len = 2048
    if not algorithms.get(algorithm).critic:  # a KL in the loss; PPO's is in its reward
        c.algo.beta = 0.04
        # One update a step under bf16 compute: the ratio against the update's own log-probs
        # (exactly 1), not the sampler's, which bf16 puts 4% from it on the first update
        # (docs/experiments/2026-12-04-pi-old-under-bf16.md).
        c.algo.on_policy_ratio = True
    c.algo.micro_batch_size = 16
    c.optim.learning_rate = 1e-6  # actor lr
    c.optim.critic_learning_rate = 1e-5
    c.optim.max_grad_norm = 1.0
    c.train.prompts_per_step = 16  # batch 16 prompts
    c.train.steps = 200  # "< 200 RL steps", about 2 epochs
    c.train.checkpoint_every = 20
    return c
