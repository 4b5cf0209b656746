"""AlphaAlign GRPO on Qwen2.5-3B-Instruct with the paper's settings (TPU / GPU host).

    python -m alphaalign_jax.train --config=configs/qwen2_5_3b_instruct.py --workdir=gs://BUCKET/runs/qwen2_5_3b_instruct \
        --config.model.hf_dir=/path/to/Qwen2.5-3B-Instruct --config.reward.rm_dir=/path/to/FsfairX-LLaMA3-RM-v0.1

8 rollouts a prompt, 16 prompts a step, actor lr 1e-6, 2048 tokens in all, the
FsfairX-LLaMA3-RM-v0.1 helpfulness reward model, FSDP over the slice.
"""

from configs._paper import paper_config


def get_config():
    return paper_config("models/Qwen2.5-3B-Instruct")
