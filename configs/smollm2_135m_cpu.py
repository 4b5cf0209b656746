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

from alphaalign_jax.config import ConfigValueError, base_config, parse_config_arg
from alphaalign_jax.rewards import REFUSAL_MARKERS, WORKED_EXAMPLES_SYSTEM_PROMPT


def get_config(arg: str = ""):
    """``--config=configs/smollm2_135m_cpu.py:ARG``, ARG comma-separated: an algorithm
    (``ppo``: a critic from the policy at lr 1e-4, GAE; default grpo) and these options.

    ``rft``: train under the plain template after a rejection-sampling fine-tuning warm start
    on the policy's own verified samples drawn under the worked examples (rl/rft.py), so no
    scaffold is left to copy during RL; 20 GRPO steps with a k3 KL anchor to the warm start
    (beta 0.04). It discriminates by the paper's refusal verifier but refuses benign prompts
    in words the verifier's list misses (docs/learning.md, sections 10-14).
    ``markers``: the reward's refusal verifier also counts refusal words anywhere in the answer
    (rewards.REFUSAL_MARKERS), so those paraphrases pay r_a on benign prompts.
    ``helpful``: the paper's helpfulness term (an LM judge, the base model) and 40 steps.
    ``benign_markers``: the markers on benign prompts only (harmful ones earn r_a only for the
    template's refusal) and 60 steps: the headline run's second phase, which resumes the
    40-step ``:rft,markers,helpful`` run in the same workdir (README, "Results"):

        python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py:rft,markers,helpful --workdir=runs/headline
        python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py:rft,markers,helpful,benign_markers --workdir=runs/headline

    About 70 min alone on 2 cores (runs A1, A1b, rerun as A1r, A1r2; docs/learning.md section 14c)."""
    algorithm, options = parse_config_arg(
        arg, options=("rft", "markers", "helpful", "benign_markers"))
    if "benign_markers" in options and "markers" not in options:
        raise ConfigValueError(f"config argument {arg!r}: benign_markers narrows the markers "
                               "option to benign prompts; pass both (:rft,markers,helpful,"
                               "benign_markers)")
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
    if "benign_markers" in options:  # the headline's second phase: README, "Results"
        c.reward.markers_on = "benign"
        c.train.steps = 60
    return c
