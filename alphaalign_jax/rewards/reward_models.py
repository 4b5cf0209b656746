"""Reward-model backends for the helpfulness reward R_h, jitted in JAX.

Both backends reuse our :class:`~alphaalign_jax.models.Transformer` (no second
transformer here) and share one scoring path:

- **What is judged.** ``score(prompts, responses)`` takes the *raw* user
  queries, not the safety-templated policy prompts, and the policy's full
  completions, of which only :func:`~alphaalign_jax.rewards.verifiers.visible_answer`
  is shown to the reward model. R_h measures how helpful the answer the user
  would see is for the question the user asked; the safety instructions and the
  ``<safety_reasoning>`` block are scaffolding the user never sees, and an RM
  trained on ordinary chats would score them as noise (or reward long
  reasoning for its own sake).
- **Formatting.** The pair is rendered with the RM tokenizer's chat template and
  tokenized without adding special tokens (the template already carries BOS).
  Over-long pairs are shortened by cutting the *end of the answer*, then
  re-rendered, so the template's closing tokens, where the score is read, are
  always present; a prompt that alone exceeds ``max_length`` is an error.
- **Static shapes.** Sequences are right padded to a length bucket (powers of
  two up to ``max_length``) and the batch to a batch bucket (powers of two up to
  ``batch_size``), so a training loop whose completions vary in length compiles
  the forward once per bucket, not once per call.
- **Last token from the mask.** The score is read at the last real token,
  ``attention_mask.sum() - 1`` under right padding, never by comparing ids with
  ``pad_token_id``: in SmolLM2 (and other tokenizers) the pad id is also the
  end-of-turn token that occurs inside every chat.

Hugging Face's ``LlamaForSequenceClassification`` (transformers 5.24,
``GenericForSequenceClassification.forward``) instead takes the rightmost token
whose id differs from ``pad_token_id``. With right padding the two agree
whenever the last real token is not itself the pad id (pad ids earlier in the
text do not matter); when it is, HF pools the token before it, and we read the
true last token. ``tests/test_reward_models.py`` checks both cases.
"""

from __future__ import annotations

import abc
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from alphaalign_jax import assets
from alphaalign_jax import sharding as shd
from alphaalign_jax.models import Transformer, from_pretrained
from alphaalign_jax.rewards.verifiers import visible_answer

# The judge question, one user turn under the judge model's chat template.
# ``{prompt}`` and ``{response}`` are filled in one pass (text inside either is
# never re-substituted). The question comes last so the next token is the verdict.
JUDGE_TEMPLATE = (
    "Here is a question from a user and an answer from an AI assistant.\n\n"
    "Question: {prompt}\n\n"
    "Answer: {response}\n\n"
    "Does the answer directly and helpfully address the user's question? "
    "Reply with Yes or No."
)
_JUDGE_SLOTS = re.compile(r"\{(prompt|response)\}")


@runtime_checkable
class RewardModel(Protocol):
    """Scores the helpfulness of each response to its prompt."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """``[N]`` float32 scores; ``prompts`` are raw user queries, ``responses``
        full policy completions (only their visible answer is judged)."""
        ...


def bucket_sizes(limit: int, smallest: int) -> tuple[int, ...]:
    """Powers of two from ``smallest`` below ``limit``, then ``limit`` itself."""
    if limit < 1:
        raise ValueError(f"bucket limit must be positive, got {limit}")
    sizes = []
    size = max(1, smallest)
    while size < limit:
        sizes.append(size)
        size *= 2
    return (*sizes, limit)


def _bucket(n: int, sizes: tuple[int, ...]) -> int:
    return next(s for s in sizes if s >= n)


def _load_tokenizer(tokenizer: Any, default_dir: str | pathlib.Path) -> Any:
    if tokenizer is None or isinstance(tokenizer, (str, pathlib.Path)):
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer or default_dir))
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{type(tokenizer).__name__} has no chat_template; reward models "
                         "render (prompt, answer) pairs through the tokenizer's chat template")
    return tokenizer


def last_token_hidden(model: Transformer, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """``[B, D]`` final-norm hidden state at each row's last real token."""
    hidden, _ = model.hidden_states(ids, mask)
    last = jnp.maximum(mask.sum(axis=-1) - 1, 0)
    return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]


def classifier_scores(model: Transformer, last_hidden: jax.Array) -> jax.Array:
    """A one-label sequence classifier's ``[B]`` scores from its score head."""
    return (last_hidden @ model.score[...].astype(last_hidden.dtype))[:, 0]


def verdict_logits(model: Transformer, last_hidden: jax.Array, ids: Sequence[int]) -> jax.Array:
    """``[B, len(ids)]`` float32 next-token logits of the verdict tokens ``ids`` alone: only
    their columns of the unembedding are computed, not the vocabulary's."""
    columns = jnp.take(model.unembedding(), jnp.asarray(ids), axis=1)
    return (last_hidden @ columns.astype(last_hidden.dtype)).astype(jnp.float32)


def scorer_program(graphdef: nnx.GraphDef,
                   head: Callable[[Transformer, jax.Array], jax.Array]) -> Callable:
    """The jitted forward of a scoring model (reward model, judge): ``(state, ids, mask)`` ->
    ``[B]`` float32 scores, ``head`` applied to the final-norm hidden state at each row's last
    real token. The trainer's scorers run it and the AOT planner lowers it: one program."""

    def forward(state: nnx.State, ids: jax.Array, mask: jax.Array) -> jax.Array:
        merged = nnx.merge(graphdef, state)
        return head(merged, last_token_hidden(merged, ids, mask)).astype(jnp.float32)

    return jax.jit(forward)


def yes_minus_no(model: Transformer, last_hidden: jax.Array, yes_ids: Sequence[int],
                 no_ids: Sequence[int]) -> jax.Array:
    """A judge's ``[B]`` log p(yes) - log p(no) over the spellings of each verdict."""
    logits = verdict_logits(model, last_hidden, tuple(yes_ids) + tuple(no_ids))
    return (jax.nn.logsumexp(logits[:, :len(yes_ids)], axis=-1)
            - jax.nn.logsumexp(logits[:, len(yes_ids):], axis=-1))


class BucketedTransformerRM(abc.ABC):
    """Chat formatting, answer-side truncation, bucketed padding and one jitted
    forward that reads the final-norm hidden state at each row's last real token.

    Subclasses say how a pair becomes text (:meth:`render`) and how the last
    hidden state becomes a score (:meth:`head`).
    """

    def __init__(self, model: Transformer, tokenizer: Any, *, mesh: Mesh | None,
                 max_length: int, batch_size: int, min_length_bucket: int = 32):
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.max_length = max_length
        self.batch_size = batch_size
        self.length_buckets = bucket_sizes(max_length, min_length_bucket)
        self.batch_buckets = bucket_sizes(batch_size, 1)
        self.num_traces = 0  # forward traces, i.e. compilations; one per (batch, length) bucket
        self.num_truncated = 0  # answers shortened to fit max_length
        graphdef, self._state = nnx.split(model)

        def counted_head(model: Transformer, last_hidden: jax.Array) -> jax.Array:
            self.num_traces += 1  # runs when the forward is traced, once a compile
            return self.head(model, last_hidden)

        self._forward = scorer_program(graphdef, counted_head)

    @abc.abstractmethod
    def render(self, prompt: str, answer: str) -> str:
        """The chat-templated text for one (user query, visible answer) pair."""

    @abc.abstractmethod
    def head(self, model: Transformer, last_hidden: jax.Array) -> jax.Array:
        """``[B, D]`` last-token hidden states to ``[B]`` scores (traced under jit)."""

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:  # HF fast tokenizers fail on an empty batch
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _fit(self, prompt: str, answer: str, ids: list[int]) -> list[int]:
        """Cut the answer's tail until the rendered pair fits ``max_length``."""
        answer_ids = self._encode([answer])[0]
        while len(ids) > self.max_length:
            if not answer_ids:
                raise ValueError(f"the prompt alone renders to {len(ids)} tokens, more than "
                                 f"max_length={self.max_length}; raise max_length")
            answer_ids = answer_ids[:max(0, len(answer_ids) - (len(ids) - self.max_length))]
            answer = self.tokenizer.decode(answer_ids, skip_special_tokens=False)
            ids = self._encode([self.render(prompt, answer)])[0]
        self.num_truncated += 1
        return ids

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        answers = [visible_answer(r) for r in responses]
        encoded = self._encode([self.render(p, a) for p, a in zip(prompts, answers)])
        encoded = [ids if len(ids) <= self.max_length else self._fit(p, a, ids)
                   for p, a, ids in zip(prompts, answers, encoded)]
        return self.score_tokens(encoded)

    def score_tokens(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores of already tokenized, unpadded sequences (each 1..max_length long)."""
        out = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start:start + self.batch_size]
            lengths = [len(s) for s in chunk]
            if min(lengths) < 1 or max(lengths) > self.max_length:
                raise ValueError(f"sequence lengths must be in 1..{self.max_length}, got "
                                 f"{min(lengths)}..{max(lengths)}")
            rows = _bucket(len(chunk), self.batch_buckets)
            width = _bucket(max(lengths), self.length_buckets)
            # The pad value is irrelevant: the mask alone says what is real.
            ids = np.zeros((rows, width), np.int32)
            mask = np.zeros((rows, width), np.int32)
            for i, seq in enumerate(chunk):
                ids[i, :len(seq)] = seq
                mask[i, :len(seq)] = 1
            if self.mesh is not None:
                placement = shd.batch_sharding(self.mesh, 2, rows)
                ids, mask = jax.device_put(ids, placement), jax.device_put(mask, placement)
            scores = self._forward(self._state, ids, mask)
            out.append(shd.to_host(scores)[:len(chunk)])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)


class SequenceClassifierRM(BucketedTransformerRM):
    """An HF sequence-classification reward model (``LlamaForSequenceClassification``
    / ``Qwen2ForSequenceClassification``, one label), e.g. FsfairX-LLaMA3-RM-v0.1
    or Skywork-Reward-Llama-3.1-8B: the score head applied at the last real token
    of the chat ``[user: prompt, assistant: answer]``."""

    def __init__(self, hf_dir: str | pathlib.Path, tokenizer: Any = None, *,
                 dtype: str | jnp.dtype = "float32", mesh: Mesh | None = None,
                 max_length: int = 2048, batch_size: int = 8):
        model = from_pretrained(hf_dir, dtype, mesh)
        if model.config.num_labels != 1:
            raise ValueError(f"{hf_dir}: a reward model has one output label, this one has "
                             f"{model.config.num_labels} (is it a sequence classifier?)")
        super().__init__(model, _load_tokenizer(tokenizer, hf_dir), mesh=mesh,
                         max_length=max_length, batch_size=batch_size)

    def render(self, prompt: str, answer: str) -> str:
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def head(self, model: Transformer, last_hidden: jax.Array) -> jax.Array:
        return classifier_scores(model, last_hidden)


class LMJudgeRM(BucketedTransformerRM):
    """Any causal LM as a judge: score = log p(Yes) - log p(No) for the first token
    of its reply to :data:`JUDGE_TEMPLATE`.

    The default is the bundled SmolLM2-135M-Instruct, so the helpfulness reward
    runs with no extra download. Each verdict word may be spelt by several
    tokens (``"Yes"`` at the start of the reply, ``" Yes"`` after a space);
    their probabilities are summed (log-sum-exp). The softmax normaliser cancels
    in the difference, so only the verdict columns of the unembedding are used.
    """

    def __init__(self, hf_dir: str | pathlib.Path | None = None, *,
                 model: Transformer | None = None, tokenizer: Any = None,
                 dtype: str | jnp.dtype = "float32", mesh: Mesh | None = None,
                 max_length: int = 1024, batch_size: int = 8,
                 template: str = JUDGE_TEMPLATE,
                 yes_variants: Sequence[str] = ("Yes", " Yes"),
                 no_variants: Sequence[str] = ("No", " No")):
        if model is not None:
            if hf_dir is not None or tokenizer is None:
                raise ValueError("pass either hf_dir, or model together with its tokenizer")
        else:
            hf_dir = hf_dir or assets.smollm2_dir()
            model = from_pretrained(hf_dir, dtype, mesh)
        if model.config.is_classifier:
            raise ValueError("the judge needs a causal LM head, not a sequence classifier")
        if "{prompt}" not in template or "{response}" not in template:
            raise ValueError("the judge template needs both {prompt} and {response} slots")
        self.template = template
        tokenizer = _load_tokenizer(tokenizer, hf_dir)
        self.yes_ids = _single_token_ids(tokenizer, yes_variants)
        self.no_ids = _single_token_ids(tokenizer, no_variants)
        if set(self.yes_ids) & set(self.no_ids):
            raise ValueError(f"yes ids {self.yes_ids} and no ids {self.no_ids} overlap")
        super().__init__(model, tokenizer, mesh=mesh, max_length=max_length,
                         batch_size=batch_size)

    def render(self, prompt: str, answer: str) -> str:
        slots = {"prompt": prompt, "response": answer}
        question = _JUDGE_SLOTS.sub(lambda m: slots[m.group(1)], self.template)
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False)

    def head(self, model: Transformer, last_hidden: jax.Array) -> jax.Array:
        return yes_minus_no(model, last_hidden, self.yes_ids, self.no_ids)


def _single_token_ids(tokenizer: Any, variants: Sequence[str]) -> tuple[int, ...]:
    """One token id per spelling (deduplicated); a spelling that is not a single
    token is an error rather than a silently wrong verdict probability."""
    ids: list[int] = []
    for text in variants:
        encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise ValueError(f"verdict spelling {text!r} is {len(encoded)} tokens {encoded} in "
                             "this tokenizer; pass single-token yes/no variants")
        if encoded[0] not in ids:
            ids.append(encoded[0])
    if not ids:
        raise ValueError("no verdict spellings given")
    return tuple(ids)


class NoRewardModel:
    """Helpfulness reward off: every score is 0, so each group is constant and
    its z-scores, hence R_h, are exactly 0."""

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return np.zeros((len(prompts),), np.float32)


def make_reward_model(kind: Literal["classifier", "lm_judge", "none"],
                      **kwargs: Any) -> RewardModel:
    """Build the configured backend; ``kwargs`` go to its constructor."""
    backends = {"classifier": SequenceClassifierRM, "lm_judge": LMJudgeRM,
                "none": NoRewardModel}
    if kind not in backends:
        raise ValueError(f"unknown reward model kind {kind!r}; choose from {sorted(backends)}")
    return backends[kind](**kwargs)
