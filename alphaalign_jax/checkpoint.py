"""Orbax checkpoints of model parameters, shared by the converter, trainer and evaluator.

A checkpoint directory is an orbax composite with (at least) two items:

- ``params``: the model parameters (``StandardSave`` of a nested dict), restored
  straight onto their mesh shardings;
- ``model_config``: JSON with the HF ``config.json`` the parameters belong to
  and where the tokenizer lives, so a checkpoint is self-describing and loading
  it into a different model is a clear error rather than garbage.

Training checkpoints (:class:`TrainCheckpoints`) add more items (optimizer
states, critic, data position) in the same directory, so every tool that reads
parameters reads both kinds, and a ``MANIFEST`` of every file's size and
SHA-256, written once the checkpoint is complete and verified before it is
trusted (``verify_manifest``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging
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
    return {"hf_config": config.hf_config, "scan_layers": config.scan_layers,
            "tokenizer_dir": tokenizer_dir}


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
    config = dataclasses.replace(
        ModelConfig.from_hf_dict(item["hf_config"], source=f"{path}/model_config"),
        scan_layers=bool(item.get("scan_layers", False)))
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
                          "tie_word_embeddings", "rope", "scan_layers")
              if getattr(a, f) != getattr(b, f)]
    return ", ".join(f"{f}: {getattr(a, f)} != {getattr(b, f)}" for f in fields) or "config differs"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions): the run stops."""


def _first_line(error: Exception, limit: int) -> str:
    """An exception as one short line (orbax and OS errors can run to hundreds)."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else repr(error)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


class TrainCheckpoints:
    """A training run's checkpoints: orbax's manager, plus what a long run needs.

    Every finished checkpoint is sealed with a manifest; one that fails it or cannot be read
    is set aside (moved, never deleted) and the previous one is used; a checkpoint of another
    model is refused naming the differing fields, before anything large is read; a failed
    write stops the run in one line naming the last good checkpoint.

    A checkpoint holds the run's pytrees (``state``: parameters, optimizer states), the
    ``model_config`` item and a JSON ``train_state`` (step, data position, seed).
    """

    def __init__(self, directory: pathlib.Path, *, model_config: ModelConfig,
                 hf_dir: pathlib.Path, max_to_keep: int, async_save: bool):
        self.directory = directory
        self.model_config = model_config
        self.hf_dir = hf_dir
        self.manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save))
        self._last_save: int | None = None  # the step a background write error belongs to

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def check_model(self, step: int | None) -> None:
        """Checkpoint ``step`` must be of the configured model (read from its small
        ``model_config`` item, before any large restore)."""
        if step is None:
            return
        try:
            found, _ = read_model_config(self.step_dir(step))
        except Exception:  # a damaged checkpoint: restore_latest verifies and sets it aside
            return
        if found.scan_layers != self.model_config.scan_layers:
            raise CheckpointError(
                f"{self.step_dir(step)}: checkpoint's layers are "
                f"{'stacked' if found.scan_layers else 'one a layer'}, but "
                f"config.model.scan_layers={self.model_config.scan_layers}; resume with "
                f"--config.model.scan_layers={found.scan_layers}")
        if found.hf_config != self.model_config.hf_config:
            raise CheckpointError(
                f"{self.step_dir(step)}: checkpoint is of a different model than "
                f"config.model.hf_dir={self.hf_dir} ({config_diff(found, self.model_config)}); "
                "use another --workdir, or the model it was trained from")

    def check_latest_model(self) -> None:
        self.check_model(self.manager.latest_step())

    def save(self, step: int, state: dict[str, Any], train_state: dict[str, Any],
             force: bool = False) -> None:
        self.seal()
        self._last_save = step
        try:
            self.manager.save(step, args=ocp.args.Composite(
                **{name: ocp.args.StandardSave(tree) for name, tree in state.items()},
                model_config=ocp.args.JsonSave(model_config_item(self.model_config,
                                                                 str(self.hf_dir))),
                train_state=ocp.args.JsonSave(train_state)), force=force)
        except Exception as e:
            raise self._write_error(step, e) from e

    def _write_error(self, step: int, error: Exception) -> CheckpointWriteError:
        good = [s for s in self.all_steps() if s != step and verify_manifest(self.step_dir(s)) == []]
        return CheckpointWriteError(
            f"could not write the checkpoint of step {step} to {self.directory}: "
            f"{_first_line(error, 300)}. The last good checkpoint is "
            + (f"step {max(good)}; re-run the same command to resume from it" if good
               else "none") + ".")

    def check_async_save(self, step: int, wait: bool = False) -> None:
        """A failed background write stops the run in one line: after every step (without
        waiting for a save in progress), or, with ``wait``, once it has finished."""
        try:
            if wait:
                self.manager.wait_until_finished()
            self.manager.check_for_errors()
        except Exception as e:  # the write that failed is the last one started
            raise self._write_error(step if self._last_save is None else self._last_save,
                                    e) from e

    def seal(self) -> None:
        """Wait for the asynchronous save and write the manifest of every checkpoint that
        lacks one (sealed checkpoints are not hashed again)."""
        self.check_async_save(0, wait=True)
        if jax.process_index() != 0:
            return
        for step in self.all_steps():
            if not has_manifest(self.step_dir(step)):
                write_manifest(self.step_dir(step))

    def last_good(self) -> str:
        self.seal()
        good = [s for s in self.all_steps() if not verify_manifest(self.step_dir(s))]
        return str(self.step_dir(max(good))) if good else "none"

    def _set_aside(self, step: int, reason: str) -> pathlib.Path:
        """Move a damaged checkpoint out of the manager's directory (never delete it)."""
        target = (self.directory.parent / "checkpoints_set_aside"
                  / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            self.step_dir(step).rename(target)
        self.manager.reload()
        logging.warning("checkpoint %s %s; moved to %s", self.step_dir(step), reason, target)
        return target

    def restore_latest(self, like: dict[str, Any]) -> tuple[dict[str, Any], dict] | None:
        """``(state, train_state)`` of the newest checkpoint that verifies and restores, its
        pytrees shaped and placed like ``like``; damaged ones are set aside with a warning and
        the previous one is used. None when there is none."""
        set_aside = []
        for step in sorted(self.all_steps(), reverse=True):
            problems = verify_manifest(self.step_dir(step))
            if problems:
                set_aside.append((step, self._set_aside(
                    step, "fails verification: " + "; ".join(problems[:3]))))
                continue
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    **{name: ocp.args.StandardRestore(_abstract(tree))
                       for name, tree in like.items()},
                    model_config=ocp.args.JsonRestore(), train_state=ocp.args.JsonRestore()))
            except Exception as e:  # orbax raises many kinds for a truncated or torn file
                set_aside.append((step, self._set_aside(
                    step, f"cannot be read ({_first_line(e, 200)})")))
                continue
            if restored["model_config"]["hf_config"] != self.model_config.hf_config:
                self.check_model(step)  # raises, naming the differing fields
            if set_aside:
                logging.warning("resumed from the previous good checkpoint %s (step %d) "
                                "instead of step %s, set aside in %s", self.step_dir(step),
                                step, set_aside[0][0], set_aside[0][1])
            else:
                logging.warning("resumed from %s at step %d", self.directory, step)
            return {name: restored[name] for name in like}, restored["train_state"]
        if set_aside:
            logging.warning("no checkpoint could be used (set aside: %s); starting from step 0",
                            ", ".join(str(p) for _, p in set_aside))
        return None
