"""The RFT warm start: which samples the verifiers keep, how they are packed, the NLL loss
against a NumPy re-derivation, and the warm start inside the real Trainer (it lowers the NLL of
its targets, is saved as step 0 and is not redone on resume)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax import train as train_lib
from alphaalign_jax import warm_start
from alphaalign_jax.data.records import PromptRecord
from alphaalign_jax import rewards
from alphaalign_jax.rewards import DEFAULT_REFUSAL_PHRASES, REFUSAL_MARKERS, SafetyRewardConfig
from alphaalign_jax.rl import rft
from alphaalign_jax.settings import warm_start_settings
from alphaalign_jax.rl.losses import finalize, nll_loss
from tests.tiny_run import make_tiny_policy, write_prompts

HARMFUL = PromptRecord(prompt="How do I make a bomb?", label="harmful", source="t", id="h")
BENIGN = PromptRecord(prompt="How do I bake bread?", label="benign", source="t", id="b")
SCAFFOLD = "Example. <safety_reasoning>Baking bread is an everyday cooking question.</safety_reasoning>"
REFUSE = "<safety_reasoning>Bombs kill.</safety_reasoning><answer>\\boxed{Sorry, I can't comply}</answer>"
COMPLY = "<safety_reasoning>Cooking is safe.</safety_reasoning><answer>Knead the dough.</answer>"
PAPER_RULE = SafetyRewardConfig(refusal_phrases=DEFAULT_REFUSAL_PHRASES).refusal


def select(records, texts, copy_words=4):
    return rft.select(records, texts, scaffold=SCAFFOLD, copy_words=copy_words,
                      refusal=PAPER_RULE)


def test_select_keeps_verified_distinct_uncopied_samples():
    copied = ("<safety_reasoning>Baking bread is an everyday cooking question here."
              "</safety_reasoning><answer>Knead.</answer>")
    keep, counts = select([HARMFUL, BENIGN], [
        [REFUSE, COMPLY.replace("Cooking is safe.", "Bombs."), "no tags at all", REFUSE],
        [COMPLY, REFUSE, copied, COMPLY]])
    np.testing.assert_array_equal(keep, [[True, False, False, False],
                                         [True, False, False, False]])
    # harmful: 1 kept, 1 complied (decision), 1 untagged (format), 1 repeat (duplicate);
    # benign: 1 kept, 1 refused (decision), 1 copied from the scaffold, 1 repeat
    assert counts == {"kept": 2, "label": 0, "format": 1, "decision": 2, "not_template": 0,
                      "copied": 1, "duplicate": 2, "unfinished": 0}


@pytest.mark.parametrize("answer", [
    "\\boxed{Sorry, I can't comply} Here is how: mix the powders.",
    "I'm sorry, but step 1: buy the pipe. \\boxed{Sorry, I can't comply}",
    "Sorry, I can't comply.",  # the phrase without the template's box
    "\\boxed{Sorry, I can't comply} It is not safe though.",
])
def test_a_harmful_target_is_the_templates_refusal_alone(answer):
    text = f"<safety_reasoning>Bombs kill.</safety_reasoning><answer>{answer}</answer>"
    keep, counts = select([HARMFUL], [[text, REFUSE.replace("}</answer>", ".}</answer>")]])
    np.testing.assert_array_equal(keep, [[False, True]])
    assert counts["not_template"] == 1


def test_copy_check_counts_words_not_characters():
    assert rft.word_ngrams("Baking, BREAD is!", 2) == {("baking", "bread"), ("bread", "is")}
    # the tags and the template's refusal are shared by every valid answer: never a copy
    assert rft.word_ngrams(REFUSE, 2) == {("bombs", "kill")}
    scaffold = "Ex. <safety_reasoning>It kills.</safety_reasoning><answer>\\boxed{Sorry, I can't comply}</answer>"
    assert select([HARMFUL], [[REFUSE]], copy_words=2)[0][0, 0]
    assert rft.select([HARMFUL], [[REFUSE]], scaffold=scaffold, copy_words=2,
                      refusal=PAPER_RULE)[0][0, 0]
    # a shared 3-word run is below a 4-word threshold and is not a copy
    text = COMPLY.replace("Knead the dough.", "everyday cooking question")
    assert select([BENIGN], [[text]], copy_words=4)[0][0, 0]
    assert not select([BENIGN], [[text]], copy_words=3)[0][0, 0]


def test_select_reads_the_decision_as_the_reward_does():
    verdict = COMPLY.replace("Knead the dough.", "This question is not safe.")
    pick = lambda record, scope: rft.select(
        [record], [[verdict]], scaffold="", copy_words=4, refusal=SafetyRewardConfig(
            refusal_markers=REFUSAL_MARKERS, markers_on=scope).refusal)[0][0, 0]
    # a verdict label is never a harmful target, even where a marker reads it as refusing
    assert not pick(HARMFUL, "all") and not pick(HARMFUL, "benign")
    assert not pick(BENIGN, "all") and not pick(BENIGN, "benign")  # a refusal either way
    # the paper's prefix list reads it as an answer, so a benign prompt keeps it
    assert select([BENIGN], [[verdict]])[0][0, 0]


def _target(prompt_len: int, completion_len: int, seed: int) -> rft.Target:
    rng = np.random.default_rng(seed)
    return rft.Target(rng.integers(1, 100, prompt_len).astype(np.int32),
                      rng.integers(1, 100, 6).astype(np.int32), np.arange(6) < completion_len)


def test_pack_groups_samples_of_one_prompt_and_masks_filler():
    a1, a2, a3 = _target(3, 4, 0), _target(3, 2, 1), _target(3, 5, 2)
    a2 = a2._replace(prompt_ids=a1.prompt_ids)
    a3 = a3._replace(prompt_ids=a1.prompt_ids)
    b = _target(5, 6, 3)
    batches = rft.pack([a1, b, a2, a3], group_size=2, groups_per_batch=2,
                       width_of=lambda n: 8)
    # prompt a has three samples: groups (a1, a2) and (a3, masked); then b's group
    assert len(batches) == 2
    first, second = batches
    assert first["prompt_ids"].shape == (2, 8) and first["completion_ids"].shape == (4, 6)
    np.testing.assert_array_equal(first["prompt_ids"][0, -3:], a1.prompt_ids)
    assert first["prompt_mask"][0].sum() == 3 and first["prompt_mask"][1].sum() == 3
    np.testing.assert_array_equal(first["completion_mask"].sum(1), [4, 2, 5, 0])
    np.testing.assert_array_equal(first["completion_ids"][2], a3.completion_ids)
    np.testing.assert_array_equal(second["prompt_ids"][0, -5:], b.prompt_ids)
    np.testing.assert_array_equal(second["completion_mask"].sum(1), [6, 0, 0, 0])  # filler


def test_nll_loss_matches_numpy_and_accumulates_exactly():
    rng = np.random.default_rng(0)
    logp = -rng.exponential(size=(4, 7)).astype(np.float32)
    mask = rng.random((4, 7)) < 0.6
    logp[~mask] = np.nan  # padding may hold anything
    expected = -np.where(mask, logp, 0).sum() / mask.sum()
    loss_sum, count, _ = nll_loss(jnp.asarray(logp), jnp.asarray(mask))
    np.testing.assert_allclose(finalize(loss_sum, count), expected, rtol=1e-6)
    parts = [nll_loss(jnp.asarray(logp[i:i + 2]), jnp.asarray(mask[i:i + 2])) for i in (0, 2)]
    total = finalize(sum(p[0] for p in parts), sum(p[1] for p in parts))
    np.testing.assert_allclose(total, expected, rtol=1e-6)


def _tiny_config(policy, train_file, **rft_fields):
    c = config_lib.base_config()
    c.model.hf_dir = str(policy)
    c.data.train_file = str(train_file)
    c.rollout.update(num_samples=2, max_new_tokens=8, max_prompt_len=192, stop_strings=())
    c.reward.helpfulness = "none"
    c.algo.update(beta=0.0, micro_batch_size=4)
    c.train.update(steps=1, prompts_per_step=2, plot=False, async_checkpointing=False)
    c.rft.update(**{"rounds": 2, "epochs": 3, "learning_rate": 1e-2, "min_kept": 1,
                    **rft_fields})
    return c


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("rft")
    return make_tiny_policy(root / "policy", smollm2_dir), write_prompts(root / "train.jsonl")


@pytest.mark.assets
@pytest.mark.slow
def test_warm_start_fits_its_targets_and_is_saved_once(tiny_files, tmp_path, monkeypatch):
    """A random policy never writes the tags, so every sample is kept here (the selection is
    tested above): the warm start must lower the NLL of its targets epoch by epoch, be saved as
    step 0 before the first RL step, and not run again when the run resumes."""
    monkeypatch.setattr(rft, "select", lambda records, texts, **_: (
        np.ones((len(records), len(texts[0])), bool), {"kept": len(records) * len(texts[0])}))
    config = _tiny_config(*tiny_files)
    trainer = train_lib.Trainer(config, tmp_path)
    trainer.run()
    metrics = json.loads((tmp_path / "rft.json").read_text())
    assert metrics["rft/targets"] == metrics["rft/sampled"] == 2 * 2 * 2
    assert len((tmp_path / "rft_targets.jsonl").read_text().splitlines()) == 8
    nll = [metrics[f"rft/nll_epoch{i}"] for i in (1, 2, 3)]
    assert nll[2] < nll[1] < nll[0], nll
    assert sorted(trainer.checkpoints.all_steps()) == [0, 1]

    calls = []
    monkeypatch.setattr(warm_start, "warm_start", lambda *args: calls.append(1))
    config = _tiny_config(*tiny_files)
    config.train.steps = 2
    train_lib.Trainer(config, tmp_path).run()  # resumes at step 1
    assert calls == []


@pytest.mark.assets
def test_warm_start_without_verified_samples_is_a_config_error(tiny_files, tmp_path):
    config = _tiny_config(*tiny_files, min_kept=8)
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.rft: 0 of 8 warm-start"):
        train_lib.Trainer(config, tmp_path).run()


def test_balanced_repeats_the_smaller_class():
    idx = rft.balanced(["harmful", "benign", "benign", "benign", "harmful", "benign"])
    picked = sorted(idx.tolist())
    assert picked == [0, 0, 1, 2, 3, 4, 4, 5], picked  # 2 harmful repeated to the 4 benign
    assert sorted(rft.balanced(["benign", "harmful"]).tolist()) == [0, 1]


def _load(path, width=32):
    return rft.load(str(path), response_prefix="<safety_reasoning>", width=width,
                    encode_prompts=lambda records: [[len(r.prompt)] for r in records],
                    encode_completion=lambda text: [ord(ch) for ch in text],
                    refusal=PAPER_RULE)


def test_targets_file_is_reverified_and_errors_name_the_line(tmp_path):
    path = tmp_path / "rft_targets.jsonl"
    rows = [{"label": "harmful", "prompt": HARMFUL.prompt, "completion": REFUSE},
            {"label": "benign", "prompt": BENIGN.prompt, "completion": COMPLY}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    collected = _load(path, width=128)
    assert [t["label"] for t in collected.kept] == ["harmful", "benign"]
    after_prefix = REFUSE[len("<safety_reasoning>"):]
    target = collected.targets[0]
    assert target.prompt_ids.tolist() == [len(HARMFUL.prompt)]
    assert target.completion_ids[:len(after_prefix)].tolist() == [ord(c) for c in after_prefix]
    assert target.completion_mask.sum() == len(after_prefix)
    assert not target.completion_ids[len(after_prefix):].any()

    with pytest.raises(config_lib.ConfigValueError, match="more than rollout.max_new_tokens"):
        _load(path, width=16)
    bad = {"label": "benign", "prompt": BENIGN.prompt, "completion": REFUSE}  # refuses benign
    for line, message in ((json.dumps(bad), "the verifiers reject"),
                          ('{"label": "harmful"', "not a kept warm-start sample"),
                          (json.dumps({**bad, "label": "other"}), "not a kept warm-start"),
                          (json.dumps({**bad, "completion": "no prefix"}), "the completion does not start")):
        path.write_text(json.dumps(rows[0]) + "\n" + line + "\n")
        with pytest.raises(config_lib.ConfigValueError, match=f"{path}:2: {message}"):
            _load(path, width=128)


@pytest.mark.assets
@pytest.mark.slow
def test_warm_start_from_a_targets_file_skips_sampling(tiny_files, tmp_path, monkeypatch):
    """``rft.targets_file``: a previous warm start's kept samples are fine-tuned on (balanced:
    the one benign target is repeated to the two harmful ones) without sampling a round."""
    path = tmp_path / "kept.jsonl"
    rows = [{"label": "harmful", "prompt": HARMFUL.prompt, "completion": REFUSE},
            {"label": "harmful", "prompt": "How do I steal a car?", "completion": REFUSE},
            {"label": "benign", "prompt": BENIGN.prompt, "completion": COMPLY}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(rft, "collect", lambda *a, **k: pytest.fail("sampled"))
    config = _tiny_config(*tiny_files, rounds=0, targets_file=str(path), balance=True)
    config.rollout.max_new_tokens = 48
    train_lib.Trainer(config, tmp_path / "run").run()
    metrics = json.loads((tmp_path / "run" / "rft.json").read_text())
    assert metrics["rft/targets"] == 3 and metrics["rft/targets_harmful"] == 2
    nll = [metrics[f"rft/nll_epoch{i}"] for i in (1, 2, 3)]
    assert nll[2] < nll[1] < nll[0], nll


def test_targets_file_with_sampling_rounds_is_a_config_error():
    c = config_lib.base_config()
    c.rft.update(rounds=2, targets_file="runs/x/rft_targets.jsonl")
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.rft\.targets_file: replaces"):
        config_lib.validate(c)


@pytest.mark.assets
@pytest.mark.slow
def test_kl_reference_is_the_warm_started_policy_across_a_resume(tiny_files, tmp_path):
    """With a KL term after a warm start, the reference is the warm-started policy (kept in
    <workdir>/warm_start), not the base model, in the first run and after a resume."""
    from flax import nnx

    from alphaalign_jax.checkpoint import load_model
    from alphaalign_jax.models import from_pretrained

    path = tmp_path / "kept.jsonl"
    path.write_text(json.dumps({"label": "harmful", "prompt": HARMFUL.prompt,
                                "completion": REFUSE}) + "\n")

    def flat(params):
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(nnx.to_pure_dict(params))])

    def run(steps):
        config = _tiny_config(*tiny_files, rounds=0, targets_file=str(path))
        config.rollout.max_new_tokens = 48
        config.algo.beta = 0.04
        config.train.steps = steps
        trainer = train_lib.Trainer(config, tmp_path / "run")
        trainer.run()
        return flat(trainer.reference.params)

    first = run(1)
    warm = flat(nnx.split(load_model(tmp_path / "run" / "warm_start"), nnx.Param, ...)[1])
    base = flat(nnx.split(from_pretrained(tiny_files[0]), nnx.Param, ...)[1])
    assert np.abs(warm - base).max() > 1e-3  # the warm start moved the policy
    np.testing.assert_array_equal(first, warm)
    np.testing.assert_array_equal(run(2), warm)  # resumed at step 1


def test_targets_of_benign_keeps_no_harmful_sample():
    keep, counts = rft.select([HARMFUL, BENIGN], [[REFUSE], [COMPLY]], scaffold="",
                              copy_words=4, refusal=PAPER_RULE,
                              labels=rft.target_labels("benign"))
    np.testing.assert_array_equal(keep, [[False], [True]])
    assert (counts["label"], counts["kept"]) == (1, 1)
    assert rft.target_labels("both") == ("harmful", "benign")


@pytest.mark.parametrize("text, whole", [
    ("Knead the dough. Let it rise for an hour. Then ba", "Knead the dough. Let it rise for an hour."),
    ("Steps:\n\n1. Open the app.\n2.", "Steps:\n\n1. Open the app."),
    ("1. **Research**: read the reviews!\n2. **", "1. **Research**: read the reviews!"),
    ("Is it ripe? Press it gently", "Is it ripe?"),
    ("No sentence ends here", ""),
    ("Version 2.5 is out", ""),
])
def test_whole_sentences_cuts_at_the_last_complete_sentence(text, whole):
    assert rft.whole_sentences(text) == whole


def _labelled_config(**fields):
    c = config_lib.base_config()
    c.rollout.update(max_new_tokens=200, response_prefix="<safety_reasoning>")
    c.reward.update(refusal_markers=REFUSAL_MARKERS, markers_on="benign", whole_refusal=True)
    c.rft.update(**{"rounds": 2, "targets_from": "labels", "min_kept": 1, **fields})
    return c


def test_labelled_targets_are_the_class_reasoning_then_refusal_or_the_plain_answer():
    """Every harmful prompt gets the reasoning and the template's refusal; a benign one the
    reasoning and the policy's plain answer cut to whole sentences, unless that answer refuses
    (the reward would punish it) or has no whole sentence; each target passes the verifiers."""
    batches = iter([[HARMFUL, BENIGN], [BENIGN, HARMFUL, BENIGN]])
    plain = iter([["Knead the dough. Let it", "I'm sorry, I cannot help.", "Mix flour"]])
    budgets = []

    def answer(records, budget):
        budgets.append(budget)
        assert all(r.label == "benign" for r in records)
        return next(plain)

    collected = rft.collect_labelled(warm_start_settings(_labelled_config()),
                                     lambda: next(batches), answer,
                                     encode_prompts=lambda rs: [[len(r.prompt)] for r in rs],
                                     encode_completion=lambda text: list(text.encode()))
    reasoning = rewards.CLASS_REASONING
    assert [k["completion"] for k in collected.kept] == [
        f"<safety_reasoning>{reasoning['harmful']}</safety_reasoning>\n"
        "<answer>\\boxed{Sorry, I can't comply}</answer>",
        f"<safety_reasoning>{reasoning['benign']}</safety_reasoning>\n"
        "<answer>Knead the dough.</answer>",
        f"<safety_reasoning>{reasoning['harmful']}</safety_reasoning>\n"
        "<answer>\\boxed{Sorry, I can't comply}</answer>"]
    assert collected.counts["kept"] == 3
    assert (collected.counts["decision"], collected.counts["unfinished"]) == (1, 1)
    # the budget is what the width leaves after the tags and the reasoning (bytes here)
    wrapper = len(rft.labelled_completion("benign").encode()) - len("<safety_reasoning>")
    assert budgets == [200 - wrapper]  # one generation for every round's benign prompts
    target = collected.targets[1]
    text = collected.kept[1]["completion"][len("<safety_reasoning>"):]
    assert target.completion_mask.sum() == len(text.encode())
    assert target.prompt_ids.tolist() == [len(BENIGN.prompt)]


def test_labelled_targets_need_room_and_a_prefix_the_targets_begin_with():
    never = lambda *a: pytest.fail("called")
    c = _labelled_config()
    c.rollout.response_prefix = "<answer>"
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.rollout\.response_prefix"):
        config_lib.validate(c)
    c = _labelled_config()
    c.rollout.max_new_tokens = 40
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.rollout\.max_new_tokens"):
        rft.collect_labelled(warm_start_settings(c), never, never, never,
                             lambda t: list(t.encode()))
    c = _labelled_config(targets_of="benign")
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.rft\.targets_of"):
        config_lib.validate(c)
    c = _labelled_config(targets_from="label")
    with pytest.raises(config_lib.ConfigValueError, match=r"config\.rft\.targets_from"):
        config_lib.validate(c)


@pytest.mark.assets
@pytest.mark.slow
def test_warm_start_from_labels_in_the_trainer(tiny_files, tmp_path, monkeypatch):
    """``rft.targets_from="labels"``: no scaffold is sampled; each prompt of the batch gets its
    label's target (the random policy's plain answers have no whole sentence, so only the
    harmful ones are kept), the policy's greedy answers are asked for with the budget the width
    leaves, and the warm start is fine-tuned and saved as step 0."""
    monkeypatch.setattr(rft, "collect", lambda *a, **k: pytest.fail("sampled"))
    config = _tiny_config(*tiny_files, rounds=1, targets_from="labels")
    config.rollout.update(max_new_tokens=64, response_prefix="<safety_reasoning>")
    trainer = train_lib.Trainer(config, tmp_path / "run")
    budgets = []
    plain = trainer.policy.plain_answers
    monkeypatch.setattr(trainer.policy, "plain_answers",
                        lambda records, budget: budgets.append(budget) or plain(records, budget))
    trainer.run()
    metrics = json.loads((tmp_path / "run" / "rft.json").read_text())
    kept = [json.loads(line) for line in (tmp_path / "run" / "rft_targets.jsonl").open()]
    assert metrics["rft/sampled"] == 2 and len(budgets) == 1 and 8 <= budgets[0] < 64
    assert all(k["completion"] == rft.labelled_completion(k["label"], "") for k in kept
               if k["label"] == "harmful")
    assert metrics["rft/targets"] == len(kept) >= 1
    assert (tmp_path / "run" / "warm_start").exists()
