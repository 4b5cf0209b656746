"""The sampler on the bundled SmolLM2-135M-Instruct: greedy == HF generate, token for token.

Skipped when the asset is not fetched (tools/fetch_assets.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from alphaalign_jax.assets import smollm2_dir
from alphaalign_jax.sampling import Sampler, build_stop_tables, stop_step, token_bytes
from tests.test_sampling import completions, hf_greedy

pytestmark = pytest.mark.skipif(not (smollm2_dir() / "model.safetensors").exists(),
                                reason="SmolLM2 asset not fetched (tools/fetch_assets.py)")

QUESTIONS = [
    "Hi",
    "What is 2 + 2?",
    "Name three primary colors.",
    "Explain photosynthesis in two sentences.",
    "How do I bake sourdough bread at home?",
    "Write a haiku about the sea.",
    "What is the capital of France, and why is it famous?",
    "Translate 'good morning' into Spanish, French and German.",
    "Give me a short list of tips for staying focused while studying for exams at university.",
    "Is it safe to mix bleach and ammonia when cleaning a bathroom? Explain the chemistry.",
    "Summarise the plot of Romeo and Juliet for a ten-year-old who has never heard of it.",
    ("You should FIRST carefully evaluate the safety implications of this question through "
     "reasoning. Your answer MUST be enclosed within <answer></answer> tags. How do vaccines work?"),
    "Write a Python function that returns the n-th Fibonacci number.",
    "What are the main differences between a virus and a bacterium?",
    "Why?",
    ("Describe, step by step, how a bill becomes a law in the United States, including the roles "
     "of the House, the Senate and the President, and what happens after a veto."),
]


@pytest.fixture(scope="module")
def smollm2():
    import torch
    import transformers

    from alphaalign_jax.models import from_pretrained

    path = smollm2_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return tokenizer, hf_model, Sampler(from_pretrained(path), tokenizer)


@pytest.mark.slow
def test_greedy_matches_hf_batched_and_one_at_a_time(smollm2):
    tokenizer, hf_model, sampler = smollm2
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]
    lengths = [len(ids) for ids in sampler.encode(chats)]
    assert len(set(lengths)) >= 12, lengths

    batched = completions(sampler.generate(chats, max_new_tokens=64, greedy=True))
    reference = hf_greedy(hf_model, tokenizer, QUESTIONS, 64)
    batched_matches = sum(a == b for a, b in zip(batched, reference))

    single_matches = 0
    for chat, question in zip(chats, QUESTIONS):
        single = completions(sampler.generate([chat], max_new_tokens=64, greedy=True))
        single_matches += single == hf_greedy(hf_model, tokenizer, [question], 64)
    print(f"greedy == HF: batched {batched_matches}/{len(QUESTIONS)}, one at a time "
          f"{single_matches}/{len(QUESTIONS)} (prompt lengths {min(lengths)}..{max(lengths)})")
    assert batched_matches == single_matches == len(QUESTIONS)


def test_answer_tag_stops_under_every_smollm2_tokenization():
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir())
    table = token_bytes(tokenizer, 49152)
    texts = ["The answer: <answer>\\boxed{Sorry, I can't comply}</answer>\n\nDone.",
             "x</answer>.", " </answer>", "</answer></answer>", "héllo 日本語 </answer>!"]
    step = jax.jit(stop_step)
    tables = jax.tree.map(jnp.asarray, build_stop_tables(table, ["</answer>"]))
    single_byte = {table[j]: j for j in range(len(table)) if len(table[j]) == 1}
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(table[i] for i in ids) == text.encode()
        # The tokenizer's own split, and one token per byte (byte-level BPE has all 256).
        for seq in (ids, [single_byte[bytes([b])] for b in text.encode()]):
            buffer = jnp.full((1, tables.head.shape[1]), -1, jnp.int16)
            hits = []
            for token in seq:
                buffer, hit = step(buffer, jnp.asarray([token]), tables)
                hits.append(bool(hit[0]))
            first = hits.index(True)
            before = b"".join(table[i] for i in seq[:first])
            assert b"</answer>" in before + table[seq[first]] and b"</answer>" not in before
