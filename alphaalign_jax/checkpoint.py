"""Orbax checkpoints of model parameters, shared by the converter, trainer and evaluator.

A checkpoint directory is an orbax composite with (at least) two items:

- ``params``: the model parameters (``StandardSave`` of a nested dict), restored
  straight onto their mesh shardings;
- ``model_config``: JSON with the HF ``config.json`` the parameters belong to
  and where the tokenizer lives, so a checkpoint is self-describing and loading
  it into a different model is a clear error rather than garbage.

Training checkpoints add more items (optimizer state, data position, RNG) in
the same directory, so every tool that reads parameters reads both kinds, and a
``MANIFEST`` of every file's size and SHA-256, written once the checkpoint is
complete and verified before it is trusted (``verify_manifest``).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh

from alphaalign_jax.models import ModelConfig, Transformer
from alphaalign_jax.models.hf_io import (
    TOKENIZER_FILES,
    CheckpointError,
    abstract_model,
    has_tokenizer_files,
    param_shardings,
)
from alphaalign_jax.models.transformer import rope_inv_freq

TOKENIZER_SUBDIR = "tokenizer"
MANIFEST = "alphaalign_manifest.json"


def _file_digests(path: pathlib.Path) -> dict[str, list]:
    digests = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(f, "rb") as handle:
            digests[str(f.relative_to(path))] = [f.stat().st_size,
                                                 hashlib.file_digest(handle, "sha256").hexdigest()]
    return digests


def write_manifest(path: str | pathlib.Path) -> pathlib.Path:
    """Record the size and SHA-256 of every file of a finished checkpoint."""
    path = pathlib.Path(path)
    tmp = path / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": _file_digests(path)}, indent=0))
    return tmp.replace(path / MANIFEST)


def has_manifest(path: str | pathlib.Path) -> bool:
    """Whether a checkpoint has been sealed with a manifest (no hashing)."""
    return (pathlib.Path(path) / MANIFEST).is_file()


def verify_manifest(path: str | pathlib.Path) -> list[str] | None:
    """What differs from the checkpoint's manifest ([] when intact), or None without one."""
    path = pathlib.Path(path)
    try:
        expected = json.loads((path / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError) as e:
        return [f"{MANIFEST} unreadable ({e})"]
    found = _file_digests(path)
    problems = [f"{name}: missing" for name in expected if name not in found]
    problems += [f"{name}: not in the manifest" for name in found if name not in expected]
    for name, (size, digest) in expected.items():
        if name in found and found[name] != [size, digest]:
            what = "size" if found[name][0] != size else "content (sha256)"
            problems.append(f"{name}: {what} differs")
    return problems


def param_dict(model: Transformer) -> dict:
    """Trainable parameters as a nested pure dict (what orbax stores)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def model_config_item(config: ModelConfig, tokenizer_dir: str | None) -> dict[str, Any]:
    return {"hf_config": config.hf_config, "tokenizer_dir": tokenizer_dir}


def save_model(path: str | pathlib.Path, model: Transformer, *,
               tokenizer_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write a standalone parameter checkpoint (tokenizer files copied inside)."""
    path = pathlib.Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"{path}: checkpoint directory already exists")
    if tokenizer_dir is not None and not has_tokenizer_files(tokenizer_dir):
        warnings.warn(f"{tokenizer_dir} has no tokenizer files: the checkpoint {path} will name "
                      "no tokenizer (give one with --tokenizer-dir when exporting or evaluating)",
                      stacklevel=2)
        tokenizer_dir = None
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    checkpointer.save(path, ocp.args.Composite(
        params=ocp.args.StandardSave(param_dict(model)),
        model_config=ocp.args.JsonSave(model_config_item(
            model.config, TOKENIZER_SUBDIR if tokenizer_dir else None))))
    if tokenizer_dir is not None:
        (path / TOKENIZER_SUBDIR).mkdir()
        for fname in TOKENIZER_FILES:
            src = pathlib.Path(tokenizer_dir) / fname
            if src.exists():
                shutil.copy2(src, path / TOKENIZER_SUBDIR / fname)
    return path


def read_model_config(path: str | pathlib.Path) -> tuple[ModelConfig, pathlib.Path | None]:
    """The model config stored in a checkpoint, and its tokenizer directory (if any)."""
    path = pathlib.Path(path).absolute()
    if not (path / "model_config").exists():
        raise CheckpointError(f"{path}: not an alphaalign checkpoint (no model_config item)")
    item = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
        path, ocp.args.Composite(model_config=ocp.args.JsonRestore()))["model_config"]
    config = ModelConfig.from_hf_dict(item["hf_config"], source=f"{path}/model_config")
    tok = item.get("tokenizer_dir")
    tok_path = None if tok is None else (path / tok if not pathlib.Path(tok).is_absolute()
                                         else pathlib.Path(tok))
    return config, tok_path


def load_model(path: str | pathlib.Path, *, dtype: str | jnp.dtype = "float32",
               param_dtype: str | jnp.dtype | None = None, mesh: Mesh | None = None,
               expect_config: ModelConfig | None = None) -> Transformer:
    """Restore a model from a checkpoint, placing parameters on ``mesh`` shardings.

    ``expect_config`` guards against restoring another model's checkpoint.
    """
    path = pathlib.Path(path).absolute()
    config, _ = read_model_config(path)
    if expect_config is not None and config != expect_config:
        raise CheckpointError(f"{path}: checkpoint is of a different model "
                              f"({config_diff(config, expect_config)})")
    dtype = jnp.dtype(dtype)
    model = abstract_model(config, dtype, jnp.dtype(param_dtype or dtype))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    if mesh is not None:
        shardings = param_shardings(params, mesh)
        target = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s),
                              nnx.to_pure_dict(params), nnx.to_pure_dict(shardings))
    else:
        target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype),
                              nnx.to_pure_dict(params))
    restored = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
        path, ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
    nnx.replace_by_pure_dict(params, restored)
    rest["inv_freq"].set_value(jnp.asarray(rope_inv_freq(config.rope, config.head_dim)))
    return nnx.merge(graphdef, params, rest)


def config_diff(a: ModelConfig, b: ModelConfig) -> str:
    """The architecture fields in which ``a`` and ``b`` differ, for error messages."""
    fields = [f for f in ("model_type", "vocab_size", "hidden_size", "intermediate_size",
                          "num_layers", "num_heads", "num_kv_heads", "head_dim",
                          "tie_word_embeddings", "rope")
              if getattr(a, f) != getattr(b, f)]
    return ", ".join(f"{f}: {getattr(a, f)} != {getattr(b, f)}" for f in fields) or "config differs"
