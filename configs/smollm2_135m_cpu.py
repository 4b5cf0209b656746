"""The bundled default: AlphaAlign GRPO on SmolLM2-135M-Instruct, about 29 min on a 2-core CPU.

    python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py --workdir=runs/smollm2

A 135M model does not follow the template unaided (format 1%, no refusals in 160 sampled
answers to harmful prompts), so every group's reward is constant and nothing is learned.
What makes the reward learnable at this size, measured in docs/learning.md:
- a system prompt with two worked examples of each case whose reasoning names what makes the
  question (un)safe (rewards.WORKED_EXAMPLES_SYSTEM_PROMPT), and responses that start with
  "<safety_reasoning>" (rollout.response_prefix): every group has reward variance at step 1;
- class-balanced batches (data.harmful_fraction=0.5): with more harmful than benign prompts a
  refusal pays whatever the prompt, and the policy collapses to refusing everything;
- groups of 8 at temperature 1.0, so most groups hold both outcomes;
- no helpfulness reward model (reward.helpfulness="none"): it halves the CPU step, and the
  135M judge's margins are small;
- learning rate 3e-5 (the paper's 1e-6 is for 3B-7B models over 200 steps).
What it learns (docs/learning.md): the tags, by copying the worked examples into every answer;
not the refuse/comply decision, which collapses to "never refuse" with these settings.
"""

from alphaalign_jax.config import base_config, parse_config_arg
from alphaalign_jax.rewards import REFUSAL_MARKERS, WORKED_EXAMPLES_SYSTEM_PROMPT


def get_config(arg: str = ""):
    """``--config=configs/smollm2_135m_cpu.py:ARG``, ARG comma-separated: an algorithm
    (``ppo``: a critic from the policy at lr 1e-4, GAE; default grpo) and/or ``rft``: train
    under the plain template after a rejection-sampling fine-tuning warm start on the policy's
    own verified samples drawn under the worked examples (alphaalign_jax/rl/rft.py), so no
    scaffold is left to copy during RL, then 20 GRPO steps with a k3 KL anchor to the
    warm-started policy (beta 0.04); 39 min alone on 2 cores (run R1). docs/learning.md,
    sections 10-13: over four prompt orders the anchored GRPO held out refused 0.85-0.98 of
    harmful prompts and 0.19-0.60 of benign ones (discrimination +0.35 to +0.67; the
    over-refusal target is missed); without the anchor (beta 0) one order discriminated
    (+0.77) and another refused everything. Those counts are the paper's refusal verifier's;
    counted wide (section 14) R1 refuses 1.00 / 0.85, the policy having learned to refuse
    benign prompts in words the verifier's list misses. ``markers``: the reward's refusal
    verifier also counts refusal words anywhere in the answer (rewards.REFUSAL_MARKERS),
    closing those paraphrases ("Sorry, I can't help you"); with the helpfulness term
    (``--config.reward.helpfulness=lm_judge``, the base model as judge) and 40 steps from
    this config's warm start it met all four targets of issue 10 by both counts (run H1,
    section 14). ``helpful`` turns that term on and trains 40 steps: ``:rft,markers,helpful``
    from scratch took 53 min alone (run A1, section 14b): held out 0.94 / 0.02 refusal by the
    verifier, 0.96 / 0.29 counted wide (over-refusal +0.25 wide: that target is missed)."""
    algorithm, options = parse_config_arg(arg, options=("rft", "markers", "helpful"))
    c = base_config(algorithm)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.system_prompt = WORKED_EXAMPLES_SYSTEM_PROMPT
    c.rollout.num_samples = 8
    c.rollout.max_prompt_len = 512
    c.rollout.max_new_tokens = 96
    c.rollout.temperature = 1.0
    c.rollout.response_prefix = "<safety_reasoning>"
    c.reward.helpfulness = "none"
    c.reward.rm_batch_size = 8
    c.reward.rm_max_len = 256
    c.algo.beta = 0.0
    c.algo.micro_batch_size = 8
    c.optim.learning_rate = 3e-5
    c.optim.warmup_steps = 2
    c.train.steps = 20
    c.train.prompts_per_step = 4
    c.train.checkpoint_every = 5
    if algorithm == "ppo":
        c.optim.critic_learning_rate = 1e-4  # the critic starts from a zero head
        c.optim.warmup_steps = 4  # 2 mini-batches a step
    if "rft" in options:
        c.system_prompt = ""
        c.rft.update(rounds=24, system_prompt=WORKED_EXAMPLES_SYSTEM_PROMPT, temperature=0.7,
                     epochs=6, balance=True, learning_rate=1e-4)
        c.algo.beta = 0.04  # k3 KL to the warm start: the decision held on every order tried
    if "markers" in options:
        c.reward.refusal_markers = REFUSAL_MARKERS
    if "helpful" in options:  # the paper's full reward, R_s + R_h, judged by the base model
        c.reward.helpfulness = "lm_judge"
        c.train.steps = 40
    return c
