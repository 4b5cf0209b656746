"""Rejection-sampling fine-tuning (RFT) warm start: the policy's own verified samples.

Under the paper's plain template a 135M policy almost never writes the tags (V_f = 1 in 1.3% of
rollouts), so GRPO has nothing to compare, and a system prompt with worked examples, which makes
the reward fire, also hands the policy a text to copy into every answer (docs/learning.md). The
warm start samples under such a scaffold, keeps only what the verifiers accept, and fine-tunes
the policy on it *conditioned on the training prompt* (without the scaffold):

* the tags in order (V_f = 1),
* a refusal exactly when the prompt is harmful (V_r equals the label), and on a harmful
  prompt the template's refusal alone (``\\boxed{Sorry, I can't comply}`` and nothing else in
  the answer: a refusal phrase followed by content, or a disclaimer after a compliance, is
  never a target),
* no run of ``copy_words`` words taken from the scaffold (a copied worked example is not the
  policy's answer to this question; the tags and the template's refusal, which every valid
  answer shares with the scaffold, do not count), and one copy of each distinct completion.

No outside data: the policy writes every target and the verifiers label it.

The targets can instead come from the labels (``rft.targets_from="labels"``, ``collect_labelled``):
every prompt of ``rft.rounds`` training batches gets one, the class's one-sentence reasoning
(``rewards.CLASS_REASONING``) and then the template's refusal on a harmful prompt or, on a
benign one, the policy's own greedy answer to the bare question (no template), cut to whole
sentences within the budget. The scaffolded samples give few targets, most of them the same
refusal string, and a policy fine-tuned on them learns that refusing is what a target looks
like and refuses every question; the labels give one target per prompt, half of them answers,
so what the fine-tuning has to learn is which questions to refuse.

The selection and the packing of targets into update batches are pure functions, tested on
their own; ``collect``, ``collect_labelled`` and ``fine_tune`` run them with the trainer's
sampler and update program.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import logging
from tqdm import tqdm

from alphaalign_jax.config import ConfigValueError
from alphaalign_jax.data.records import LABELS, PromptRecord
from alphaalign_jax.rl.optim import OptimizerSettings
from alphaalign_jax.rl.step import LossSettings, NonFiniteError
from alphaalign_jax.rewards.template import CLASS_REASONING
from alphaalign_jax.rewards.verifiers import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    REASONING_CLOSE,
    REASONING_OPEN,
    TEMPLATE_REFUSAL,
    format_verifier,
    is_template_refusal,
)

_WORD = re.compile(r"\w+")
# What the template asks every answer to contain: not content, so never a copy.
_FIXED = re.compile("|".join(re.escape(x) for x in (
    REASONING_OPEN, REASONING_CLOSE, ANSWER_OPEN, ANSWER_CLOSE,
    TEMPLATE_REFUSAL)))
# ``(label, completion) -> V_r``: how a completion's decision is read, as the reward reads it
# (SafetyRewardConfig.refusal).
Refusal = Callable[[str, str], float]


@dataclasses.dataclass(frozen=True)
class WarmStartSettings:
    rounds: int  # training batches the targets come from (0 with a targets_file)
    targets_from: str  # "samples" (verified samples under the scaffold) or "labels"
    targets_file: str  # a previous warm start's kept samples instead; "" = none
    scaffold: str  # the system prompt samples are drawn under
    temperature: float  # of those samples; 0 = the rollouts'
    copy_words: int  # a kept sample shares no run of this many words with the scaffold
    targets_of: str  # the classes whose samples are targets (config.RFT_TARGETS_OF)
    min_kept: int  # fewer targets is an error
    epochs: int
    balance: bool  # repeat the smaller class's targets up to the larger's each epoch
    optimizer: OptimizerSettings
    seed: int  # the run's seed: sampling seeds and the epochs' order
    batch_rows: int  # targets an update batch (a rollout step's rows)
    group_size: int  # rollouts a prompt when sampling
    width: int  # completion tokens of a target (the rollouts' budget)
    response_prefix: str
    refusal: Refusal  # how a completion's decision is read (the reward's reading)


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Every run of ``n`` consecutive words (lower-cased, punctuation dropped) within the
    text between the template's fixed parts (tags, the boxed refusal), which break a run."""
    grams = set()
    for part in _FIXED.split(text):
        words = _WORD.findall(part.lower())
        grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return grams


REASONS = ("kept", "label", "format", "decision", "not_template", "copied", "duplicate",
           "unfinished")


class Verdict(NamedTuple):
    keep: bool
    reason: str  # one of REASONS


def judge(record: PromptRecord, text: str, seen: set[str], *, scaffold_ngrams: set,
          copy_words: int, refusal: Refusal, labels: Sequence[str] = LABELS) -> Verdict:
    """Whether one completion (response prefix included) is a training target; ``seen`` holds
    the completions already kept for this prompt and is updated when this one is kept. The
    decision is read as the reward reads it (``refusal``: ``SafetyRewardConfig.refusal``);
    only prompts of ``labels`` give targets."""
    if record.label not in labels:
        return Verdict(False, "label")
    if format_verifier(text) != 1.0:
        return Verdict(False, "format")
    if (refusal(record.label, text) == 1.0) != (record.label == "harmful"):
        return Verdict(False, "decision")
    if record.label == "harmful" and not is_template_refusal(text):
        return Verdict(False, "not_template")
    if scaffold_ngrams and word_ngrams(text, copy_words) & scaffold_ngrams:
        return Verdict(False, "copied")
    if text in seen:
        return Verdict(False, "duplicate")
    seen.add(text)
    return Verdict(True, "kept")


def select(records: Sequence[PromptRecord], texts: Sequence[Sequence[str]], *, scaffold: str,
           copy_words: int, refusal: Refusal, labels: Sequence[str] = LABELS
           ) -> tuple[np.ndarray, dict[str, int]]:
    """[P, G] bool mask of the rollouts to train on, and how many fell to each reason."""
    scaffold_ngrams = word_ngrams(scaffold, copy_words) if scaffold else set()
    keep = np.zeros((len(records), len(texts[0]) if texts else 0), bool)
    counts = dict.fromkeys(REASONS, 0)
    for p, (record, group) in enumerate(zip(records, texts, strict=True)):
        seen: set[str] = set()
        for g, text in enumerate(group):
            verdict = judge(record, text, seen, scaffold_ngrams=scaffold_ngrams,
                            copy_words=copy_words, refusal=refusal, labels=labels)
            keep[p, g] = verdict.keep
            counts[verdict.reason] += 1
    return keep, counts


def target_labels(targets_of: str) -> tuple[str, ...]:
    """The prompt labels whose samples can be targets (``config.RFT_TARGETS_OF``): "both"
    classes, or "benign" only (the warm start then teaches the format by answering, and never
    the template's refusal)."""
    return LABELS if targets_of == "both" else ("benign",)


class Target(NamedTuple):
    """One kept sample: the training prompt's token ids and the sampled completion's."""

    prompt_ids: np.ndarray  # [n] int32, unpadded
    completion_ids: np.ndarray  # [C] int32, right-padded
    completion_mask: np.ndarray  # [C] bool


def pack(targets: Sequence[Target], *, group_size: int, groups_per_batch: int,
         width_of) -> list[dict[str, np.ndarray]]:
    """Kept samples as update batches in the trainer's layout: samples of one prompt share a
    group (at most ``group_size`` rows, the rest masked out), ``groups_per_batch`` groups a
    batch (a short last batch is filled with masked groups). ``width_of(n)`` is the padded
    prompt width for a longest prompt of n tokens (the sampler's buckets)."""
    by_prompt: dict[bytes, list[Target]] = {}
    for t in targets:
        by_prompt.setdefault(t.prompt_ids.tobytes(), []).append(t)
    groups = []
    for same in by_prompt.values():
        for start in range(0, len(same), group_size):
            groups.append(same[start:start + group_size])
    batches = []
    for start in range(0, len(groups), groups_per_batch):
        chunk = groups[start:start + groups_per_batch]
        chunk += [[chunk[0][0]]] * (groups_per_batch - len(chunk))  # masked filler groups
        real = min(len(groups) - start, groups_per_batch)
        width = width_of(max(len(g[0].prompt_ids) for g in chunk))
        completion_len = len(chunk[0][0].completion_ids)
        rows = groups_per_batch * group_size
        batch = {"prompt_ids": np.zeros((groups_per_batch, width), np.int32),
                 "prompt_mask": np.zeros((groups_per_batch, width), bool),
                 "completion_ids": np.zeros((rows, completion_len), np.int32),
                 "completion_mask": np.zeros((rows, completion_len), bool)}
        for p, group in enumerate(chunk):
            ids = group[0].prompt_ids
            batch["prompt_ids"][p, width - len(ids):] = ids
            batch["prompt_mask"][p, width - len(ids):] = True
            for g in range(group_size):
                t = group[min(g, len(group) - 1)]
                row = p * group_size + g
                batch["completion_ids"][row] = t.completion_ids
                batch["completion_mask"][row] = t.completion_mask & (g < len(group)) & (p < real)
        batches.append(batch)
    return batches


class Collected(NamedTuple):
    targets: list[Target]
    counts: dict[str, int]  # samples by verdict
    kept: list[dict]  # the kept samples as text: label, prompt, completion


def collect(s: WarmStartSettings, next_records: Callable[[], list[PromptRecord]],
            sample: Callable, encode: Callable[[list[PromptRecord]], list]) -> Collected:
    """``s.rounds`` batches sampled under the scaffold, the verified ones kept.

    ``sample(records, seed, system_prompt, temperature) -> (Rollouts, texts [P][G])`` is the
    trainer's sampler; ``encode(records)`` gives the token ids of the *training* prompts the
    targets are conditioned on. Seeds are a function of (train.seed, round): deterministic.
    """
    group = s.group_size
    targets, kept, counts = [], [], {}
    for round_index in tqdm(range(s.rounds), desc="warm start: sampling", unit="batch",
                            dynamic_ncols=True):
        records = next_records()
        seed = int(np.random.SeedSequence([s.seed, 7, round_index])
                   .generate_state(1)[0] >> 1)
        rollouts, texts = sample(records, seed, s.scaffold, s.temperature)
        keep, round_counts = select(records, texts, scaffold=s.scaffold,
                                    copy_words=s.copy_words, refusal=s.refusal,
                                    labels=target_labels(s.targets_of))
        counts = {k: counts.get(k, 0) + v for k, v in round_counts.items()}
        logging.info("RFT warm start: round %d/%d sampled, %d kept so far (rejected: %s)",
                     round_index + 1, s.rounds, counts["kept"],
                     {k: v for k, v in counts.items() if k != "kept" and v})
        train_ids = encode(records)
        for p, g in zip(*np.nonzero(keep)):
            row = p * group + g
            kept.append({"label": records[p].label, "prompt": records[p].prompt,
                         "completion": texts[p][g]})
            targets.append(Target(np.asarray(train_ids[p], np.int32),
                                  rollouts.completion_ids[row], rollouts.completion_mask[row]))
    if len(targets) < s.min_kept:
        raise ConfigValueError(
            f"config.rft: {len(targets)} of {sum(counts.values())} warm-start samples passed "
            f"the verifiers (rejected: {counts}), fewer than rft.min_kept={s.min_kept}; use a "
            "scaffold the policy follows (rft.system_prompt) or more rft.rounds")
    return Collected(targets, counts, kept)


# A sentence ends at . ! or ? after a letter or closing mark and before a space or the end;
# "2." of a numbered list and "**." are not ends.
_SENTENCE_END = re.compile(r"[^\d\s*][.!?](?=\s|$)")


def whole_sentences(text: str) -> str:
    """``text`` up to the end of its last complete sentence ("" when it has none): an answer
    cut by the token budget stops mid-sentence, and a target that stops there would teach the
    policy to."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[:ends[-1]].strip() if ends else ""


def labelled_completion(label: str, answer: str = "") -> str:
    """The target a prompt's label gives (response prefix included): the class's reasoning,
    then the template's refusal (harmful) or ``answer`` (benign) in the template's tags."""
    body = TEMPLATE_REFUSAL if label == "harmful" else answer
    return (f"{REASONING_OPEN}{CLASS_REASONING[label]}{REASONING_CLOSE}\n"
            f"{ANSWER_OPEN}{body}{ANSWER_CLOSE}")


def _padded(ids: Sequence[int], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Completion ids right-padded to ``width`` and their mask."""
    completion = np.zeros(width, np.int32)
    completion[:len(ids)] = ids
    return completion, np.arange(width) < len(ids)


def collect_labelled(s: WarmStartSettings,
                     next_records: Callable[[], list[PromptRecord]],
                     answer: Callable[[list[PromptRecord], int], list[str]],
                     encode_prompts: Callable[[list[PromptRecord]], list],
                     encode_completion: Callable[[str], list[int]]) -> Collected:
    """``s.rounds`` batches of training prompts, each prompt's target built from its label
    (``labelled_completion``). ``answer(records, budget)`` is the policy's greedy answer to each
    bare question in at most ``budget`` tokens, the room the completion width leaves after the
    tags and the reasoning. A benign answer is dropped when the verifiers read it as a refusal
    (``decision``: the reward would punish it) or it holds no whole sentence (``unfinished``)."""
    width, prefix = s.width, s.response_prefix
    budget = width - len(encode_completion(labelled_completion("benign")[len(prefix):]))
    if budget < 8:
        raise ConfigValueError(f"config.rollout.max_new_tokens: {width} tokens leave "
                               f"{budget} for a benign warm-start answer; need at least 8")
    # All rounds' prompts first, then the benign ones answered in batches of a rollout step's
    # size (prompts_per_step x num_samples): one greedy generation per batch, not per round.
    records = [r for _ in range(s.rounds) for r in next_records()]
    benign = [r for r in records if r.label == "benign"]
    size = s.batch_rows
    answers = iter([text for start in tqdm(
        range(0, len(benign), size), desc="warm start: plain answers to benign prompts",
        unit="batch", dynamic_ncols=True) for text in answer(benign[start:start + size], budget)])
    targets, kept, counts, chosen = [], [], dict.fromkeys(REASONS, 0), []
    for record in records:
        body = "" if record.label == "harmful" else whole_sentences(next(answers))
        text = labelled_completion(record.label, body)
        ids = encode_completion(text[len(prefix):])
        if record.label == "benign" and (not body or len(ids) > width):
            counts["unfinished"] += 1
            continue
        verdict = judge(record, text, set(), scaffold_ngrams=set(), copy_words=1,
                        refusal=s.refusal)
        counts[verdict.reason] += 1
        if verdict.keep:
            chosen.append((record, text, ids))
    for (record, text, ids), prompt_ids in zip(
            chosen, encode_prompts([r for r, _, _ in chosen]) if chosen else [], strict=True):
        targets.append(Target(np.asarray(prompt_ids, np.int32), *_padded(ids, width)))
        kept.append({"label": record.label, "prompt": record.prompt, "completion": text})
    logging.info("RFT warm start: %d labelled targets from %d prompts (dropped: %s)",
                 counts["kept"], len(records),
                 {k: v for k, v in counts.items() if k != "kept" and v})
    if len(targets) < s.min_kept:
        raise ConfigValueError(
            f"config.rft: {len(targets)} labelled warm-start targets (dropped: {counts}), "
            f"fewer than rft.min_kept={s.min_kept}; use more rft.rounds")
    return Collected(targets, counts, kept)


def load(path: str, *, response_prefix: str, encode_prompts: Callable[[list[PromptRecord]], list],
         encode_completion: Callable[[str], list[int]], width: int,
         refusal: Refusal) -> Collected:
    """A previous warm start's kept samples (its ``rft_targets.jsonl``) as targets, so a
    fine-tuning setting can be measured without sampling again. Every line is verified again
    (tags, decision) and a line that fails, or is not such a row, is an error naming it.

    ``encode_completion`` gives the ids of the text after the response prefix (the prefix is
    part of the training prompt); ``width`` is the completion width the targets are padded to.
    """
    kept, targets = [], []
    for number, line in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
            record = PromptRecord(row["prompt"], row["label"], "rft_targets", f"rft-{number}")
            text = row["completion"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ConfigValueError(f"config.rft.targets_file: {where}: not a kept warm-start "
                                   f"sample (label, prompt, completion): {e}") from None
        if not text.startswith(response_prefix):
            raise ConfigValueError(f"config.rft.targets_file: {where}: the completion does not "
                                   f"start with rollout.response_prefix {response_prefix!r}")
        if not judge(record, text, set(), scaffold_ngrams=set(), copy_words=1,
                     refusal=refusal).keep:
            raise ConfigValueError(f"config.rft.targets_file: {where}: the verifiers reject "
                                   "this completion (tags in order, a refusal exactly on "
                                   "harmful prompts, the template's refusal alone)")
        ids = encode_completion(text[len(response_prefix):])
        if len(ids) > width:
            raise ConfigValueError(f"config.rft.targets_file: {where}: {len(ids)} completion "
                                   f"tokens, more than rollout.max_new_tokens={width}")
        targets.append((record, *_padded(ids, width)))
        kept.append({"label": record.label, "prompt": record.prompt, "completion": text})
    if not targets:
        raise ConfigValueError(f"config.rft.targets_file: {path} holds no samples")
    prompt_ids = encode_prompts([t[0] for t in targets])
    return Collected([Target(np.asarray(ids, np.int32), completion, mask)
                      for ids, (_, completion, mask) in zip(prompt_ids, targets, strict=True)],
                     {"kept": len(targets)}, kept)


def balanced(labels: Sequence[str]) -> np.ndarray:
    """Indices of the targets with each smaller class repeated (cyclically) up to the largest
    class's count, so each class carries the same weight in a fine-tuning epoch."""
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    most = max((len(v) for v in by_class.values()), default=0)
    return np.asarray([idx[k % len(idx)] for idx in by_class.values() for k in range(most)],
                      np.int64)


def loss_settings(settings: LossSettings) -> LossSettings:
    """The training loss's settings turned into the warm start's: token-mean NLL, one target a
    row (each target's prompt computed for it alone)."""
    return settings._replace(kind="nll", group_size=1)


def fine_tune(s: WarmStartSettings, targets: Sequence[Target], labels: Sequence[str],
              state: Any, step: Callable,
              width_of: Callable[[int], int]) -> tuple[Any, list[float]]:
    """``s.epochs`` shuffled passes of ``step(state, batch) -> (state, metrics)`` (an NLL
    update program; batches as ``pack`` lays them out) over the targets, one a row; with
    ``s.balance`` each pass repeats the smaller class's targets (``balanced``).

    Returns the final state and each epoch's token-mean NLL (the loss before each update).
    """
    rng = np.random.default_rng([s.seed, 7])
    pool = balanced(labels) if s.balance else np.arange(len(targets))
    # One prompt width for every batch: one compiled update program, not one a width.
    width = width_of(max(len(t.prompt_ids) for t in targets))
    epoch_loss = []
    for _ in range(s.epochs):
        order = rng.permutation(pool)
        batches = pack([targets[i] for i in order], group_size=1, groups_per_batch=s.batch_rows,
                       width_of=lambda _: width)
        losses = []
        for batch in tqdm(batches, desc=f"warm start: epoch {len(epoch_loss) + 1}/"
                                        f"{s.epochs}", unit="batch", dynamic_ncols=True):
            state, m = step(state, batch)
            # One scalar read a batch (an update takes seconds), so the bar counts finished
            # updates, not dispatched ones (dispatch returns at once and the epoch's last read
            # would wait for all of them).
            losses.append((float(m["loss"]), m["tokens"], m["finite"]))
        loss, tokens, finite = (np.asarray(x, np.float64) for x in zip(*losses))
        if not finite.all():
            raise NonFiniteError("RFT warm start: non-finite loss or gradient; no checkpoint "
                                 "was written")
        epoch_loss.append(float((loss * tokens).sum() / max(tokens.sum(), 1)))
        logging.info("RFT warm start: fine-tuning epoch %d/%d, NLL %.3f", len(epoch_loss),
                     s.epochs, epoch_loss[-1])
    return state, epoch_loss
