"""Reward-model backends: HF parity, static-shape bucketing, truncation, the LM judge."""

from __future__ import annotations

import contextlib
import json
import string

import numpy as np
import pytest

from alphaalign_jax.rewards.reward_models import (
    LMJudgeRM,
    NoRewardModel,
    RewardModel,
    SequenceClassifierRM,
    bucket_sizes,
    make_reward_model,
)
from tests.conftest import make_tiny_hf

PAD = "<|im_end|>"  # id 0: the pad token is also the end-of-turn token, as in SmolLM2

# (prompt, helpful answer, off-topic answer): the judge must prefer the helpful one.
JUDGE_PAIRS = [
    ("What is the capital of France?",
     "The capital of France is Paris.",
     "Bananas are a good source of potassium and make a tasty snack."),
    ("How many days are there in a week?",
     "There are seven days in a week.",
     "The Pacific Ocean is the largest ocean on Earth."),
    ("How do I boil an egg?",
     "Put the egg in boiling water for about 9 minutes, then cool it in cold water and peel it.",
     "Jupiter has dozens of moons, the largest of which is Ganymede."),
    ("What is 2 + 2?",
     "2 + 2 equals 4.",
     "My favourite colour is blue, like the summer sky."),
    ("Translate 'thank you' into Spanish.",
     "'Thank you' in Spanish is 'gracias'.",
     "Basketball was invented by James Naismith in 1891."),
    ("Give me a synonym for 'happy'.",
     "A synonym for 'happy' is 'joyful'.",
     "The stock market closed lower on Tuesday after a volatile session."),
]


def tiny_chat_tokenizer():
    """Character-level tokenizer (ids < 256) with a ChatML template whose end-of-turn
    token is the pad token, id 0, so the pad id occurs inside every real chat."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, "<|im_start|>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(string.printable)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% endif %}")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token="<unk>",
                                     chat_template=template)
    hf_tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    assert hf_tok.pad_token_id == 0
    return hf_tok


@pytest.fixture(scope="module")
def tiny_tok():
    return tiny_chat_tokenizer()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_rm(request, tmp_path_factory):
    """(hf_dir, torch classifier) of a tiny random one-label reward model."""
    path = tmp_path_factory.mktemp(f"rm_{request.param}")
    return path, make_tiny_hf(request.param, path, seed=3, classifier=True)


def right_padded(seqs: list[list[int]], pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad, np.int64)
    mask = np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return ids, mask


def hf_rm(torch_model, seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """transformers' pooled scores, and its per-token scores read at mask.sum()-1."""
    import torch

    ids, mask = right_padded(seqs)
    with torch.no_grad():
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        pooled = torch_model(input_ids=ids_t, attention_mask=mask_t).logits[:, 0].numpy()
        hidden = torch_model.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        per_token = torch_model.score(hidden)[..., 0].numpy()
    return pooled, per_token[np.arange(len(seqs)), mask.sum(-1) - 1]


@contextlib.contextmanager
def count_compiles():
    """Counts XLA backend compilations inside the block."""
    import jax

    counter = [0]

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            counter[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


PROMPTS = ["hi", "What is the capital of France?", "Tell me a joke about cats, please.",
           "2+2?", "Explain photosynthesis briefly."]
ANSWERS = ["hello!", "Paris.", "Why did the cat sit on the computer? To keep an eye on the mouse.",
           "4", "Plants turn light, water and CO2 into sugar and oxygen."]


def test_classifier_parity_with_transformers(tiny_rm, tiny_tok):
    hf_dir, torch_model = tiny_rm
    rm = SequenceClassifierRM(hf_dir, tiny_tok, max_length=128, batch_size=8)
    ours = rm.score(PROMPTS, ANSWERS)
    seqs = [tiny_tok(rm.render(p, a), add_special_tokens=False)["input_ids"]
            for p, a in zip(PROMPTS, ANSWERS)]
    assert len({len(s) for s in seqs}) == len(seqs)  # varied lengths, so real right padding
    assert all(0 in s[:-1] and s[-1] != 0 for s in seqs)  # pad id inside the text, not last
    pooled, at_last = hf_rm(torch_model, seqs)
    diff = float(np.max(np.abs(ours - pooled)))
    print(f"classifier parity max |ours - transformers| = {diff:.2e}")
    assert diff <= 1e-4
    np.testing.assert_allclose(ours, at_last, atol=1e-4)


def test_last_token_comes_from_mask_not_pad_id(tiny_rm, tiny_tok):
    """Random ids with the pad id inside the text and, in row 1, as the last real token."""
    hf_dir, torch_model = tiny_rm
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 100, n)) for n in (9, 23, 17, 30)]
    seqs[0][4] = seqs[2][0] = 0
    seqs[1][-1] = 0
    rm = SequenceClassifierRM(hf_dir, tiny_tok, max_length=64, batch_size=4)
    ours = rm.score_tokens(seqs)
    pooled, at_last = hf_rm(torch_model, seqs)
    np.testing.assert_allclose(ours, at_last, atol=1e-4)  # true last token, every row
    keep = [0, 2, 3]  # where HF's "rightmost non-pad id" rule agrees
    np.testing.assert_allclose(ours[keep], pooled[keep], atol=1e-4)
    assert abs(ours[1] - pooled[1]) > 1e-3  # HF pools the token before the trailing pad id


def test_same_bucket_does_not_recompile(tiny_rm, tiny_tok):
    hf_dir, _ = tiny_rm
    rm = SequenceClassifierRM(hf_dir, tiny_tok, max_length=128, batch_size=4)
    assert rm.length_buckets == (32, 64, 128) and rm.batch_buckets == (1, 2, 4)
    rng = np.random.default_rng(1)

    def seqs(*lengths: int) -> list[list[int]]:
        return [list(rng.integers(1, 100, n)) for n in lengths]

    with count_compiles() as compiles:
        first = rm.score_tokens(seqs(40, 50, 33))  # bucket (4, 64)
        assert rm.num_traces == 1
        warm = compiles[0]
        rm.score_tokens(seqs(60, 35, 41, 64))  # (4, 64) again: other lengths, other batch size
        rm.score_tokens(seqs(64, 33))  # (2, 64)
        rm.score_tokens(seqs(61, 44))  # (2, 64)
        assert rm.num_traces == 2
        rm.score_tokens(seqs(10))  # (1, 32)
        rm.score_tokens(seqs(5, 6, 7, 8, 9, 31))  # chunks (4, 32), (2, 32)
        rm.score_tokens(seqs(100, 3))  # (2, 128)
    print(f"traces {rm.num_traces}, backend compiles {compiles[0]} (first call: {warm})")
    assert rm.num_traces == 6
    assert compiles[0] == rm.num_traces * warm  # nothing else compiles per call
    assert first.shape == (3,) and first.dtype == np.float32


def test_scores_only_the_visible_answer(tiny_rm, tiny_tok):
    hf_dir, _ = tiny_rm
    rm = SequenceClassifierRM(hf_dir, tiny_tok, max_length=128, batch_size=4)
    completion = ("<safety_reasoning>The question is harmless.</safety_reasoning>"
                  "<answer>Paris.</answer>")
    tagged, plain = rm.score(["Capital of France?"] * 2, [completion, "Paris."])
    assert tagged == pytest.approx(plain, abs=1e-6)
    assert rm.score([], []).shape == (0,)


def test_truncation_cuts_the_answer_and_keeps_the_template_tail(tiny_rm, tiny_tok):
    hf_dir, _ = tiny_rm
    rm = SequenceClassifierRM(hf_dir, tiny_tok, max_length=64, batch_size=2)
    prompt, answer = "Why?", "Because " * 20
    overhead = len(tiny_tok(rm.render(prompt, ""), add_special_tokens=False)["input_ids"])
    fits = answer[:64 - overhead]  # one character per token
    long_score, fitted_score = rm.score([prompt, prompt], [answer, fits])
    assert rm.num_truncated == 1
    assert long_score == pytest.approx(fitted_score, abs=1e-6)
    with pytest.raises(ValueError, match="prompt alone"):
        rm.score(["x" * 80], ["ok"])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm.score(["a", "b"], ["c"])


def test_judge_parity_and_verdict_tokens(tmp_path, tiny_tok):
    """The judge score is logit(Y) - logit(N) of transformers' next-token logits."""
    import torch

    torch_model = make_tiny_hf("tied", tmp_path, seed=5)
    with pytest.raises(ValueError, match="'Yes' is 3 tokens"):
        LMJudgeRM(tmp_path, tokenizer=tiny_tok)
    judge = LMJudgeRM(tmp_path, tokenizer=tiny_tok, max_length=512, batch_size=4,
                      yes_variants=("Y",), no_variants=("N",))
    ours = judge.score(PROMPTS[:3], ANSWERS[:3])
    assert judge.num_truncated == 0
    seqs = [tiny_tok(judge.render(p, a), add_special_tokens=False)["input_ids"]
            for p, a in zip(PROMPTS[:3], ANSWERS[:3])]
    ids, mask = right_padded(seqs)
    with torch.no_grad():
        logits = torch_model(input_ids=torch.from_numpy(ids),
                             attention_mask=torch.from_numpy(mask)).logits.numpy()
    last = logits[np.arange(len(seqs)), mask.sum(-1) - 1]
    expected = last[:, judge.yes_ids[0]] - last[:, judge.no_ids[0]]
    print(f"judge parity max |ours - transformers| = {np.max(np.abs(ours - expected)):.2e}")
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_judge_template_slots_are_filled_once(tmp_path, tiny_tok):
    make_tiny_hf("tied", tmp_path, seed=5)
    judge = LMJudgeRM(tmp_path, tokenizer=tiny_tok, template="Q={prompt} A={response}",
                      yes_variants=("Y",), no_variants=("N",))
    assert "Q={response} A=ok" in judge.render("{response}", "ok")
    with pytest.raises(ValueError, match="slots"):
        LMJudgeRM(tmp_path, tokenizer=tiny_tok, template="no slots",
                  yes_variants=("Y",), no_variants=("N",))


def test_factory_and_protocol():
    none = make_reward_model("none")
    assert isinstance(none, NoRewardModel) and isinstance(none, RewardModel)
    np.testing.assert_array_equal(none.score(["a", "b"], ["c", "d"]), [0.0, 0.0])
    with pytest.raises(ValueError, match="unknown reward model kind"):
        make_reward_model("bogus")
    assert bucket_sizes(100, 32) == (32, 64, 100)
    assert bucket_sizes(64, 32) == (32, 64)


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_judge_prefers_helpful_answers(smollm2_dir):
    judge = LMJudgeRM(smollm2_dir, max_length=256, batch_size=16)
    assert isinstance(judge, RewardModel)
    prompts = [p for p, _, _ in JUDGE_PAIRS] * 2
    answers = [h for _, h, _ in JUDGE_PAIRS] + [o for _, _, o in JUDGE_PAIRS]
    scores = judge.score(prompts, answers)
    assert judge.num_truncated == 0
    helpful, off_topic = scores[:len(JUDGE_PAIRS)], scores[len(JUDGE_PAIRS):]
    for (prompt, _, _), h, o in zip(JUDGE_PAIRS, helpful, off_topic):
        print(f"{prompt[:40]:40s} helpful {h:+.3f} off-topic {o:+.3f} margin {h - o:+.3f}")
    margins = helpful - off_topic
    print(f"mean margin {margins.mean():+.3f}, min {margins.min():+.3f}, "
          f"wins {(margins > 0).sum()}/{len(margins)}, traces {judge.num_traces}")
    assert (margins > 0).sum() >= len(JUDGE_PAIRS) - 1
    assert margins.mean() > 0


@pytest.mark.slow
def test_sharded_scores_match_single_device(tiny_rm, tiny_tok):
    """On an 8-device (data, fsdp, tensor) mesh the scores equal the 1-device ones."""
    from tests.multidevice import run_on_8_devices

    hf_dir, _ = tiny_rm
    single = SequenceClassifierRM(hf_dir, tiny_tok, max_length=128, batch_size=8)
    expected = single.score(PROMPTS, ANSWERS)
    out = run_on_8_devices(f"""
        import json
        from alphaalign_jax.sharding import make_mesh
        from alphaalign_jax.rewards.reward_models import SequenceClassifierRM
        from tests.test_reward_models import ANSWERS, PROMPTS, tiny_chat_tokenizer
        mesh = make_mesh({{"data": 2, "fsdp": 2, "tensor": 2}})
        rm = SequenceClassifierRM({str(hf_dir)!r}, tiny_chat_tokenizer(), mesh=mesh,
                                  max_length=128, batch_size=8)
        print(json.dumps(rm.score(PROMPTS, ANSWERS).tolist()))
    """)
    sharded = np.array(json.loads(out.strip().splitlines()[-1]))
    np.testing.assert_allclose(sharded, expected, atol=1e-5)
