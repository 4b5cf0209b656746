"""The rollout sampler on a tiny random Llama with a tiny byte-level BPE tokenizer.

Checks: greedy == HF ``generate(do_sample=False)`` (batched, left-padded, and one
prompt at a time; also with ``scan_layers``); log-probs == the trainer's teacher-forced log-probs; token
frequencies vs softmax(logits / T) (chi-square), top-k/top-p supports; stop
strings however tokenized; EOS; errors; no recompiles within a bucket; the same
greedy output on an 8-device mesh (one block a layer, and scanned).
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from alphaalign_jax.models import from_pretrained
from alphaalign_jax.rl.step import completion_logprobs
from alphaalign_jax.sampling import (
    Sampler,
    bucket,
    build_stop_tables,
    stop_step,
    token_bytes,
    trace_counts,
)
from alphaalign_jax.sampling import sampler as sampler_module
from tests.multidevice import run_on_8_devices

CORPUS = ["The answer is <answer>yes</answer> and the reasoning is safe.",
          "Hello world, how are you today? I am fine, thank you.",
          "Plants make food from sunlight, water and air.",
          "<safety_reasoning>This request is harmless.</safety_reasoning>"] * 20
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PROMPTS = ["Hello", "How do plants make food?", "The answer is", "Why is the sky blue today?",
           "<answer>", "Tell me about the world and how you are today, please."]


def make_tokenizer(out: pathlib.Path):
    """Byte-level BPE (300 ids) whose pad token is EOS, like SmolLM2's ``<|im_end|>``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                                pad_token="<|im_end|>", bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return transformers.AutoTokenizer.from_pretrained(out)


def make_model(out: pathlib.Path, tokenizer):
    """Random 2-layer Llama; a wide init so next-token distributions are far from uniform."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float().eval()
    model.save_pretrained(out, safe_serialization=True)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(hf_dir, tokenizer, torch model, our model, Sampler), shared by the module."""
    path = tmp_path_factory.mktemp("tiny_sampler")
    tokenizer = make_tokenizer(path)
    hf_model = make_model(path, tokenizer)
    model = from_pretrained(path)
    return path, tokenizer, hf_model, model, Sampler(model, tokenizer)


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def hf_greedy(hf_model, tokenizer, prompts, max_new_tokens: int) -> list[list[int]]:
    """HF greedy completions (left-padded batch), cut after the first EOS."""
    import torch

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True)
             for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = hf_model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                eos_token_id=tokenizer.eos_token_id,
                                pad_token_id=tokenizer.pad_token_id)
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        cut = row.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in row else len(row)
        rows.append(row[:cut])
    return rows


def completions(rollouts) -> list[list[int]]:
    return [r.completion_ids[:r.length].tolist() for r in rollouts]


def test_greedy_matches_hf_generate_batched_and_single(tiny):
    _, tokenizer, hf_model, _, sampler = tiny
    ours = sampler.generate([chat(p) for p in PROMPTS], max_new_tokens=24, greedy=True)
    reference = hf_greedy(hf_model, tokenizer, PROMPTS, 24)
    assert completions(ours) == reference
    for prompt in PROMPTS[:3]:
        one = sampler.generate([chat(prompt)], max_new_tokens=24, greedy=True)
        assert completions(one) == hf_greedy(hf_model, tokenizer, [prompt], 24)
    print(f"greedy == HF: {len(PROMPTS)}/{len(PROMPTS)} batched, 3/3 single; "
          f"{sum(r.stop_reason == 'eos' for r in ours)} rows ended with EOS")
    for r in ours:
        eos = r.completion_ids[r.length - 1] == tokenizer.eos_token_id
        assert r.stop_reason == ("eos" if eos else "length")
        assert r.completion_mask.sum() == r.length
        assert not r.completion_ids[r.length:].any() and not r.logprobs[r.length:].any()


def test_scanned_layers_sample_what_hf_generates(tiny):
    path, tokenizer, hf_model, _, _ = tiny
    scanned = Sampler(from_pretrained(path, scan_layers=True), tokenizer)
    ours = scanned.generate([chat(p) for p in PROMPTS], max_new_tokens=24, greedy=True)
    assert completions(ours) == hf_greedy(hf_model, tokenizer, PROMPTS, 24)


def test_prompt_layout_is_what_teacher_forcing_needs(tiny):
    _, tokenizer, _, _, sampler = tiny
    out = sampler.generate(["Hi", chat("A longer question for the model?")], max_new_tokens=5,
                           num_samples=3, seed=1)
    assert out.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert out.completion_ids.shape == out.logprobs.shape == (6, 5)
    for i, prompt_row in enumerate(out.prompt_ids):
        real = prompt_row[out.prompt_mask[i]].tolist()
        text = "Hi" if i < 3 else tokenizer.apply_chat_template(
            chat("A longer question for the model?"), tokenize=False, add_generation_prompt=True)
        assert real == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert out.prompt_mask[i, -1]  # left padding: the prompt ends at the last column
    tokens, mask = out.sequences()
    assert tokens.shape == mask.shape == (6, out.prompt_ids.shape[1] + 5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_trainer_teacher_forced_logprobs(tiny, temperature):
    _, _, _, model, sampler = tiny
    out = sampler.generate([chat(p) for p in PROMPTS], max_new_tokens=20, num_samples=2,
                           temperature=temperature, seed=3, eos_token_ids=())
    tokens, mask = out.sequences()
    trainer_logp, _ = completion_logprobs(model, jnp.asarray(tokens), jnp.asarray(mask), 20,
                                          temperature, 8)
    real = out.completion_mask
    diff = np.abs(np.asarray(trainer_logp) - out.logprobs)[real].max()
    print(f"T={temperature}: max |sampler - teacher-forced| log-prob diff {diff:.2e} "
          f"over {real.sum()} tokens")
    assert diff < 1e-4
    np.testing.assert_allclose(out.sampler_logprobs, out.logprobs, atol=1e-6)  # no truncation


def first_token_distribution(model, tokenizer, prompt: str, temperature: float) -> np.ndarray:
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    logits = np.asarray(model(jnp.asarray([ids])), np.float64)[0, -1] / temperature
    p = np.exp(logits - logits.max())
    return p / p.sum()


def sample_first_tokens(sampler, prompt: str, seeds, **kwargs):
    outs = [sampler.generate([prompt], max_new_tokens=1, num_samples=1000, seed=s, **kwargs)
            for s in seeds]
    return np.concatenate([o.completion_ids[:, 0] for o in outs]), outs


def chi_square_p(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square p-value; tokens with expected count < 5 pooled into one bin."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    return float(stats.chisquare(obs[keep], exp[keep] * obs[keep].sum() / exp[keep].sum()).pvalue)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_token_frequencies_match_tempered_softmax(tiny, temperature):
    _, tokenizer, _, model, sampler = tiny
    probs = first_token_distribution(model, tokenizer, "The answer is", temperature)
    tokens, _ = sample_first_tokens(sampler, "The answer is", range(8), temperature=temperature,
                                    eos_token_ids=())
    counts = np.bincount(tokens, minlength=probs.size)
    p_value = chi_square_p(counts, probs)
    print(f"T={temperature}: chi-square p = {p_value:.3f} over {tokens.size} draws, "
          f"max p = {probs.max():.3f}")
    assert p_value > 1e-3


def test_decode_loop_tokens_match_conditional_distribution(tiny):
    """Second tokens, given the most frequent first token, follow the model's conditional."""
    _, tokenizer, _, model, sampler = tiny
    outs = [sampler.generate(["Hello"], max_new_tokens=2, num_samples=1000, seed=s,
                             eos_token_ids=()) for s in range(4)]
    pairs = np.concatenate([o.completion_ids for o in outs])
    first = np.bincount(pairs[:, 0]).argmax()
    second = pairs[pairs[:, 0] == first, 1]
    ids = tokenizer("Hello", add_special_tokens=False)["input_ids"] + [int(first)]
    logits = np.asarray(model(jnp.asarray([ids])), np.float64)[0, -1]
    probs = np.exp(logits - logits.max())
    p_value = chi_square_p(np.bincount(second, minlength=probs.size), probs / probs.sum())
    print(f"decode step: chi-square p = {p_value:.3f} over {second.size} draws")
    assert p_value > 1e-3


def test_top_k_and_top_p_only_emit_kept_tokens(tiny):
    _, tokenizer, _, model, sampler = tiny
    probs = first_token_distribution(model, tokenizer, "The answer is", 1.0)
    order = np.argsort(-probs)
    top5 = set(order[:5].tolist())
    tokens, outs = sample_first_tokens(sampler, "The answer is", range(3), top_k=5,
                                       eos_token_ids=())
    assert set(tokens.tolist()) <= top5 and len(set(tokens.tolist())) == 5
    kept = probs[order[:5]].sum()
    truncated = np.zeros_like(probs)
    truncated[order[:5]] = probs[order[:5]] / kept
    assert chi_square_p(np.bincount(tokens, minlength=probs.size), truncated) > 1e-3
    # sampler_logprobs are under the truncated distribution; logprobs under the full one.
    out = outs[0]
    np.testing.assert_allclose(out.sampler_logprobs[:, 0] - out.logprobs[:, 0], -np.log(kept),
                               atol=1e-5)

    nucleus_size = int(np.searchsorted(np.cumsum(probs[order]), 0.8) + 1)
    nucleus = set(order[:nucleus_size].tolist())
    tokens, _ = sample_first_tokens(sampler, "The answer is", range(3), top_p=0.8,
                                    eos_token_ids=())
    assert set(tokens.tolist()) <= nucleus and len(set(tokens.tolist())) > 1
    tokens, _ = sample_first_tokens(sampler, "The answer is", range(2), top_k=20, top_p=0.8,
                                    eos_token_ids=())
    assert set(tokens.tolist()) <= nucleus


jitted_stop_step = jax.jit(stop_step)
VOCAB = [b"", b"</", b"answer", b">", b"</answer>", b"x</ans", b"wer>.", b"a", b"</answer>\n",
         b"STOP", b"<", b"/"]


@pytest.mark.parametrize("pieces, hit_at", [
    (["</", "answer", ">"], 2),  # straddles three tokens
    (["</answer>"], 0),  # one token
    (["a", "x</ans", "wer>."], 2),  # ends inside a token
    (["</answer>\n", "a"], 0),  # followed by more bytes in the same token
    (["<", "/", "", "answer", ">"], 4),  # a special (byte-less) token in between
    (["a", "STOP"], 1),  # the second stop string
    (["</", "a", "answer", ">"], None),  # interrupted
])
def test_stop_strings_match_every_tokenization(pieces, hit_at):
    tables = jax.tree.map(jnp.asarray, build_stop_tables(VOCAB, ["</answer>", "STOP"]))
    buffer = jnp.full((1, tables.head.shape[1]), -1, jnp.int16)
    hits = []
    for piece in pieces:
        buffer, hit = jitted_stop_step(buffer, jnp.asarray([VOCAB.index(piece.encode())]), tables)
        hits.append(bool(hit[0]))
    assert hits.index(True) == hit_at if hit_at is not None else not any(hits)


def test_token_bytes_reassemble_text(tiny):
    _, tokenizer, _, _, _ = tiny
    table = token_bytes(tokenizer, 320)  # a model vocabulary padded past the tokenizer's
    assert len(table) == 320 and table[tokenizer.eos_token_id] == b"" and table[310] == b""
    text = "Hi héllo 日本 </answer> \n\t ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert b"".join(table[i] for i in ids) == text.encode()


def ascii_stop_string(table: list[bytes], ids: list[int]) -> str | None:
    """Printable-ASCII text spanning >= 2 tokens of ``ids``, cut inside the last one if it can."""
    for i in range(len(ids) - 1):
        for j in range(i + 1, min(i + 4, len(ids))):
            span = [table[t] for t in ids[i:j + 1]]
            text = b"".join(span)
            if all(span) and all(32 <= c < 127 for c in text):
                return (text[:-1] if len(span[-1]) > 1 else text).decode()
    return None


def test_stop_string_ends_rollout_at_the_completing_token(tiny):
    _, tokenizer, _, _, sampler = tiny
    table = token_bytes(tokenizer, 300)
    for prompt in PROMPTS:
        free = sampler.generate([chat(prompt)], max_new_tokens=40, greedy=True,
                                eos_token_ids=())[0]
        ids = free.completion_ids.tolist()
        stop = ascii_stop_string(table, ids)
        if stop is not None:
            break
    assert stop is not None, "no ASCII span in the greedy completions"
    prefixes = [b"".join(table[t] for t in ids[:n]) for n in range(len(ids) + 1)]
    first = next(n for n, b in enumerate(prefixes) if stop.encode() in b)
    out = sampler.generate([chat(prompt)], max_new_tokens=40, greedy=True, eos_token_ids=(),
                           stop_strings=["never appears ~~", stop])[0]
    assert out.stop_reason == "stop_string" and out.length == first
    assert out.completion_ids[:out.length].tolist() == ids[:first]
    assert stop in out.text


def test_eos_and_length_reasons(tiny):
    _, _, _, _, sampler = tiny
    free = sampler.generate([chat("Hello")], max_new_tokens=12, greedy=True, eos_token_ids=())[0]
    assert free.stop_reason == "length" and free.length == 12
    # the phases of that call: token 0 comes with the prefill, 11 decode steps follow
    timing = sampler.last_timing
    assert timing["decode_steps"] == 11
    assert all(timing[k] > 0 for k in ("prefill_s", "decode_s", "detokenize_s"))
    token = int(free.completion_ids[5])
    first = free.completion_ids.tolist().index(token)
    out = sampler.generate([chat("Hello")], max_new_tokens=12, greedy=True,
                           eos_token_ids=[token])[0]
    assert out.stop_reason == "eos" and out.length == first + 1
    assert out.completion_ids[first] == token and out.completion_mask.sum() == first + 1


def test_clear_errors(tiny):
    _, tokenizer, _, model, sampler = tiny
    with pytest.raises(ValueError, match="max_new_tokens must be > 0"):
        sampler.generate(["hi"], max_new_tokens=0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        sampler.generate(["hi"], max_new_tokens=4, num_samples=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampler.generate(["hi", ""], max_new_tokens=4)
    with pytest.raises(ValueError, match="no prompts"):
        sampler.generate([], max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sampler.generate(["hi"], max_new_tokens=4, temperature=0.0)
    with pytest.raises(ValueError, match="top_p must be in"):
        sampler.generate(["hi"], max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="stop strings must be non-empty"):
        sampler.generate(["hi"], max_new_tokens=4, stop_strings=[""])
    short = Sampler(model, tokenizer, max_prompt_len=8)
    with pytest.raises(ValueError, match="prompt 0 has .* tokens, more than max_prompt_len=8"):
        short.generate([chat("a long prompt")], max_new_tokens=4)
    with pytest.raises(ValueError, match="exceeds max_len=256"):
        sampler.generate(["hi"], max_new_tokens=255)


def test_no_recompiles_within_a_bucket(tiny):
    _, _, _, _, sampler = tiny
    jitted = (sampler_module.prefill, sampler_module.decode_loop, sampler_module._grow)
    # Chat-templated lengths 17..23 tokens: one prompt bucket (24).
    prompts = [["What is up?", "Hi"], ["Why?", "Plants and water"], ["Ok", "max_new"],
               ["Different", "Why?"]]

    def call(i: int, **kw):
        return sampler.generate([chat(p) for p in prompts[i]], num_samples=2, seed=i, **kw)

    call(0, max_new_tokens=40, eos_token_ids=())
    before, sizes = trace_counts(), [f._cache_size() for f in jitted]
    call(1, max_new_tokens=40, eos_token_ids=(), temperature=0.5)
    call(2, max_new_tokens=40, eos_token_ids=(), top_p=1.0, temperature=2.0)
    call(3, max_new_tokens=33)
    assert trace_counts() == before and [f._cache_size() for f in jitted] == sizes
    print(f"compiles after the first call: {before}; unchanged over 3 more calls")
    sampler.generate([chat("A prompt in the next bucket, longer")], max_new_tokens=4)
    assert trace_counts()["prefill"] == before["prefill"] + 1  # the counter does count


def test_buckets():
    assert [bucket(n, 16) for n in (1, 16, 17, 24, 25, 33, 49, 65, 100)] == \
        [16, 16, 24, 24, 32, 48, 64, 96, 128]
    assert [bucket(n) for n in (1, 2, 3, 5, 7, 9)] == [1, 2, 3, 6, 8, 12]


@pytest.mark.slow
def test_8_device_mesh_gives_the_same_greedy_output(tiny):
    path, _, _, _, sampler = tiny
    prompts = PROMPTS + ["One more", "And the eighth prompt?"]
    single = sampler.generate([chat(p) for p in prompts], max_new_tokens=16, greedy=True)
    np.save(path / "single.npy", single.completion_ids)
    np.save(path / "single_logp.npy", single.logprobs)
    out = run_on_8_devices(f"""
        import jax, numpy as np, transformers
        from alphaalign_jax.models import from_pretrained
        from alphaalign_jax.sampling import Sampler
        from alphaalign_jax.sharding import make_mesh
        assert jax.device_count() == 8
        mesh = make_mesh({{"data": 2, "fsdp": 2, "tensor": 2}})
        tok = transformers.AutoTokenizer.from_pretrained("{path}")
        model = from_pretrained("{path}", mesh=mesh)
        prompts = {prompts!r}
        out = Sampler(model, tok, mesh=mesh).generate(
            [[{{"role": "user", "content": p}}] for p in prompts], max_new_tokens=16, greedy=True)
        assert (out.completion_ids == np.load("{path}/single.npy")).all()
        diff = np.abs(out.logprobs - np.load("{path}/single_logp.npy")).max()
        assert diff < 1e-4, diff
        scanned = from_pretrained("{path}", mesh=mesh, scan_layers=True)
        out = Sampler(scanned, tok, mesh=mesh).generate(
            [[{{"role": "user", "content": p}}] for p in prompts], max_new_tokens=16, greedy=True)
        assert (out.completion_ids == np.load("{path}/single.npy")).all()
        diff = max(diff, np.abs(out.logprobs - np.load("{path}/single_logp.npy")).max())
        assert diff < 1e-4, diff
        print("MESH_OK", diff)
    """)
    assert "MESH_OK" in out


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decode_loop_holds_one_kv_cache(tmp_path, scan_layers):
    """The decode loop's temporaries hold no second copy of the KV cache: each layer reads
    its cache and only the new tokens are written, in place (XLA's memory analysis, CPU).
    The scanned loop held a whole copy of the stacked cache before (1,529 of 1,530 MiB
    for the bundled model, 64 rows x 512 slots; docs/tpu_plans.md)."""
    import json

    from alphaalign_jax import aot
    from alphaalign_jax import config as config_lib
    from alphaalign_jax import sharding as shd

    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 1024,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}))
    c = config_lib.base_config("grpo")
    c.model.update(hf_dir=str(tmp_path), scan_layers=scan_layers)
    c.train.prompts_per_step, c.rollout.num_samples = 8, 8
    mesh = shd.make_mesh({"fsdp": 1}, devices=jax.devices()[:1])
    policy, _ = aot._architectures(c)
    graphdef, params, rest = aot._model_state(policy, "float32", "float32", mesh)
    loop = aot._sampler_programs(c, graphdef, params, rest, mesh, width=64, new=512)[-1]
    memory = loop.compiled.memory_analysis()
    cache = 2 * 4 * 64 * 2 * 16 * 512 * 4  # keys and values: layers x rows x heads x dim x slots
    assert memory.output_size_in_bytes >= cache
    assert memory.temp_size_in_bytes < cache / 2, memory.temp_size_in_bytes
