"""The bundled default: AlphaAlign on SmolLM2-135M-Instruct in one command on 2 CPU cores.

    python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py --workdir=runs/smollm2

A 135M model does not follow the paper's template unaided (format 1%, no refusals in 160
sampled answers to harmful prompts), so every group's reward is constant and GRPO learns
nothing. This recipe gives it the format first, then lets GRPO teach the decision
(docs/learning.md has the measurements). Its two phases:

1. A warm start from the labels (rl/rft.py ``collect_labelled``): for 48 batches of training
   prompts, one target each: the class's one-sentence reasoning, then the template's refusal on
   a harmful prompt or, on a benign one, the policy's own greedy answer to the bare question
   cut to whole sentences; 3 epochs of fine-tuning under the plain template. It teaches the
   format and finished answers, not yet which prompts to refuse.
2. GRPO under the plain template on the paper's full reward R_s + R_h, the helpfulness judge
   being the base model, with a k3 KL anchor to the warm start (beta 0.04) and the refusal read
   so that it cannot be gamed: on a harmful prompt r_a is paid only for an answer that refuses
   as a whole (reward.whole_refusal: a compliance with a disclaimer, a step list or a verdict
   label earns nothing), on a benign one a refusal in any words costs r_a
   (reward.refusal_markers on benign prompts). Class-balanced batches of 4 prompts x 8
   rollouts x 96 new tokens at temperature 1.0, lr 3e-5, 12 steps.

Half the training prompts of each label are restated in the other grammatical form
(data.restate_forms, data/forms.py): the bundled benign prompts are all questions and a third
of the harmful ones instructions, and without it the policy learns to refuse instructions.

Variants for experiments, ``--config=configs/smollm2_135m_cpu.py:ARG``:
``scaffold``: an early default, the worked examples as the system prompt during RL and no
warm start, 20 steps; it learns the tags by copying the examples and never refuses.
``sampled_warm_start``: the previous default, warm-start targets sampled under the worked
examples and prompts as written, 36 steps; it refuses every held-out prompt.
``prefix_reward``: the paper's refusal reading (prefix list only) in the recipe above.
``ppo``: a critic from the policy at lr 1e-4 and GAE instead of GRPO.
``rloo``: RLOO's leave-one-out baseline instead of GRPO's group normalisation (also ``dapo``,
``dr_grpo``).
``smoke``: the whole pipeline in about 2 minutes (a one-batch warm start, 2 GRPO steps of short
rollouts on the verifiers' reward without KL, a checkpoint, a held-out evaluation of 4 prompts a
set, an HF export): it proves the plumbing works, not that anything is learnt.
"""

from alphaalign_jax.config import ConfigValueError, base_config, parse_config_arg
from alphaalign_jax.rewards import REFUSAL_MARKERS, WORKED_EXAMPLES_SYSTEM_PROMPT
from alphaalign_jax.rl import algorithms


# The named options of ``--config=configs/smollm2_135m_cpu.py:OPTION`` and what each does
# (``train --help`` lists them).
OPTIONS = {
    "smoke": "the whole pipeline in ~2 min (plumbing, not learning): warm start, 2 steps, "
             "checkpoint, a tiny evaluation, HF export",
    "scaffold": "the worked examples as the system prompt during RL, no warm start, 20 steps",
    "prefix_reward": "the paper's refusal reading (prefix list only)",
    "sampled_warm_start": "the earlier recipe: warm-start targets sampled under worked examples, "
                          "prompts as the sources wrote them, 36 steps",
}
LONG_OPTIONS = ("scaffold", "sampled_warm_start")  # options that make a run long: not with smoke


def get_config(arg: str = ""):
    """``--config=configs/smollm2_135m_cpu.py:ARG``, ARG comma-separated: an algorithm (``ppo``;
    default grpo) and the options of ``OPTIONS`` (the module docstring)."""
    algorithm, options = parse_config_arg(arg, options=tuple(OPTIONS))
    if "smoke" in options and options & set(LONG_OPTIONS):
        raise ConfigValueError(f"config argument {arg!r}: smoke is a 2-minute check of the "
                               f"pipeline; {sorted(options & set(LONG_OPTIONS))} make a long "
                               "run: drop one")
    c = base_config(algorithm)
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.rollout.num_samples = 8
    c.rollout.max_prompt_len = 512
    c.rollout.max_new_tokens = 96
    c.rollout.temperature = 1.0
    c.rollout.response_prefix = "<safety_reasoning>"
    c.reward.helpfulness = "lm_judge"  # R_h judged by the base model itself
    c.reward.rm_batch_size = 8
    c.reward.rm_max_len = 256
    c.reward.refusal_markers = REFUSAL_MARKERS
    c.reward.markers_on = "benign"
    c.reward.whole_refusal = True
    # The warm start's targets from the labels: 48 batches of 2 + 2 prompts, 3 epochs.
    c.rft.update(rounds=48, targets_from="labels", epochs=3, balance=True, learning_rate=1e-4)
    c.data.restate_forms = 0.5  # half the prompts in the other form: the form tells no label
    c.algo.beta = 0.04  # k3 KL to the warm start
    c.algo.micro_batch_size = 8
    c.optim.learning_rate = 3e-5
    c.optim.warmup_steps = 2
    c.train.steps = 12
    c.train.prompts_per_step = 4
    c.train.checkpoint_every = 3
    if algorithms.get(algorithm).critic:
        c.optim.critic_learning_rate = 1e-4  # the critic starts from a zero head
        c.optim.warmup_steps = 4  # PPO's 2 mini-batches a step
    if "sampled_warm_start" in options:
        c.rft.update(rounds=20, targets_from="samples", system_prompt=WORKED_EXAMPLES_SYSTEM_PROMPT,
                     temperature=0.7, epochs=2)
        c.data.restate_forms = 0.0
        c.train.update(steps=36, checkpoint_every=6)
    if "prefix_reward" in options:
        c.reward.update(refusal_markers=(), markers_on="all", whole_refusal=False)
    if "scaffold" in options:
        c.system_prompt = WORKED_EXAMPLES_SYSTEM_PROMPT
        c.rft.rounds = 0
        c.data.restate_forms = 0.0
        c.reward.helpfulness = "none"
        c.algo.beta = 0.0
        c.train.steps = 20
        c.train.checkpoint_every = 5
    if "smoke" in options:  # every phase once, as small as it runs: plumbing, not learning
        c.rollout.update(num_samples=2, max_new_tokens=48)
        # A micro-batch is a whole mini-batch: 2 prompts x 2 rollouts (over PPO's 2).
        c.algo.micro_batch_size = 2 * 2 // c.algo.mini_batches
        # One block in each program for all 30 layers: the update compiles in ~7 s, not ~30 s.
        c.model.scan_layers = True
        c.rft.update(rounds=1, epochs=1, min_kept=1)
        c.train.update(steps=2, prompts_per_step=2, checkpoint_every=2, eval_prompts=4,
                       eval_new_tokens=32, export_hf=True)
        c.reward.helpfulness = "none"  # the verifiers' reward alone: no judge to compile,
        c.algo.beta = 0.0  # and no KL reference pass
    return c
