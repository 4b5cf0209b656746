"""Does the base policy's hidden state already tell harmful from benign prompts?

    .venv/bin/python tools/probe_harm_direction.py [--per-class 150] [--system-prompt worked]

Runs the policy (the Hugging Face reference implementation) on training prompts exactly as
the trainer conditions it (chat template, safety template, system prompt, response prefix),
takes each layer's hidden state at the last prompt token (where the policy starts to write
its safety reasoning), fits a ridge classifier harmful-vs-benign on training prompts and
reports its accuracy on the held-out evaluation prompts the evaluator uses (16 each from
StrongREJECT, HarmBench standard and held-out AdvBench; the first 48 over-refusal prompts).
High accuracy with a policy whose refusals do not depend on the prompt says the information
is there and RL has not learned to use it (docs/learning.md).
"""

from __future__ import annotations

import argparse
import collections
import copy

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alphaalign_jax import assets
from alphaalign_jax.data import load_jsonl
from alphaalign_jax.rewards import (
    DEFAULT_SAFETY_TEMPLATE,
    WORKED_EXAMPLES_SYSTEM_PROMPT,
    build_chat_prompt,
)

EVAL_SOURCES = ("strongreject", "harmbench/standard", "advbench")


def _balanced(records, per_class, rng):
    by_label = collections.defaultdict(list)
    for r in records:
        by_label[r.label].append(r)
    picked = []
    for label in ("harmful", "benign"):
        rows = by_label[label]
        picked += [rows[i] for i in rng.permutation(len(rows))[:per_class]]
    return picked


def _eval_records():
    harmful = load_jsonl(assets.assets_dir() / "data" / "eval_harmful.jsonl")
    per_source = collections.defaultdict(list)
    for r in harmful:
        if r.source in EVAL_SOURCES and len(per_source[r.source]) < 16:
            per_source[r.source].append(r)
    benign = load_jsonl(assets.assets_dir() / "data" / "eval_overrefusal.jsonl")[:48]
    return [r for s in EVAL_SOURCES for r in per_source[s]] + benign


@torch.no_grad()
def _features(model, tokenizer, records, system_prompt, prefix):
    """[N, layers+1, hidden] hidden states at the last prompt token. The tokens every
    prompt shares (the system turn) are run once and their KV cache reused."""
    texts = [build_chat_prompt(r.prompt, tokenizer, DEFAULT_SAFETY_TEMPLATE, system_prompt)
             + prefix for r in records]
    ids = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    shared = 0
    while all(len(x) > shared + 1 and x[shared] == ids[0][shared] for x in ids):
        shared += 1
    cache = model(torch.tensor([ids[0][:shared]]), use_cache=True).past_key_values
    feats = []
    for x in ids:
        out = model(torch.tensor([x[shared:]]), past_key_values=copy.deepcopy(cache),
                    output_hidden_states=True)
        feats.append(torch.stack([h[0, -1] for h in out.hidden_states]).numpy())
    return np.stack(feats)


def _ridge_accuracy(x_train, y_train, x_test, y_test, alpha=10.0):
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    a, b = (x_train - mean) / std, (x_test - mean) / std
    a1 = np.concatenate([a, np.ones((len(a), 1))], 1)
    w = np.linalg.solve(a1.T @ a1 + alpha * np.eye(a1.shape[1]), a1.T @ (2 * y_train - 1))
    pred = np.concatenate([b, np.ones((len(b), 1))], 1) @ w > 0
    return float((pred == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-class", type=int, default=150)
    parser.add_argument("--system-prompt", choices=("worked", "none"), default="worked")
    parser.add_argument("--prefix", default="<safety_reasoning>")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = assets.assets_dir() / "models" / "SmolLM2-135M-Instruct"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    system_prompt = WORKED_EXAMPLES_SYSTEM_PROMPT if args.system_prompt == "worked" else ""
    train = _balanced(load_jsonl(assets.assets_dir() / "data" / "train.jsonl"), args.per_class,
                      np.random.default_rng(0))
    held_out = _eval_records()
    x_train = _features(model, tokenizer, train, system_prompt, args.prefix)
    x_test = _features(model, tokenizer, held_out, system_prompt, args.prefix)
    y_train = np.array([r.label == "harmful" for r in train])
    y_test = np.array([r.label == "harmful" for r in held_out])
    print(f"train {len(train)} ({args.per_class} a class), held-out {len(held_out)} "
          f"({int(y_test.sum())} harmful); system prompt: {args.system_prompt}")
    print("| layer | held-out accuracy |\n|---:|---:|")
    for layer in range(x_train.shape[1]):
        acc = _ridge_accuracy(x_train[:, layer], y_train, x_test[:, layer], y_test)
        print(f"| {layer} | {acc:.3f} |")


if __name__ == "__main__":
    main()
