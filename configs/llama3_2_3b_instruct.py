"""AlphaAlign on Llama-3.2-3B-Instruct with the paper's settings (TPU / GPU host): GRPO (appendix E.2),
or with ``:ppo`` the paper's main algorithm, PPO with a critic and GAE.

    python -m alphaalign_jax.train --config=configs/llama3_2_3b_instruct.py[:ppo] --workdir=gs://BUCKET/runs/llama3_2_3b_instruct \
        --config.model.hf_dir=/path/to/Llama-3.2-3B-Instruct --config.reward.rm_dir=/path/to/FsfairX-LLaMA3-RM-v0.1

8 rollouts a prompt, 16 prompts a step, actor lr 1e-6 (PPO: critic lr 1e-5), 2048 tokens in all, the
FsfairX-LLaMA3-RM-v0.1 helpfulness reward model, FSDP over the slice.
"""

from configs._paper import paper_config


def get_config(arg: str = ""):
    return paper_config("models/Llama-3.2-3B-Instruct", arg)
