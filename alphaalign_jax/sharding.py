"""Device mesh and the logical-axis sharding rules, kept in one place.

Parameters and activations are annotated with *logical* axis names
("embed", "mlp", "heads", ...). ``LOGICAL_RULES`` maps each to physical mesh
axes. The mesh has three axes:

- ``data``: pure data parallelism (batch only);
- ``fsdp``: batch *and* parameter sharding (ZeRO-3 style);
- ``tensor``: Megatron-style tensor parallelism over heads / MLP / vocab.

A dimension that a mesh axis does not divide is replicated on that axis instead
(SmolLM2 has 9 heads: a 2-way tensor axis cannot split them evenly). Sharding
only changes layout, never the math, so the same code runs on 1 CPU, 8
simulated CPUs, a GPU host or a TPU pod slice.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis name -> mesh axes (None: replicated)
LOGICAL_RULES: dict[str, tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "layers": None,  # scan_layers' stacking axis: each chip holds its shard of every layer
    "seq": None,
    "cache_seq": None,
    "vocab": ("tensor",),
    "embed": ("fsdp",),
    "mlp": ("tensor",),
    "heads": ("tensor",),
    "kv_heads": ("tensor",),
    "head_dim": None,
    "norm": None,
    "classes": None,
    "lora_rank": None,  # an adapter's rank: small, never sharded
}


def make_mesh(shape: dict[str, int] | Sequence[int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a ``(data, fsdp, tensor)`` mesh.

    ``shape`` maps axis names to sizes; one size may be -1 (fill with the
    remaining devices). ``None`` puts every device on ``fsdp``.
    """
    devices = list(devices if devices is not None else jax.devices())
    if shape is None:
        shape = {"fsdp": -1}
    if not isinstance(shape, dict):
        shape = dict(zip(MESH_AXES, shape))
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh: unknown axes {sorted(unknown)}; valid axes are {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices are not divisible by {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh: shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                         f"devices, but {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_to_spec(logical: Sequence[str | None], shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None) -> PartitionSpec:
    """Map logical axis names to a PartitionSpec, replicating undivisible dims."""
    spec = []
    used: set[str] = set()
    for i, name in enumerate(logical):
        if name is None:
            spec.append(None)
            continue
        if name not in LOGICAL_RULES:
            raise KeyError(f"no sharding rule for logical axis '{name}'")
        axes = tuple(a for a in (LOGICAL_RULES[name] or ()) if a not in used)
        if mesh is not None:
            axes = tuple(a for a in axes if mesh.shape[a] > 1)
            if shape is not None and axes:
                if shape[i] % math.prod(mesh.shape[a] for a in axes):
                    axes = ()
        used.update(axes)
        spec.append(axes if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical: Sequence[str | None],
                   shape: Sequence[int] | None = None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical, shape, mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def shardings_of(tree):
    """The sharding of every array (or abstract array) in ``tree``."""
    return jax.tree.map(lambda x: x.sharding, tree)


def batch_sharding(mesh: Mesh, ndim: int, batch_size: int | None = None) -> NamedSharding:
    """Shard the leading (batch) axis over data x fsdp; other axes replicated."""
    shape = None if batch_size is None else (batch_size,) + (1,) * (ndim - 1)
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1), shape)


_ACTIVATIONS: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("activations",
                                                                          default=None)


@contextlib.contextmanager
def activations_over(mesh: Mesh | None) -> Iterator[None]:
    """While a program is traced under it, the model's hidden states keep their rows over
    data x fsdp (:func:`constrain_rows`). Without that XLA may instead gather the rows onto
    every chip to meet the fsdp-sharded weights, and each chip computes every row."""
    token = _ACTIVATIONS.set(mesh)
    try:
        yield
    finally:
        _ACTIVATIONS.reset(token)


def constrain_rows(x):
    """``x`` [rows, ...] with its rows over data x fsdp, when traced under
    :func:`activations_over`; else ``x`` as it is."""
    mesh = _ACTIVATIONS.get()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim, x.shape[0]))


def spread_micro_batches(mesh: Mesh | None):
    """``fn(x)`` for a ``[micro-batches, rows, ...]`` array: its rows over data x fsdp, the
    micro-batch axis whole, so that every micro-batch runs on every chip. Splitting a batch
    sharded by rows into micro-batches by a reshape puts each micro-batch on a few chips and
    the update then computes every row of it on each of them: for Qwen2.5-7B on a v5e-16,
    16 rows a chip instead of 1 and 14.5 GiB of temporaries (docs/tpu_plans.md)."""
    if mesh is None:
        return lambda x: x

    def constrain(x):
        return jax.lax.with_sharding_constraint(x, named_sharding(
            mesh, (None, "batch") + (None,) * (x.ndim - 2), x.shape))

    return constrain


def optimizer_shardings(tx, params, mesh: Mesh):
    """Shardings of ``tx.init(params)``: each moment buffer like its parameter (matched by
    path suffix and shape), everything else (step counts) replicated on the mesh."""
    by_path = {jax.tree_util.keystr(path): leaf
               for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}

    def one(path, leaf):
        key = jax.tree_util.keystr(path)
        for suffix, param in by_path.items():
            if key.endswith(suffix) and param.shape == leaf.shape:
                return param.sharding
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(one, jax.eval_shape(tx.init, params))


def init_optimizer(tx, params, mesh: Mesh):
    """``tx.init(params)`` placed by :func:`optimizer_shardings`."""
    return jax.jit(tx.init, out_shardings=optimizer_shardings(tx, params, mesh))(params)


def to_host(tree):
    """Device arrays to NumPy on every process.

    On one host this is ``jax.device_get``. In a multi-host run a batch-sharded array
    is not fully addressable from any one process, so it is all-gathered; every
    process then holds the same values and runs the same host-side code (decoding,
    rewards) on them.
    """
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)
