"""The bundled default: AlphaAlign GRPO on SmolLM2-135M-Instruct, sized for a 2-core CPU.

    python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py --workdir=runs/smollm2

Helpfulness comes from the LM judge on the policy's own base model, so nothing
beyond the bundled assets is downloaded. Sizes are cut to fit a CPU budget
(4 prompts x 4 rollouts, 96 new tokens); the learning rate is raised from the
paper's 1e-6 for 3B models because a 135M model over a few dozen steps does
not move at 1e-6. beta = 0 skips the reference forward (a third of a CPU step).
A 135M model does not write the tags on its own (none in a probe of 8 rollouts), which
leaves the format reward without signal, so responses start with "<safety_reasoning>"
(rollout.response_prefix) and sampling runs at temperature 0.8.
"""

from alphaalign_jax.config import base_config


def get_config():
    c = base_config()
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.rollout.num_samples = 4
    c.rollout.max_prompt_len = 192
    c.rollout.max_new_tokens = 96
    c.rollout.temperature = 0.8
    c.rollout.response_prefix = "<safety_reasoning>"
    c.reward.helpfulness = "lm_judge"
    c.reward.rm_batch_size = 8
    c.reward.rm_max_len = 256
    c.algo.beta = 0.0
    c.algo.micro_batch_size = 4
    c.optim.learning_rate = 2e-5
    c.optim.warmup_steps = 2
    c.train.steps = 20
    c.train.prompts_per_step = 4
    c.train.checkpoint_every = 5
    return c
