"""GRPO rollouts: one jitted prefill, then a jitted ``lax.while_loop`` decode over a donated KV cache.

Why it is built this way:

- **Few static shapes.** The prompt length, the batch and the attended cache
  length are rounded up to buckets, so a training run compiles a handful of
  programs once and reuses them for every batch (:func:`trace_counts` counts
  them). The parameters are an argument of every program, never baked in: the
  trainer passes its latest ones each step without recompiling.
- **Shared prompt.** Each prompt is prefilled once and its KV cache is kept once:
  its ``num_samples`` rollouts attend to it as a
  :class:`~alphaalign_jax.models.SharedPrefix` (one read of the prompt's keys a
  group, in one matmul with all the group's queries), and their own caches hold
  only completion tokens. Only the last prompt position is unembedded.
- **Attend to the filled part of the cache only.** The decode loop runs in chunks:
  each works on a completion cache of ``L`` slots (a bucket just above the slots it
  writes, at least ``min_cache_slots``, at most ``max_new_tokens``) and exits when
  it is full; the host then copies the cache into the next bucket. On a CPU,
  reading the KV cache of 32 rows x 300 slots costs nearly as much as reading the
  weights, so attending over a cache sized for the longest completion from the
  first token on would waste up to half of every step. Buckets grow geometrically,
  so a long completion compiles few programs.
- **No host round trip per token.** Sampling, EOS and stop-string detection
  (:mod:`.stop_strings`) run on device inside the loop, which exits as soon as
  every row is done; the host reads one flag per chunk.
- **Log-probs the trainer agrees with.** Logits come from
  :func:`alphaalign_jax.rl.logprobs.scaled_logits`, the definition the trainer
  uses; :mod:`.logits_processing` says how top-k/top-p relate to them.

Returned layout (what a teacher-forced pass needs, no re-tokenizing): rows are
prompt-major (row ``i * num_samples + j`` is sample ``j`` of prompt ``i``),
``prompt_ids`` are left-padded to the prompt bucket and ``completion_ids``
right-padded to ``max_new_tokens``. Padding lives in the masks only: SmolLM2's pad
id ``<|im_end|>`` also ends every chat turn.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from alphaalign_jax import sharding as shd
from alphaalign_jax.models import (
    KVCache,
    ModelConfig,
    SharedPrefix,
    Transformer,
    default_positions,
    init_cache,
    param_shardings,
)
from alphaalign_jax.rl.logprobs import scaled_logits
from alphaalign_jax.sampling.logits_processing import SamplingMode, choose_tokens
from alphaalign_jax.sampling.stop_strings import (
    StopTables,
    build_stop_tables,
    empty_buffer,
    stop_step,
    token_bytes,
)

Array = jax.Array
Prompt = str | Sequence[Mapping[str, str]]  # a templated string, or chat messages

_RUNNING, _EOS, _STOP, _LENGTH = 0, 1, 2, 3
_REASONS = {_EOS: "eos", _STOP: "stop_string", _LENGTH: "length"}
_TRACES: collections.Counter[str] = collections.Counter()


def trace_counts() -> dict[str, int]:
    """Traces (= compilations) of each jitted sampler program in this process so far."""
    return dict(_TRACES)


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest size >= ``max(n, minimum)`` of the form 2^k or 3 * 2^k.

    Two sizes per octave: at most a third of a bucket is padding, and a run
    sees only a few distinct shapes.
    """
    need = int(max(n, minimum, 1))
    power = 1 << (need - 1).bit_length()
    return power * 3 // 4 if power % 4 == 0 and power * 3 // 4 >= need else power


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def completion_cache_slots(max_new_tokens: int) -> int:
    """The completion cache's largest size: the budget rounded up to 16 (a bucket past the
    budget would be read every step for nothing)."""
    return _round_up(max_new_tokens, 16)


class Rollout(NamedTuple):
    """One rollout: padded ``[max_new_tokens]`` rows (real tokens where ``completion_mask``)."""

    prompt_index: int
    completion_ids: np.ndarray
    completion_mask: np.ndarray
    logprobs: np.ndarray
    sampler_logprobs: np.ndarray
    text: str
    length: int
    stop_reason: str


@dataclasses.dataclass(frozen=True)
class Rollouts:
    """A batch of rollouts as host arrays; ``R = num_prompts * num_samples`` rows.

    ``logprobs`` is ``log_softmax(logits / T)`` of each sampled token, what the
    trainer recomputes; ``sampler_logprobs`` is its log-probability under the
    top-k/top-p truncated distribution it was drawn from (equal without
    truncation, 0 for greedy). Both are 0 on padding.
    """

    prompt_ids: np.ndarray  # [R, P] int32, left-padded
    prompt_mask: np.ndarray  # [R, P] bool
    completion_ids: np.ndarray  # [R, C] int32, right-padded, C = max_new_tokens
    completion_mask: np.ndarray  # [R, C] bool; includes the EOS / stop-string token
    logprobs: np.ndarray  # [R, C] float32
    sampler_logprobs: np.ndarray  # [R, C] float32
    lengths: np.ndarray  # [R] int32
    stop_reasons: tuple[str, ...]  # "eos" | "stop_string" | "length"
    texts: tuple[str, ...]  # decoded completions (special tokens skipped)
    prompt_index: np.ndarray  # [R] int32

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> Rollout:
        return Rollout(int(self.prompt_index[i]), self.completion_ids[i], self.completion_mask[i],
                       self.logprobs[i], self.sampler_logprobs[i], self.texts[i],
                       int(self.lengths[i]), self.stop_reasons[i])

    def __iter__(self) -> Iterator[Rollout]:
        return (self[i] for i in range(len(self)))

    def take(self, rows: Sequence[int]) -> Rollouts:
        """The rollouts at ``rows``, in that order (``prompt_index`` kept as it was)."""
        rows = np.asarray(rows, dtype=np.int64)
        return dataclasses.replace(
            self, prompt_ids=self.prompt_ids[rows], prompt_mask=self.prompt_mask[rows],
            completion_ids=self.completion_ids[rows], completion_mask=self.completion_mask[rows],
            logprobs=self.logprobs[rows], sampler_logprobs=self.sampler_logprobs[rows],
            lengths=self.lengths[rows], stop_reasons=tuple(self.stop_reasons[i] for i in rows),
            texts=tuple(self.texts[i] for i in rows), prompt_index=self.prompt_index[rows])

    @staticmethod
    def concat(parts: Sequence[Rollouts]) -> Rollouts:
        """Rows of several batches (same ``max_new_tokens``), prompts left-padded to the widest."""
        width = max(p.prompt_ids.shape[1] for p in parts)

        def left_pad(x: np.ndarray) -> np.ndarray:
            return np.pad(x, ((0, 0), (width - x.shape[1], 0)))

        def cat(name: str, fn=lambda x: x) -> np.ndarray:
            return np.concatenate([fn(getattr(p, name)) for p in parts])

        return Rollouts(
            prompt_ids=cat("prompt_ids", left_pad), prompt_mask=cat("prompt_mask", left_pad),
            completion_ids=cat("completion_ids"), completion_mask=cat("completion_mask"),
            logprobs=cat("logprobs"), sampler_logprobs=cat("sampler_logprobs"),
            lengths=cat("lengths"), stop_reasons=sum((p.stop_reasons for p in parts), ()),
            texts=sum((p.texts for p in parts), ()), prompt_index=cat("prompt_index"))

    def sequences(self) -> tuple[np.ndarray, np.ndarray]:
        """``(tokens [R, P + C], attention_mask [R, P + C])`` for teacher forcing.

        The layout of ``alphaalign_jax.rl.step.UpdateBatch``: left-padded prompt,
        then right-padded completion; positions follow from the mask.
        """
        return (np.concatenate([self.prompt_ids, self.completion_ids], axis=1),
                np.concatenate([self.prompt_mask, self.completion_mask], axis=1))


class Controls(NamedTuple):
    """Per-call settings passed as traced arguments (changing them does not recompile)."""

    temperature: Array  # [] float32
    top_p: Array  # [] float32
    max_new_tokens: Array  # [] int32
    eos_ids: Array  # [E] int32; -1 never matches
    stop: StopTables | None


class DecodeState(NamedTuple):
    """Everything the decode loop carries; N rows, L cache slots, C output columns."""

    prompts: SharedPrefix  # N / G prompts' caches and masks, W slots (the prompt bucket)
    cache: KVCache  # N rows, L slots: completion token t at slot t (layout: see KVCache)
    kv_mask: Array  # [N, L] bool: slots holding a real token
    prompt_len: Array  # [N] int32: real prompt tokens (the first completion position)
    step: Array  # [] int32: completion tokens emitted so far
    tokens: Array  # [N, C] int32
    logp: Array  # [N, C] float32
    sampler_logp: Array  # [N, C] float32
    reason: Array  # [N] int8: _RUNNING until the row stops
    length: Array  # [N] int32
    stop_buffer: Array  # [N, K] int16: last completion bytes (see stop_strings)
    key: Array  # PRNG key; step t uses fold_in(key, t)


def _constrain(st: DecodeState, mesh: Mesh | None) -> DecodeState:
    """Pin the row axis of the decode state to the mesh's batch axes (GSPMD does the rest)."""
    if mesh is None:
        return st

    def rows(x: Array) -> Array:
        return jax.lax.with_sharding_constraint(x, shd.batch_sharding(mesh, x.ndim, x.shape[0]))

    def slots(x: Array, axes: tuple[str, ...]) -> Array:
        return jax.lax.with_sharding_constraint(x, shd.named_sharding(mesh, axes, x.shape))

    per_row = ("kv_mask", "prompt_len", "tokens", "logp", "sampler_logp", "reason", "length",
               "stop_buffer")
    prompts = SharedPrefix(st.prompts.cache.map_buffers(slots), rows(st.prompts.mask))
    return st._replace(prompts=prompts, cache=st.cache.map_buffers(slots),
                       **{f: rows(getattr(st, f)) for f in per_row})


def _emit(st: DecodeState, scaled: Array, ctl: Controls, mode: SamplingMode) -> DecodeState:
    """Choose token ``st.step`` of every row from its scaled logits; record why rows stop."""
    tokens, logp, sampler_logp = choose_tokens(scaled, jax.random.fold_in(st.key, st.step),
                                               ctl.top_p, mode)
    running = st.reason == _RUNNING
    stop_buffer, hit_stop = st.stop_buffer, jnp.zeros_like(running)
    if ctl.stop is not None:
        stop_buffer, hit_stop = stop_step(st.stop_buffer, tokens, ctl.stop)
    is_eos = (tokens[:, None] == ctl.eos_ids).any(axis=-1)
    reason = jnp.where(is_eos, _EOS, jnp.where(hit_stop, _STOP, jnp.where(
        st.step + 1 >= ctl.max_new_tokens, _LENGTH, _RUNNING)))
    reason = jnp.where(running, reason, st.reason).astype(jnp.int8)

    def put(buffer: Array, column: Array) -> Array:
        column = jnp.where(running, column, 0).astype(buffer.dtype)
        return jax.lax.dynamic_update_slice(buffer, column[:, None], (0, st.step))

    return st._replace(tokens=put(st.tokens, tokens), logp=put(st.logp, logp),
                       sampler_logp=put(st.sampler_logp, sampler_logp), reason=reason,
                       length=st.length + running.astype(jnp.int32), stop_buffer=stop_buffer,
                       step=st.step + 1)


def decode_step(model: Transformer, st: DecodeState, ctl: Controls, mode: SamplingMode,
                 mesh: Mesh | None) -> DecodeState:
    """Feed the last emitted token through the model (one cache slot), emit the next one."""
    slot = st.step - 1
    last = jax.lax.dynamic_slice_in_dim(st.tokens, slot, 1, axis=1)
    kv_mask = jax.lax.dynamic_update_slice(st.kv_mask, jnp.ones_like(last, jnp.bool_), (0, slot))
    positions = (st.prompt_len + slot)[:, None]
    hidden, cache = model.hidden_states(last, kv_mask, positions=positions, cache=st.cache,
                                        cache_index=slot, prefix=st.prompts)
    scaled = scaled_logits(hidden[:, 0], model.unembedding(), temperature=ctl.temperature)
    return _constrain(_emit(st._replace(cache=cache, kv_mask=kv_mask), scaled, ctl, mode), mesh)


@functools.partial(jax.jit, static_argnames=("graphdef", "mode", "num_samples", "cache_len",
                                             "out_len", "mesh"))
def prefill(graphdef: nnx.GraphDef, params: nnx.State, ids: Array, mask: Array, key: Array,
             ctl: Controls, *, mode: SamplingMode, num_samples: int, cache_len: int,
             out_len: int, mesh: Mesh | None) -> DecodeState:
    """Prefill ``[B, P]`` prompts once, emit completion token 0 of each of their samples;
    ``cache_len`` completion slots. Public, like :func:`decode_loop` and :func:`decode_step`:
    the AOT planner (aot.py) lowers these very programs for a TPU slice."""
    _TRACES["prefill"] += 1
    model = nnx.merge(graphdef, params)
    batch, width = ids.shape
    cache = init_cache(model.config, batch, width, model.dtype)
    with shd.activations_over(mesh):
        hidden, cache = model.hidden_states(ids, mask, positions=default_positions(mask),
                                            cache=cache, cache_index=0)
    scaled = scaled_logits(hidden[:, -1], model.unembedding(), temperature=ctl.temperature)

    def per_sample(x: Array) -> Array:
        return jnp.repeat(x, num_samples, axis=0)

    rows = batch * num_samples
    st = DecodeState(
        prompts=SharedPrefix(cache, mask.astype(jnp.bool_)),
        cache=init_cache(model.config, rows, cache_len, model.dtype),
        kv_mask=jnp.zeros((rows, cache_len), jnp.bool_),
        prompt_len=per_sample(mask.sum(axis=-1).astype(jnp.int32)), step=jnp.int32(0),
        tokens=jnp.zeros((rows, out_len), jnp.int32),
        logp=jnp.zeros((rows, out_len), jnp.float32),
        sampler_logp=jnp.zeros((rows, out_len), jnp.float32),
        reason=jnp.zeros((rows,), jnp.int8), length=jnp.zeros((rows,), jnp.int32),
        stop_buffer=(empty_buffer(rows, ctl.stop) if ctl.stop is not None
                     else jnp.zeros((rows, 1), jnp.int16)),
        key=key)
    return _constrain(_emit(_constrain(st, mesh), per_sample(scaled), ctl, mode), mesh)


@functools.partial(jax.jit, static_argnames=("graphdef", "mode", "mesh"), donate_argnames=("st",))
def decode_loop(graphdef: nnx.GraphDef, params: nnx.State, st: DecodeState, ctl: Controls,
                  *, mode: SamplingMode, mesh: Mesh | None) -> DecodeState:
    """Decode until every row is done or the cache (of static size L) is full."""
    _TRACES["decode_loop"] += 1
    model = nnx.merge(graphdef, params)
    slots = st.kv_mask.shape[1]

    def more(s: DecodeState) -> Array:
        return (s.step - 1 < slots) & (s.reason == _RUNNING).any()

    with shd.activations_over(mesh):
        return jax.lax.while_loop(more, lambda s: decode_step(model, s, ctl, mode, mesh), st)


@functools.partial(jax.jit, static_argnames=("slots", "mesh"))
def _grow(st: DecodeState, *, slots: int, mesh: Mesh | None) -> DecodeState:
    """Copy the cache into one with ``slots`` slots (the new ones empty and masked)."""
    _TRACES["grow"] += 1
    extra = slots - st.kv_mask.shape[1]
    cache = st.cache.map_buffers(lambda x, axes: _pad_axis(x, axes.index("cache_seq"), extra))
    return _constrain(st._replace(cache=cache, kv_mask=_pad_axis(st.kv_mask, 1, extra)), mesh)


def _pad_axis(x: Array, axis: int, extra: int) -> Array:
    """``x`` with ``extra`` zeros appended along ``axis``."""
    if not extra:
        return x
    return jnp.pad(x, [(0, extra if i == axis else 0) for i in range(x.ndim)])


def default_eos_ids(model_config: ModelConfig, tokenizer: Any) -> tuple[int, ...]:
    """EOS ids from ``config.json`` and the tokenizer (e.g. ``<|im_end|>`` for SmolLM2)."""
    ids = model_config.hf_config.get("eos_token_id")
    ids = list(ids) if isinstance(ids, (list, tuple)) else [] if ids is None else [ids]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return tuple(sorted({int(i) for i in ids}))


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """How a run's rollouts are sampled: :meth:`Sampler.generate`'s keyword arguments."""

    max_new_tokens: int
    num_samples: int  # rollouts a prompt (the group)
    temperature: float
    top_p: float
    top_k: int
    stop_strings: tuple[str, ...]


class Sampler:
    """Rollout sampling for one model architecture and tokenizer.

    Compiled programs are cached by JAX per (model structure, shapes, static
    settings), so they survive across calls and Sampler instances; a Sampler
    also keeps the tokenizer's stop-string tables. Pass ``state=`` (the full
    ``nnx.state(model)`` of the same architecture) to sample with new parameters.

    Args:
      model: the policy (a causal LM, not a classifier).
      tokenizer: its Hugging Face tokenizer (with a chat template for message prompts).
      mesh: place the batch (and, when ``model`` is not yet, the parameters) on it.
      max_prompt_len: longest prompt accepted, in tokens; prompts are padded to
        ``min(bucket(longest), max_prompt_len)``.
      max_len: longest prompt + completion (default: the model's context length).
      min_cache_slots: the smallest attended cache (see module docstring).
    """

    def __init__(self, model: Transformer, tokenizer: Any, *, mesh: Mesh | None = None,
                 max_prompt_len: int | None = None, max_len: int | None = None,
                 min_cache_slots: int = 64):
        if model.config.is_classifier:
            raise ValueError("Sampler needs a causal LM; got a sequence-classification model")
        if min_cache_slots < 1:
            raise ValueError(f"min_cache_slots must be >= 1, got {min_cache_slots}")
        self.config = model.config
        self.tokenizer = tokenizer
        self.mesh = mesh
        self.max_len = max_len or model.config.max_position_embeddings
        self.max_prompt_len = max_prompt_len or self.max_len - 1
        self.min_cache_slots = min_cache_slots
        self.graphdef, self.state = nnx.split(model)
        self.state = self._place(self.state)
        self._vocab_bytes: list[bytes] | None = None
        self._stop_tables: dict[tuple[str, ...], StopTables] = {}
        # Wall seconds of the last generate's phases (encoding and prefill up to the first host
        # sync, the decode loop, detokenisation) and its decode steps: the rollout's breakdown.
        self.last_timing: dict[str, float] = {}

    def _place(self, state: nnx.State) -> nnx.State:
        return state if self.mesh is None else jax.device_put(
            state, param_shardings(state, self.mesh))

    def _rows_multiple(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def encode(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """Token ids of each prompt; chat messages get the generation prompt appended."""
        texts = [p if isinstance(p, str) else self.tokenizer.apply_chat_template(
            list(p), tokenize=False, add_generation_prompt=True) for p in prompts]
        # The chat template already holds any BOS text: add no special tokens.
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def _stop(self, stop_strings: Sequence[str]) -> StopTables | None:
        key = tuple(stop_strings)
        if not key:
            return None
        if key not in self._stop_tables:
            if self._vocab_bytes is None:
                self._vocab_bytes = token_bytes(self.tokenizer, self.config.vocab_size)
            tables = build_stop_tables(self._vocab_bytes, key)
            self._stop_tables[key] = StopTables(*(jnp.asarray(t) for t in tables))
        return self._stop_tables[key]

    def generate(self, prompts: Sequence[Prompt], *, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 greedy: bool = False, seed: int = 0, num_samples: int = 1,
                 eos_token_ids: Sequence[int] | None = None, stop_strings: Sequence[str] = (),
                 state: nnx.State | None = None) -> Rollouts:
        """Sample ``num_samples`` completions for each prompt.

        Args:
          prompts: chat-message lists or already-templated strings.
          max_new_tokens: completion budget; a row that reaches it stops with "length".
          temperature: the log-probs are of ``softmax(logits / temperature)`` (also
            for greedy decoding, which ignores it for the choice).
          top_p, top_k: nucleus / top-k truncation (1.0 / 0: off).
          greedy: argmax decoding.
          seed: PRNG seed; same seed, prompts and settings give the same rollouts.
          eos_token_ids: ids that end a rollout (default :func:`default_eos_ids`;
            ``()`` never stops on EOS).
          stop_strings: texts that end a rollout (see :mod:`.stop_strings`).
          state: model parameters to use instead of the constructor's.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (it scales the returned log-probs; "
                             f"use greedy=True for argmax decoding), got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {top_k}")
        if not prompts:
            raise ValueError("no prompts given")
        start = time.perf_counter()
        encoded = self.encode(prompts)
        for i, ids in enumerate(encoded):
            if not ids:
                raise ValueError(f"prompt {i} is empty (0 tokens)")
            if len(ids) > self.max_prompt_len:
                raise ValueError(f"prompt {i} has {len(ids)} tokens, more than max_prompt_len="
                                 f"{self.max_prompt_len}")
            if len(ids) + max_new_tokens > self.max_len:
                raise ValueError(f"prompt {i} ({len(ids)} tokens) + max_new_tokens="
                                 f"{max_new_tokens} exceeds max_len={self.max_len}")
        width = min(bucket(max(map(len, encoded)), 16), self.max_prompt_len)
        batch = _round_up(bucket(len(encoded)), self._rows_multiple())
        ids = np.zeros((batch, width), np.int32)
        mask = np.zeros((batch, width), bool)
        for i in range(batch):
            row = encoded[i] if i < len(encoded) else encoded[0]  # filler rows are dropped
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = True

        eos = default_eos_ids(self.config, self.tokenizer) if eos_token_ids is None \
            else tuple(eos_token_ids)
        ctl = Controls(jnp.float32(temperature), jnp.float32(top_p), jnp.int32(max_new_tokens),
                        jnp.asarray(eos or (-1,), jnp.int32), self._stop(stop_strings))
        mode = SamplingMode(greedy=greedy, top_k=0 if greedy else top_k,
                            top_p=not greedy and top_p < 1)
        params = self.state if state is None else self._place(state)
        most = completion_cache_slots(max_new_tokens)
        slots = min(bucket(1, self.min_cache_slots), most)
        device_ids, device_mask = ids, mask
        if self.mesh is not None:
            device_ids = jax.device_put(ids, shd.batch_sharding(self.mesh, 2, batch))
            device_mask = jax.device_put(mask, shd.batch_sharding(self.mesh, 2, batch))
        st = prefill(self.graphdef, params, device_ids, device_mask, jax.random.key(seed), ctl,
                      mode=mode, num_samples=num_samples, cache_len=slots,
                      out_len=bucket(max_new_tokens, 16), mesh=self.mesh)
        prefilled = None
        while True:
            step, reason = shd.to_host((st.step, st.reason))
            prefilled = prefilled or time.perf_counter()
            if (reason == _RUNNING).sum() == 0:
                break
            if step - 1 >= slots:  # the cache is full: next bucket
                slots = min(bucket(step, self.min_cache_slots), most)
                st = _grow(st, slots=slots, mesh=self.mesh)
            st = decode_loop(self.graphdef, params, st, ctl, mode=mode, mesh=self.mesh)
        decoded = time.perf_counter()
        rollouts = self._rollouts(st, ids, mask, len(encoded), num_samples, max_new_tokens)
        self.last_timing = {"prefill_s": prefilled - start, "decode_s": decoded - prefilled,
                            "decode_steps": float(step - 1),
                            "detokenize_s": time.perf_counter() - decoded}
        return rollouts

    def _rollouts(self, st: DecodeState, ids: np.ndarray, mask: np.ndarray, num_prompts: int,
                  num_samples: int, max_new_tokens: int) -> Rollouts:
        rows = num_prompts * num_samples
        tokens, logp, sampler_logp, reason, length = (
            x[:rows] for x in shd.to_host(
                (st.tokens, st.logp, st.sampler_logp, st.reason, st.length)))
        cols = slice(0, max_new_tokens)
        completion_mask = np.arange(max_new_tokens) < length[:, None]
        texts = self.tokenizer.batch_decode(
            [tokens[i, :length[i]].tolist() for i in range(rows)], skip_special_tokens=True,
            clean_up_tokenization_spaces=False)
        return Rollouts(
            prompt_ids=np.repeat(ids[:num_prompts], num_samples, axis=0),
            prompt_mask=np.repeat(mask[:num_prompts], num_samples, axis=0),
            completion_ids=tokens[:, cols], completion_mask=completion_mask,
            logprobs=logp[:, cols], sampler_logprobs=sampler_logp[:, cols],
            lengths=length.astype(np.int32), stop_reasons=tuple(_REASONS[int(r)] for r in reason),
            texts=tuple(texts), prompt_index=np.repeat(np.arange(num_prompts, dtype=np.int32),
                                                       num_samples))


def generate(model: Transformer, tokenizer: Any, prompts: Sequence[Prompt], *,
             max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             greedy: bool = False, seed: int = 0, num_samples: int = 1,
             eos_token_ids: Sequence[int] | None = None, stop_strings: Sequence[str] = (),
             mesh: Mesh | None = None, max_prompt_len: int | None = None,
             min_cache_slots: int = 64) -> Rollouts:
    """Sample completions of ``prompts`` with ``model`` (see :meth:`Sampler.generate`).

    Compiled programs are reused across calls; for repeated calls prefer a
    :class:`Sampler`, which also keeps the stop-string tables.
    """
    sampler = Sampler(model, tokenizer, mesh=mesh, max_prompt_len=max_prompt_len,
                      min_cache_slots=min_cache_slots)
    return sampler.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, top_k=top_k, greedy=greedy, seed=seed,
                            num_samples=num_samples, eos_token_ids=eos_token_ids,
                            stop_strings=stop_strings)
