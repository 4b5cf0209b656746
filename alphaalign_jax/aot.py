"""Compile a config's programs for a Cloud TPU slice ahead of time, on a machine without one.

    python -m alphaalign_jax.aot --config=configs/qwen2_5_3b_instruct.py --topology=v5e-16 \
        [--search] [--json=plan.json]

The real TPU compiler (libtpu, fetched by ``tools/fetch_assets.py --only libtpu``) compiles
the programs a training step runs, for the slice's devices and the config's mesh, from
abstract (weight-free) models: the update (with its micro-batch scan), the reference
log-prob pass, the sampler's prefill and one decode step / the decode loop, the reward
model's forward and the safety judge's (``reward.safety_judge``). Architectures come from
the models' HF ``config.json`` (or, for the paper models and Llama Guard 3 8B, the cards in
``configs/architectures/``). Reported per program: per-chip HBM
(arguments, outputs, temporaries) against the chip's capacity, FLOPs and bytes from XLA's
cost analysis, and a roofline time at the chip's peak; then the estimated time of one RL
step. A config that does not fit exits with status 1, naming the program, the bytes and the
largest tensors. ``--search`` tries the mesh shapes and micro-batch sizes the slice allows
and reports the fastest that fits.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import re
import sys
import time
from typing import Any

from alphaalign_jax import assets


def _use_bundled_libtpu() -> None:
    """Point JAX at the fetched libtpu before it initialises (the CPU stays the default
    backend: libtpu only serves the TPU topology), and keep libtpu off the network."""
    bundled = assets.libtpu_path()
    if "TPU_LIBRARY_PATH" not in os.environ and bundled.is_file():
        os.environ["TPU_LIBRARY_PATH"] = str(bundled)
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Compiling claims no chip, so plans (and tests) may compile side by side; without this,
    # libtpu's host lockfile lets one process at a time load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


_use_bundled_libtpu()

import jax  # noqa: E402  (after the libtpu path is set)
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from tqdm import tqdm  # noqa: E402

from alphaalign_jax import config as config_lib  # noqa: E402
from alphaalign_jax import sharding as shd  # noqa: E402
from alphaalign_jax import train as train_lib  # noqa: E402
from alphaalign_jax.models import ModelConfig, trainable  # noqa: E402
from alphaalign_jax.models.hf_io import abstract_model, architecture, param_shardings  # noqa: E402
from alphaalign_jax.rewards import safety_judge  # noqa: E402
from alphaalign_jax.rewards.reward_models import (  # noqa: E402
    classifier_scores,
    scorer_program,
    yes_minus_no,
)
from alphaalign_jax.rl import algorithms  # noqa: E402
from alphaalign_jax import settings as settings_lib  # noqa: E402
from alphaalign_jax.rl import programs as programs_lib  # noqa: E402
from alphaalign_jax.rl.critic import critic_programs  # noqa: E402
from alphaalign_jax.rl.optim import optimizer  # noqa: E402
from alphaalign_jax.rl.reference import frozen_copy  # noqa: E402
from alphaalign_jax.rl.step import UpdateBatch  # noqa: E402
from alphaalign_jax.utilisation import utilisation  # noqa: E402
from alphaalign_jax.sampling import sampler as sampler_lib  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip numbers from Google's public Cloud TPU system-architecture pages."""

    name: str
    hbm_bytes: int
    peak_bf16_flops: float  # FLOP/s
    hbm_bytes_per_s: float
    cores_per_chip: int  # TensorCores a chip has; v4-N / v5p-N count cores, v5e-N / v6e-N chips
    source: str


GiB = 1 << 30
CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, 2, "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, 1, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2765e9, 2, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1640e9, 1, "https://cloud.google.com/tpu/docs/v6e"),
}
_GRID_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
            256: "16x16"}
_GRID_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
            256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"}


def tpu_slice(topology: str) -> tuple[Chip, str]:
    """The chip and device grid of a slice name, or a ValueError naming what is allowed."""
    match = re.fullmatch(r"(v4|v5e|v5p|v6e)-(\d+)", topology or "")
    if not match:
        raise ValueError(f"--topology={topology}: not a slice name; v4-N, v5e-N, v5p-N or "
                         "v6e-N, e.g. v5e-16")
    chip = CHIPS[match.group(1)]
    grids = _GRID_3D if chip.cores_per_chip == 2 else _GRID_2D
    grid = grids.get(int(match.group(2)) // chip.cores_per_chip)
    if grid is None or int(match.group(2)) % chip.cores_per_chip:
        sizes = ", ".join(f"{match.group(1)}-{n * chip.cores_per_chip}" for n in grids)
        raise ValueError(f"--topology={topology}: no such {chip.name} slice; one of {sizes}")
    return chip, grid


def tpu_devices(topology: str) -> tuple[Chip, list[jax.Device]]:
    """The chip and devices of a slice named like ``v5e-16`` or ``v4-32`` (Cloud names:
    v4-N and v5p-N count TensorCores, two a chip; v5e-N and v6e-N count chips)."""
    from jax.experimental import topologies

    chip, grid = tpu_slice(topology)
    if not os.environ.get("TPU_LIBRARY_PATH") and not _has_libtpu_package():
        raise FileNotFoundError("no libtpu: run `python tools/fetch_assets.py --only libtpu` "
                                "(or set TPU_LIBRARY_PATH)")
    kwargs = {"chip_config_name": "megacore"} if chip.name == "v4" else {}
    desc = topologies.get_topology_desc(topology_name=f"{chip.name}:{grid}", platform="tpu",
                                        **kwargs)
    return chip, list(desc.devices)


def _has_libtpu_package() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)


def _per_device_bytes(tree) -> int:
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def _largest(tree, n: int = 5) -> list[str]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    sized = sorted(((math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize,
                     jax.tree_util.keystr(p), x) for p, x in leaves), key=lambda t: -t[0])
    return [f"{name} {tuple(x.shape)} {x.dtype}: {b / GiB:.2f} GiB a chip"
            for b, name, x in sized[:n]]


def _model_state(config: ModelConfig, dtype: str, param_dtype: str, mesh):
    """Abstract (graphdef, params, rest) of a model, sharded by the project's rules."""
    model = abstract_model(config, jnp.dtype(dtype), jnp.dtype(param_dtype))
    graphdef, params, rest = nnx.split(model, trainable(config), ...)
    for state in (params, rest):  # under LoRA ``rest`` holds the frozen base, sharded alike
        nnx.replace_by_pure_dict(state, _abstract(nnx.to_pure_dict(state),
                                                  nnx.to_pure_dict(param_shardings(state, mesh))))
    return graphdef, params, rest


class DoesNotFit(Exception):
    """The TPU compiler itself found that a program's memory exceeds the chip's HBM."""

    def __init__(self, program: str, message: str) -> None:
        super().__init__(f"{program}: {message}")
        self.program = program
        self.largest: list[str] = []


def _compile(name: str, lowered) -> Any:
    """``lowered`` compiled, saying what it compiles before it starts (a 7B program takes
    minutes) and how long it took."""
    tqdm.write(f"compiling {name} ...", file=sys.stderr)
    start = time.perf_counter()
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        raise DoesNotFit(name, str(e).strip().splitlines()[0].rstrip(".")) from None
    tqdm.write(f"compiled {name} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return compiled


@dataclasses.dataclass
class Program:
    name: str
    compiled: Any
    resident: int  # bytes a chip of the arguments that live across programs (weights, state)
    repeats: int  # times a step runs it (XLA's cost analysis counts a loop body once)

    def memory(self) -> dict[str, int]:
        m = self.compiled.memory_analysis()
        total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
        return {"arguments": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
                "temporaries": m.temp_size_in_bytes, "aliased": m.alias_size_in_bytes,
                "total": total}

    def cost(self) -> dict[str, float]:
        c = self.compiled.cost_analysis()
        c = c[0] if isinstance(c, list) else c
        return {"flops": float(c.get("flops", 0.0)),
                "bytes_accessed": float(c.get("bytes accessed", 0.0))}


def _architectures(c: ml_collections.ConfigDict) -> tuple[ModelConfig, ModelConfig | None]:
    """The policy's (in the config's layer layout) and the reward model's architectures
    (None: no reward model; its layers are one a layer, as the trainer loads it)."""
    policy = architecture(c.model.hf_dir, "config.model.hf_dir")
    rm = None
    if c.reward.helpfulness == "classifier":
        rm = architecture(c.reward.rm_dir, "config.reward.rm_dir")
    elif c.reward.helpfulness != "none":
        rm = policy  # the LM judge scores with the policy's architecture
    return config_lib.run_architecture(c, policy), rm


def _policy_state(c: ml_collections.ConfigDict, policy: ModelConfig, mesh):
    """The abstract policy (graphdef, params, rest) and its optimizer (tx, state shardings,
    state), sharded by the project's rules."""
    graphdef, params, rest = _model_state(policy, c.model.dtype, c.model.param_dtype, mesh)
    tx, _ = optimizer(settings_lib.optimizer_settings(c))
    opt_sh = shd.optimizer_shardings(tx, params, mesh)
    return graphdef, params, rest, tx, opt_sh, _abstract(jax.eval_shape(tx.init, params), opt_sh)


def _scorer_states(c: ml_collections.ConfigDict, rm: ModelConfig | None, mesh) -> dict:
    """The abstract scoring models a step keeps loaded, by name: the reward model (``rm``, its
    architecture) and the safety judge (``reward.safety_judge``)."""
    archs = {"reward model": rm}
    if c.reward.safety_judge:
        archs["safety judge"] = architecture(c.reward.safety_judge, "config.reward.safety_judge")
    return {name: _model_state(arch, c.model.dtype, c.model.dtype, mesh)
            for name, arch in archs.items() if arch is not None}


def _state_bytes(c: ml_collections.ConfigDict, params, rest, opt_state, scorers: dict
                 ) -> dict[str, int]:
    """Bytes a chip of what stays resident through a step (the critic's are added with it).
    Under LoRA the policy's trained parameters are its adapters, and the frozen base is also
    the KL reference: the reference is a copy of the adapters alone."""
    out = {"policy parameters": _per_device_bytes(params)}
    if c.model.lora_rank:
        out = {"frozen base parameters": _per_device_bytes(rest),
               "adapters": _per_device_bytes(params)}
    out["optimizer state"] = _per_device_bytes(opt_state)
    if c.algo.beta > 0 or c.algo.kl_penalty > 0:
        out["reference " + ("adapters" if c.model.lora_rank else "parameters")] = \
            _per_device_bytes(_reference_state(c, params))
    out.update({name: _per_device_bytes(state[1]) for name, state in scorers.items()})
    return out


def _reference_state(c: ml_collections.ConfigDict, params):
    """The abstract KL reference: rl/reference.py's ``frozen_copy`` of the trained
    parameters (in the compute dtype but for the unembedding), placed alike."""
    frozen = jax.eval_shape(functools.partial(frozen_copy, dtype=jnp.dtype(c.model.dtype)),
                            params)
    return jax.tree.map(lambda f, x: jax.ShapeDtypeStruct(f.shape, f.dtype, sharding=x.sharding),
                        frozen, params)


def resident_bytes(c: ml_collections.ConfigDict, devices: list[jax.Device]) -> int:
    """The resident state a chip, from abstract shardings alone (no compile):
    a lower bound of any program's need, so the search skips meshes it already rules out."""
    mesh = shd.make_mesh(dict(c.mesh), devices=devices)
    policy, rm = _architectures(c)
    _, params, rest, _, _, opt_state = _policy_state(c, policy, mesh)
    return sum(_state_bytes(c, params, rest, opt_state, _scorer_states(c, rm, mesh)).values())


def compile_programs(c: ml_collections.ConfigDict, devices: list[jax.Device],
                     reuse: dict | None = None, num_layers: int | None = None
                     ) -> tuple[list[Program], dict[str, Any]]:
    """Lower and compile the step's programs for ``devices``; also the resident state.
    ``reuse``: a dict kept across calls that differ only in the micro-batch; the sampler's
    and reward model's programs compiled by the first are reused. ``num_layers``: the
    policy cut to that depth, one block a layer (a cost probe, :func:`_layer_costs`)."""
    mesh = shd.make_mesh(dict(c.mesh), devices=devices)
    config_lib.validate(c, num_devices=mesh.size)
    policy, rm = _architectures(c)
    if num_layers is not None:
        policy = dataclasses.replace(policy, num_layers=num_layers, scan_layers=False)
    prompts, group = c.train.prompts_per_step, c.rollout.num_samples
    width = sampler_lib.bucket(c.rollout.max_prompt_len, 16)
    new = c.rollout.max_new_tokens
    graphdef, params, rest, tx, opt_sh, opt_state = _policy_state(c, policy, mesh)
    step, reference = programs_lib.update_programs(
        settings_lib.update_settings(c), graphdef, tx, mesh, param_shardings=shd.shardings_of(params),
        opt_shardings=opt_sh)

    def rows(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=shd.batch_sharding(mesh, len(shape),
                                                                              shape[0]))

    algorithm = algorithms.get(c.algo.name)
    gae = algorithm.critic  # per-token advantages, with the critic's values and returns

    def update_batch(num_prompts: int) -> UpdateBatch:
        """The update's layout: PPO's advantages are per token, with values and returns."""
        per_token = rows((num_prompts * group, new), jnp.float32)
        return UpdateBatch(
            rows((num_prompts, width), jnp.int32), rows((num_prompts, width), jnp.bool_),
            rows((num_prompts * group, new), jnp.int32), per_token, per_token, per_token,
            per_token if gae else rows((num_prompts * group,), jnp.float32),
            *((per_token, per_token) if gae else ()))

    micro_batches = prompts * group // c.algo.micro_batch_size
    largest = _largest({"params": params, "optimizer": opt_state})
    scorers = _scorer_states(c, rm, mesh)
    state_bytes = _state_bytes(c, params, rest, opt_state, scorers)
    try:
        programs = _update_programs(c, params, rest, opt_state, step, reference,
                                    update_batch, micro_batches,
                                    any(k.startswith("reference") for k in state_bytes))
        reuse = {} if reuse is None else reuse
        if "rollout" not in reuse:
            reuse["rollout"] = _rollout_programs(c, graphdef, params, rest, scorers, rows,
                                                 mesh, width, new)
        programs += reuse["rollout"]
        if algorithm.critic:
            programs += _critic_programs(c, policy, mesh, update_batch, micro_batches,
                                         state_bytes)
    except DoesNotFit as e:
        e.largest = largest
        raise
    return programs, {"mesh": dict(mesh.shape), "state_bytes": state_bytes, "largest": largest}


def _update_programs(c, params, rest, opt_state, step, reference, update_batch,
                     micro_batches: int, has_reference: bool) -> list[Program]:
    """The update on one optimizer step's rows and the reference pass over the batch."""
    mini_batch = update_batch(c.train.prompts_per_step // c.algo.mini_batches)
    programs = [Program("update (fwd+bwd+optimizer)",
                        _compile("update", step.lower(params, rest, opt_state, mini_batch)),
                        _per_device_bytes((params, rest, opt_state)),
                        micro_batches * c.algo.num_updates)]
    if has_reference:
        frozen = _reference_state(c, params)
        programs.append(Program("reference log-probs", _compile(
            "reference", reference.lower(frozen, rest, update_batch(c.train.prompts_per_step))),
            _per_device_bytes((frozen, rest)), micro_batches))
    return programs


def _rollout_programs(c, graphdef, params, rest, scorers: dict, rows, mesh, width: int,
                      new: int) -> list[Program]:
    """The sampler's programs and the scoring models' forwards: the micro-batch does not
    change them. The reward model scores the benign rollouts (taken as half), the safety
    judge at worst every harmful one, at the length bucket of its instructions, a prompt and
    a completion."""
    programs = _sampler_programs(c, graphdef, params, rest, mesh, width, new)
    rollouts = c.train.prompts_per_step * c.rollout.num_samples
    # The scorers' own heads; the verdict token ids (from a tokenizer the plan does not load)
    # are placeholders of the real count: they select columns, the program is the same.
    heads = {"reward model": lambda m, h: (classifier_scores(m, h) if m.score is not None
                                           else yes_minus_no(m, h, (0, 1), (2, 3))),
             "safety judge": lambda m, h: safety_judge.p_unsafe(m, h, (0, 1))}
    judged = safety_judge.INSTRUCTION_TOKENS + c.rollout.max_prompt_len + new
    shapes = {"reward model": (c.reward.rm_batch_size, c.reward.rm_max_len),
              "safety judge": (c.reward.rm_batch_size, 1 << (judged - 1).bit_length())}
    scored = {"reward model": rollouts // 2,
              "safety judge": math.ceil(rollouts * c.data.harmful_fraction)}
    for name, (scorer_graphdef, scorer_params, scorer_rest) in scorers.items():
        shape = shapes[name]
        forward = scorer_program(scorer_graphdef, heads[name])
        programs.append(Program(
            f"{name} forward",
            _compile(name, forward.lower(nnx.merge_state(scorer_params, scorer_rest),
                                         rows(shape, jnp.int32), rows(shape, jnp.bool_))),
            _per_device_bytes(scorer_params), math.ceil(scored[name] / shape[0])))
    return programs


def _critic_programs(c, policy: ModelConfig, mesh, update_batch, micro_batches: int,
                     state_bytes: dict[str, int]) -> list[Program]:
    """PPO's critic (the policy's architecture with a 1-label head): its value pass over the
    rollout batch and its update on a mini-batch; its parameters and Adam state stay resident."""
    graphdef, params, rest = _model_state(dataclasses.replace(policy, num_labels=1, lora=None),
                                          c.model.dtype, c.model.param_dtype, mesh)
    settings = settings_lib.critic_settings(c)
    tx, _ = optimizer(settings.optimizer)
    opt_sh = shd.optimizer_shardings(tx, params, mesh)
    opt_state = _abstract(jax.eval_shape(tx.init, params), opt_sh)
    values, step = critic_programs(settings, graphdef, tx, mesh,
                                   param_shardings=shd.shardings_of(params), opt_shardings=opt_sh)
    state_bytes["critic parameters"] = _per_device_bytes(params)
    state_bytes["critic optimizer state"] = _per_device_bytes(opt_state)
    prompts = c.train.prompts_per_step
    return [Program("critic values", _compile("critic values", values.lower(
                        params, rest, update_batch(prompts))),
                    _per_device_bytes(params), micro_batches),
            Program("critic update", _compile("critic update", step.lower(
                        params, rest, opt_state, update_batch(prompts // c.algo.mini_batches))),
                    _per_device_bytes((params, opt_state)), micro_batches * c.algo.num_updates)]


def _sampler_programs(c, graphdef, params, rest, mesh, width: int, new: int) -> list[Program]:
    """Prefill, one decode step (the per-token cost) and the decode loop (its memory)."""
    prompts, group = c.train.prompts_per_step, c.rollout.num_samples
    sampler_graphdef, state = nnx.split(nnx.merge(graphdef, params, rest))
    ctl = sampler_lib.Controls(jnp.float32(1.0), jnp.float32(1.0), jnp.int32(new),
                               jnp.zeros((2,), jnp.int32), None)
    mode = sampler_lib.SamplingMode(greedy=False, top_k=0, top_p=False)
    slots = sampler_lib.completion_cache_slots(new)  # the completion cache at its largest
    ids = jax.ShapeDtypeStruct((prompts, width), jnp.int32,
                               sharding=shd.batch_sharding(mesh, 2, prompts))
    mask = jax.ShapeDtypeStruct((prompts, width), jnp.bool_,
                                sharding=shd.batch_sharding(mesh, 2, prompts))
    key = jax.eval_shape(lambda: jax.random.key(0))
    static = dict(mode=mode, num_samples=group, cache_len=slots,
                  out_len=sampler_lib.bucket(new, 16), mesh=mesh)
    compiled_prefill = _compile("prefill", sampler_lib.prefill.lower(
        sampler_graphdef, state, ids, mask, key, ctl, **static))
    shapes = jax.eval_shape(functools.partial(sampler_lib.prefill, **static), sampler_graphdef,
                            state, ids, mask, key, ctl)
    st = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes,
                      compiled_prefill.output_shardings)
    def decode_step(s, st):  # one step of decode_loop's body, traced as the loop traces it
        with shd.activations_over(mesh):
            return sampler_lib.decode_step(nnx.merge(sampler_graphdef, s), st, ctl, mode, mesh)

    one_step = jax.jit(decode_step)
    weights = _per_device_bytes((params, rest))
    return [Program("sampler prefill", compiled_prefill, weights, 1),
            Program("sampler decode (one token)",
                    _compile("decode step", one_step.lower(state, st)), weights, new - 1),
            Program("sampler decode loop (memory)", _compile(
                "decode loop", sampler_lib.decode_loop.lower(
                    sampler_graphdef, state, st, ctl, mode=mode, mesh=mesh)), weights, 0)]


def _layer_costs(c: ml_collections.ConfigDict, devices: list[jax.Device], reuse: dict
                 ) -> dict[str, dict[str, float]]:
    """The policy's programs' cost with scanned layers. XLA's cost analysis counts a loop's
    body once, so it is read from the same programs with one block a layer at depths 1 and 2,
    compiled for that alone: cost(L) = cost(1) + (L - 1) (cost(2) - cost(1)); every block is
    the same, and docs/tpu_plans.md checks it against a full-depth unrolled compile. The
    reward model is not scanned: its own compile's cost stands."""
    probe = ml_collections.ConfigDict(c.to_dict())
    probe.reward.helpfulness, probe.reward.safety_judge = "none", ""
    depth = _architectures(c)[0].num_layers
    one, two = ({p.name: p.cost() for p in compile_programs(
        probe, devices, reuse.setdefault(("depth", n), {}), num_layers=n)[0]} for n in (1, 2))
    return {name: {k: one[name][k] + (depth - 1) * (two[name][k] - one[name][k])
                   for k in one[name]} for name in one}


def plan(c: ml_collections.ConfigDict, topology: str, reuse: dict | None = None,
         cost_scale: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """Compile and summarise: per-program memory, cost and roofline time, and the step.
    ``reuse``: see :func:`compile_programs`. With scanned layers the cost is probed
    (:func:`_layer_costs`) for a plan that fits, and left out (None) for one that does not;
    ``cost_scale`` (a search's, from its first plan that fits: each program's probed cost
    over its scanned compile's, ``result["cost_scale"]``) estimates it without probing."""
    chip, devices = tpu_devices(topology)
    reuse = {} if reuse is None else reuse
    programs, info = compile_programs(c, devices, reuse)
    resident = sum(info["state_bytes"].values())
    memory = {p.name: p.memory() for p in programs}
    needs = {p.name: resident + memory[p.name]["total"] - p.resident for p in programs}
    peak = max([resident, *needs.values()])
    fits = peak <= chip.hbm_bytes
    raw = {p.name: p.cost() for p in programs}
    costs, how = raw, "compiled"
    if c.model.scan_layers and cost_scale is not None:
        costs = {name: {k: v * cost_scale[name][k] for k, v in cost.items()}
                 for name, cost in raw.items()}
        how = "estimated"
    elif c.model.scan_layers:
        costs = {**raw, **_layer_costs(c, devices, reuse)} if fits else None
        how = "probed" if fits else "not probed: does not fit"
    rows = []
    for p in programs:
        cost = costs[p.name] if costs else {"flops": None, "bytes_accessed": None}
        seconds = (max(cost["flops"] / chip.peak_bf16_flops,
                       cost["bytes_accessed"] / chip.hbm_bytes_per_s) if costs else None)
        rows.append({"program": p.name, **memory[p.name],
                     "need_with_resident_state": needs[p.name],
                     **cost, "roofline_s": seconds, "runs_a_step": p.repeats})
    step_time = sum(r["roofline_s"] * r["runs_a_step"] for r in rows) if costs else None
    return {"topology": topology, "chip": dataclasses.asdict(chip), "devices": len(devices),
            "mesh": info["mesh"], "micro_batch_size": c.algo.micro_batch_size,
            "resident_state_bytes": info["state_bytes"], "peak_bytes_a_chip": peak,
            "fits": fits, "step_roofline_s": step_time, "cost": how,
            "mfu": utilisation(rows, chip.peak_bf16_flops),
            "cost_scale": costs and {name: {k: costs[name][k] / v if v else 1.0
                                            for k, v in cost.items()}
                                     for name, cost in raw.items()},
            "programs": rows, "largest_tensors": info["largest"]}


def _seconds(value: float | None, scale: float = 1.0, unit: str = " s") -> str:
    return "-" if value is None else f"{value * scale:.2f}{unit}"


def _brief(result: dict[str, Any]) -> str:
    """One search result in a line."""
    return result.get("error") or (
        f"peak {result['peak_bytes_a_chip'] / GiB:.2f} GiB "
        f"({'fits' if result['fits'] else 'no'}), step {_seconds(result['step_roofline_s'])} "
        f"({result['cost']}), MFU " + " / ".join(f"{phase} {_percent(value)}"
                                                 for phase, value in result["mfu"].items()))


def _flags(result: dict[str, Any]) -> str:
    """The memory savers a search result needed, as the flags that set them."""
    return "".join(f" --config.{field}={value}"
                   for field, value in result.get("savers", {}).items())


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def report(result: dict[str, Any]) -> str:
    chip, gib = result["chip"], GiB
    lines = [f"{result['topology']}: {result['devices']} devices, mesh {result['mesh']}, "
             f"micro-batch {result['micro_batch_size']}; {chip['name']} "
             f"{chip['hbm_bytes'] / gib:.0f} GiB HBM, {chip['peak_bf16_flops'] / 1e12:.0f} "
             f"TFLOP/s bf16, {chip['hbm_bytes_per_s'] / 1e9:.0f} GB/s ({chip['source']})",
             "", "| program | args GiB | out GiB | temp GiB | need GiB (+ resident) | GFLOP | "
             "GB accessed | roofline ms | runs a step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["programs"]:
        lines.append(f"| {r['program']} | {r['arguments'] / gib:.2f} | {r['outputs'] / gib:.2f} | "
                     f"{r['temporaries'] / gib:.2f} | {r['need_with_resident_state'] / gib:.2f} | "
                     f"{_seconds(r['flops'], 1e-9, '')} | "
                     f"{_seconds(r['bytes_accessed'], 1e-9, '')} | "
                     f"{_seconds(r['roofline_s'], 1e3, '')} | {r['runs_a_step']} |")
    state = ", ".join(f"{k} {v / gib:.2f}" for k, v in result["resident_state_bytes"].items())
    lines += ["", f"resident a chip (GiB): {state}",
              f"peak a chip: {result['peak_bytes_a_chip'] / gib:.2f} of "
              f"{chip['hbm_bytes'] / gib:.0f} GiB: {'fits' if result['fits'] else 'DOES NOT FIT'}",
              f"one RL step at the roofline: {_seconds(result['step_roofline_s'])} "
              f"(cost {result['cost']})",
              "MFU at the roofline (compiled FLOPs / (roofline time x peak), the most the plan "
              "allows): " + ", ".join(f"{phase} {_percent(value)}"
                                      for phase, value in result["mfu"].items())]
    return "\n".join(lines)


# What --search turns on, in this order and cumulatively, for a mesh and micro-batch that does
# not fit with the config's own settings: each has a price (a second forward pass in the
# backward; a bf16 first moment), so it is paid only where the config's settings do not fit.
MEMORY_SAVERS = (("model.remat", True), ("optim.mu_dtype", "bfloat16"))


def _savers(c: ml_collections.ConfigDict) -> list[dict[str, Any]]:
    """The settings --search tries for one mesh and micro-batch: none, then each of
    :data:`MEMORY_SAVERS` the config does not already have, added one at a time."""
    tries, added = [{}], {}
    for field, value in MEMORY_SAVERS:
        section, name = field.split(".")
        if c[section][name] != value:
            added = {**added, field: value}
            tries.append(added)
    return tries


def _trial(c: ml_collections.ConfigDict, mesh: dict[str, int], micro: int,
           savers: dict[str, Any]) -> ml_collections.ConfigDict:
    trial = ml_collections.ConfigDict(c.to_dict())
    trial.mesh, trial.algo.micro_batch_size = dict(mesh), micro
    for field, value in savers.items():
        section, name = field.split(".")
        trial[section][name] = value
    return trial


def search(c: ml_collections.ConfigDict, topology: str) -> list[dict[str, Any]]:
    """The (data, fsdp, tensor) meshes and whole-group micro-batches the slice and config
    allow, compiled; sorted fits first, then by estimated step time. Ruled out without
    compiling: micro-batches whose rows do not shard over data x fsdp (the rules would
    replicate them, the same rows computed on several chips), meshes whose resident state
    alone exceeds a chip, and per mesh the micro-batches above the first that does not fit
    (memory grows with the rows). A mesh and micro-batch that does not fit with the config's
    own settings is tried again with :data:`MEMORY_SAVERS` added one at a time (each result's
    ``savers``); the mesh's larger micro-batches start from the savers the last one needed.
    The sampler's and reward model's programs are compiled once a mesh. With scanned layers,
    the first plan that fits is probed for its cost and the others' costs are estimated from
    its ratios (:func:`plan`'s ``cost_scale``); the fastest is then planned again with its
    own probes (``estimated_step_roofline_s`` keeps what the estimate said)."""
    chip, devices = tpu_devices(topology)
    n, group = len(devices), c.rollout.num_samples
    rows = c.train.prompts_per_step * group
    policy, _ = _architectures(c)
    meshes = [dict(data=data, fsdp=n // tensor // data, tensor=tensor)
              for tensor in (1, 2, 4, 8) if n % tensor == 0 and policy.num_kv_heads % tensor == 0
              for data in (1, 2, 4, 8) if (n // tensor) % data == 0]
    micros = [m for m in range(group, rows + 1, group) if rows % m == 0]
    results, reuses, scale, tries = [], {}, None, _savers(c)
    bar = tqdm(total=len(meshes) * len(micros), desc="search: mesh x micro-batch",
               unit="plan", file=sys.stderr)
    for mesh in meshes:
        data = mesh["data"]
        reuse = reuses.setdefault((data, mesh["tensor"]), {})
        needed = 0  # the savers the last micro-batch needed: a larger one needs them too
        for i, micro in enumerate(micros):
            bar.update(1)
            problem = next(config_lib.problems(_trial(c, mesh, micro, {}), num_devices=n), None)
            if micro % (data * mesh["fsdp"]):
                problem = f"{micro} rows do not shard over data x fsdp = {data * mesh['fsdp']}"
            if problem:
                tqdm.write(f"skip mesh {mesh} micro {micro}: {problem}", file=sys.stderr)
                continue
            for needed, savers in enumerate(tries[needed:], needed):
                results.append(_search_point(_trial(c, mesh, micro, savers), topology, reuse,
                                             scale, chip, devices, savers))
                if scale is None and results[-1].get("cost") == "probed":
                    scale = results[-1]["cost_scale"]
                if results[-1]["fits"]:
                    break
            if not results[-1]["fits"]:
                bar.update(len(micros) - i - 1)  # larger micro-batches need more memory
                break
    bar.close()
    results.sort(key=lambda r: (not r["fits"], r["step_roofline_s"] or math.inf))
    best = results[0] if results else {}
    if best.get("cost") == "estimated":
        mesh = best["mesh"]
        results[0] = {**plan(_trial(c, mesh, best["micro_batch_size"], best["savers"]),
                             topology, reuses[mesh["data"], mesh["tensor"]]),
                      "savers": best["savers"],
                      "estimated_step_roofline_s": best["step_roofline_s"]}
    return results


def _search_point(trial: ml_collections.ConfigDict, topology: str, reuse: dict, scale,
                  chip: Chip, devices: list[jax.Device], savers: dict[str, Any]
                  ) -> dict[str, Any]:
    """One (mesh, micro-batch, memory savers) of a search: its plan, or why it does not fit
    (the resident state alone, without compiling; or the compiler's out of memory)."""
    failed = {"mesh": dict(trial.mesh), "micro_batch_size": trial.algo.micro_batch_size,
              "fits": False, "step_roofline_s": math.inf, "savers": savers}
    try:
        resident = resident_bytes(trial, devices)
        if resident > chip.hbm_bytes:
            return {**failed, "error": f"the resident state alone needs "
                                       f"{resident / GiB:.2f} GiB a chip"}
        return {**plan(trial, topology, reuse, scale), "savers": savers}
    except DoesNotFit as e:
        return {**failed, "error": str(e)}


SUGGESTIONS = ("Try more fsdp (--config.mesh.fsdp), rematerialisation (--config.model.remat=True), "
               "a smaller --config.algo.micro_batch_size or rollout.max_new_tokens, bf16 "
               "parameters (--config.model.param_dtype=bfloat16), a larger slice, or --search.")

# --config (and the trainer's other flags) come with the trainer's module.
flags.DEFINE_string("topology", None, "Cloud TPU slice: v4-8 ... v4-4096, v5e-1 ... v5e-256, "
                    "v5p-8 ..., v6e-1 ... v6e-256.")
flags.DEFINE_bool("search", False, "Try every mesh shape and micro-batch size; report the "
                  "fastest that fits.")
flags.DEFINE_string("json", None, "Write the plan (or the search results) here as JSON.")


def check_inputs(c: ml_collections.ConfigDict) -> None:
    """What can be checked before compiling (minutes) or writing ``--json``: the slice's
    name, the config's values, the architectures it names and the policy's context."""
    tpu_slice(flags.FLAGS.topology)
    config_lib.validate(c)
    policy, _ = _architectures(c)
    config_lib.check_context(c, policy.max_position_embeddings,
                             f"config.model.hf_dir={c.model.hf_dir or 'the bundled SmolLM2'}")
    if flags.FLAGS.json and not pathlib.Path(flags.FLAGS.json).absolute().parent.is_dir():
        raise ValueError(f"--json={flags.FLAGS.json}: no such directory to write it in; a path "
                         "in an existing directory")


def main(argv: list[str]) -> None:
    del argv
    c = train_lib.CONFIG_FLAG.value
    try:
        check_inputs(c)
    except (ValueError, FileNotFoundError) as e:  # ConfigValueError and ConfigError too
        config_lib.usage_error(f"aot: {e}")
    try:
        if flags.FLAGS.search:
            results = search(c, flags.FLAGS.topology)
            for r in results:
                print(f"mesh {r['mesh']} micro {r['micro_batch_size']}{_flags(r)}: {_brief(r)}")
            best = results[0] if results and "error" not in results[0] else None
        else:
            best = results = plan(c, flags.FLAGS.topology)
    except DoesNotFit as e:
        sys.exit(f"aot: does not fit on {flags.FLAGS.topology}: {e}. The largest per-chip "
                 f"tensors are {'; '.join(e.largest)}. {SUGGESTIONS}")
    except (ValueError, FileNotFoundError, config_lib.ConfigValueError) as e:
        sys.exit(f"aot: {e}")
    if flags.FLAGS.json:
        pathlib.Path(flags.FLAGS.json).write_text(json.dumps(results, indent=2, default=str))
    if best is None:
        sys.exit("aot: no mesh shape and micro-batch size fits (see above)")
    print(report(best))
    if best.get("savers"):
        print(f"to fit, the search added{_flags(best)}")
    if not best["fits"]:
        sys.exit("aot: does not fit: the largest per-chip tensors are " + "; ".join(
            best["largest_tensors"]) + ". " + SUGGESTIONS)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "topology"])
    app.run(main, flags_parser=functools.partial(train_lib.parse_flags, program="aot"))
