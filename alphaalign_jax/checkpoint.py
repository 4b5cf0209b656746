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
import errno
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

from alphaalign_jax.models import LoraConfig, ModelConfig, Transformer, trainable
from alphaalign_jax.models.hf_io import (
    TOKENIZER_FILES,
    CheckpointError,
    abstract_model,
    from_pretrained,
    has_tokenizer_files,
    param_shardings,
)
from alphaalign_jax.models.transformer import rope_inv_freq

TOKENIZER_SUBDIR = "tokenizer"
MANIFEST = "alphaalign_manifest.json"
SET_ASIDE = "checkpoints_set_aside"  # beside checkpoints/: damaged or unverifiable ones


def _file_digests(path: pathlib.Path) -> dict[str, list]:
    digests = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(f, "rb") as handle:
            digests[str(f.relative_to(path))] = [f.stat().st_size,
                                                 hashlib.file_digest(handle, "sha256").hexdigest()]
    return digests


def write_manifest(path: str | pathlib.Path) -> pathlib.Path:
    """Record the size and SHA-256 of every file of a finished checkpoint. Written aside and
    renamed, so a checkpoint is sealed whole or not at all (a full disk leaves no half)."""
    path = pathlib.Path(path)
    tmp = path / (MANIFEST + ".tmp")
    try:
        tmp.write_text(json.dumps({"files": _file_digests(path)}, indent=0))
        return tmp.replace(path / MANIFEST)
    finally:
        tmp.unlink(missing_ok=True)


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


def verify_checkpoint(path: str | pathlib.Path, field: str) -> pathlib.Path:
    """An orbax checkpoint a tool may read: not set aside by a trainer, sealed, and every file
    as its manifest says. Anything else is a :class:`CheckpointError` naming the check that
    failed (an unsealed checkpoint's write may have been cut short: nothing vouches for it)."""
    path = pathlib.Path(path).absolute()
    if not path.exists():
        raise CheckpointError(f"{field}={path}: no such file or directory")
    if SET_ASIDE in path.parts:
        entry = pathlib.Path(*path.parts[:path.parts.index(SET_ASIDE) + 2])
        try:
            why = json.loads(entry.with_name(entry.name + ".json").read_text())["reason"]
        except (OSError, ValueError, KeyError, TypeError):
            why = "damaged or unverifiable"
        raise CheckpointError(f"{field}={path}: set aside by the trainer ({why}); use a "
                              "checkpoint under the run's checkpoints/")
    if not (path / "model_config").exists():
        raise CheckpointError(f"{field}={path}: not an alphaalign checkpoint (no model_config "
                              "item); a run's checkpoints/<step> or hf-to-orbax's output")
    problems = verify_manifest(path)
    if problems is None:
        raise CheckpointError(f"{field}={path}: unsealed (no {MANIFEST}): its write did not "
                              "finish or it was changed since, so nothing verifies it; use a "
                              "sealed checkpoint")
    if problems:
        raise CheckpointError(f"{field}={path}: fails verification ({'; '.join(problems[:3])})"
                              "; use an intact checkpoint")
    return path


def param_dict(model: Transformer) -> dict:
    """Trained parameters as a nested pure dict (what orbax stores): under LoRA the adapters
    alone (the frozen base is read from its Hugging Face directory), else every weight."""
    return nnx.to_pure_dict(nnx.state(model, trainable(model.config)))


def model_config_item(config: ModelConfig, tokenizer_dir: str | None,
                      base_dir: str | None = None) -> dict[str, Any]:
    """The checkpoint's ``model_config`` item. A LoRA checkpoint also names ``base_dir``,
    the Hugging Face directory of the frozen weights its adapters sit on."""
    if config.lora is not None and base_dir is None:
        raise ValueError("a LoRA model's checkpoint needs the base model's directory")
    return {"hf_config": config.hf_config, "scan_layers": config.scan_layers,
            "tokenizer_dir": tokenizer_dir,
            "lora": None if config.lora is None else dataclasses.asdict(config.lora),
            "base_dir": None if config.lora is None else str(base_dir)}


def _model_config_item(path: pathlib.Path) -> dict[str, Any]:
    if not (path / "model_config").exists():
        raise CheckpointError(f"{path}: not an alphaalign checkpoint (no model_config item)")
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
        path, ocp.args.Composite(model_config=ocp.args.JsonRestore()))["model_config"]


def save_model(path: str | pathlib.Path, model: Transformer, *,
               tokenizer_dir: str | pathlib.Path | None = None,
               base_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """Write a standalone parameter checkpoint (tokenizer files copied inside); a LoRA
    model's holds its adapters and names ``base_dir``, the frozen weights' HF directory."""
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
            model.config, TOKENIZER_SUBDIR if tokenizer_dir else None, base_dir))))
    if tokenizer_dir is not None:
        (path / TOKENIZER_SUBDIR).mkdir()
        for fname in TOKENIZER_FILES:
            src = pathlib.Path(tokenizer_dir) / fname
            if src.exists():
                shutil.copy2(src, path / TOKENIZER_SUBDIR / fname)
    write_manifest(path)  # last: a checkpoint cut short is never sealed
    return path


def read_model_config(path: str | pathlib.Path) -> tuple[ModelConfig, pathlib.Path | None]:
    """The model config stored in a checkpoint, and its tokenizer directory (if any)."""
    path = pathlib.Path(path).absolute()
    config, item = _stored_config(path)
    tok = item.get("tokenizer_dir")
    tok_path = None if tok is None else (path / tok if not pathlib.Path(tok).is_absolute()
                                         else pathlib.Path(tok))
    return config, tok_path


def _stored_config(path: pathlib.Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The checkpoint's model config, and its ``model_config`` item as stored."""
    item = _model_config_item(path)
    lora = item.get("lora")
    config = dataclasses.replace(
        ModelConfig.from_hf_dict(item["hf_config"], source=f"{path}/model_config"),
        scan_layers=bool(item.get("scan_layers", False)),
        lora=None if lora is None else LoraConfig(lora["rank"], lora["alpha"],
                                                  tuple(lora["targets"])))
    return config, item


def load_model(path: str | pathlib.Path, *, dtype: str | jnp.dtype = "float32",
               param_dtype: str | jnp.dtype | None = None, mesh: Mesh | None = None,
               expect_config: ModelConfig | None = None) -> Transformer:
    """Restore a model from a checkpoint, placing parameters on ``mesh`` shardings.

    ``expect_config`` guards against restoring another model's checkpoint.
    """
    path = pathlib.Path(path).absolute()
    config, item = _stored_config(path)
    if expect_config is not None and config != expect_config:
        raise CheckpointError(f"{path}: checkpoint is of a different model "
                              f"({config_diff(config, expect_config)})")
    dtype = jnp.dtype(dtype)
    param_dtype = jnp.dtype(param_dtype or dtype)
    if config.lora is None:
        model = abstract_model(config, dtype, param_dtype)
    else:  # the frozen base from its directory, the adapters from the checkpoint
        base = pathlib.Path(item["base_dir"])
        if not (base / "config.json").is_file():
            raise CheckpointError(f"{path}: a LoRA checkpoint whose base model directory "
                                  f"{base} is gone; the adapters need its weights")
        model = from_pretrained(base, dtype, mesh, param_dtype=param_dtype, config=config)
    graphdef, params, rest = nnx.split(model, trainable(config), ...)
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
                          "tie_word_embeddings", "rope", "scan_layers", "lora")
              if getattr(a, f) != getattr(b, f)]
    return ", ".join(f"{f}: {getattr(a, f)} != {getattr(b, f)}" for f in fields) or "config differs"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions): the run stops."""


def disk_full(error: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is a full disk or quota (orbax wraps the
    OS error in its own)."""
    for _ in range(20):
        if error is None:
            return False
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def first_line(error: Exception, limit: int) -> str:
    """An exception as one short line (orbax and OS errors can run to hundreds)."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else repr(error)


def _abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def saved_steps(directory: pathlib.Path) -> list[int]:
    """The steps of a run's checkpoint directory, from its listing (orbax's in-progress
    ``<step>.orbax-checkpoint-tmp-*`` directories are not steps)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir())


class TrainCheckpoints:
    """A training run's checkpoints: orbax's manager, plus what a long run needs.

    Every checkpoint this process writes is sealed with a manifest as soon as its write ends;
    one found without a manifest (its write was cut short, or it was changed since) or failing
    it is set aside (moved, never deleted) and never sealed later, and the newest verified one
    is used. Old checkpoints are removed only once ``max_to_keep`` newer ones are sealed, so a
    kill at any point leaves a verified one. A checkpoint of another model is refused naming
    the differing fields, before anything large is read; a failed write stops the run in one
    line naming the last good checkpoint, which it leaves intact.

    A checkpoint holds the run's pytrees (``state``: parameters, optimizer states), the
    ``model_config`` item and a JSON ``train_state`` (step, data position, seed).
    """

    def __init__(self, directory: pathlib.Path, *, model_config: ModelConfig,
                 hf_dir: pathlib.Path, max_to_keep: int, async_save: bool):
        self.directory = directory
        self.model_config = model_config
        self.hf_dir = hf_dir
        self.max_to_keep = max_to_keep
        self.async_save = async_save
        self._manager: ocp.CheckpointManager | None = None
        self._last_save: int | None = None  # the step a background write error belongs to
        self._unsealed: list[int] = []  # written by this process, manifest still to write
        self.keep_also: set[int] = set()  # steps rotation never removes (the selected one)

    @property
    def manager(self) -> ocp.CheckpointManager:
        """Made on first use: orbax creates the directory, and a run writes nothing into its
        workdir before its inputs are checked. Rotation is ours (:meth:`_rotate`)."""
        if self._manager is None:
            self._manager = ocp.CheckpointManager(self.directory, options=(
                ocp.CheckpointManagerOptions(max_to_keep=None, cleanup_tmp_directories=True,
                                             enable_async_checkpointing=self.async_save)))
        return self._manager

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
        if found.lora != self.model_config.lora:
            raise CheckpointError(
                f"{self.step_dir(step)}: checkpoint was trained "
                + (f"with LoRA (rank {found.lora.rank}, alpha {found.lora.alpha}, targets "
                   f"{list(found.lora.targets)})" if found.lora else "without LoRA")
                + " but config.model.lora_rank="
                + f"{self.model_config.lora.rank if self.model_config.lora else 0}; resume with "
                + (f"--config.model.lora_rank={found.lora.rank} and its alpha and targets"
                   if found.lora else "--config.model.lora_rank=0"))
        if found.hf_config != self.model_config.hf_config:
            raise CheckpointError(
                f"{self.step_dir(step)}: checkpoint is of a different model than "
                f"config.model.hf_dir={self.hf_dir} ({config_diff(found, self.model_config)}); "
                "use another --workdir, or the model it was trained from")

    def check_latest_model(self) -> None:
        """:meth:`check_model` of the newest checkpoint, from the directory's listing: makes
        no manager, so it writes nothing."""
        steps = saved_steps(self.directory)
        self.check_model(steps[-1] if steps else None)

    def save(self, step: int, state: dict[str, Any], train_state: dict[str, Any],
             force: bool = False) -> None:
        self.seal()
        self._last_save = step
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(
                **{name: ocp.args.StandardSave(tree) for name, tree in state.items()},
                model_config=ocp.args.JsonSave(model_config_item(
                    self.model_config, str(self.hf_dir), str(self.hf_dir))),
                train_state=ocp.args.JsonSave(train_state)), force=force)
        except Exception as e:
            raise self._write_error(step, e) from e
        if saved:
            self._unsealed.append(step)
        if not self.async_save:
            self._seal_written()

    def _write_error(self, step: int, error: Exception) -> CheckpointWriteError:
        good = [s for s in saved_steps(self.directory)
                if s != step and verify_manifest(self.step_dir(s)) == []]
        cause = (f"the disk is full ({first_line(error, 200)})" if disk_full(error)
                 else first_line(error, 300))
        return CheckpointWriteError(
            f"could not write the checkpoint of step {step} to {self.directory}: {cause}. "
            "The last good checkpoint is "
            + (f"step {max(good)}; it is intact: " if good else "none; ")
            + ("free space, then " if disk_full(error) else "")
            + ("re-run the same command to resume from it." if good
               else "re-run the same command to start again."))

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
        """Wait for the save in flight, then seal what this process wrote. A checkpoint found
        unsealed at start is never sealed: nothing says its files are the ones written."""
        if self._manager is None:
            return
        self.check_async_save(0, wait=True)
        self._seal_written()

    def seal_finished(self, step: int) -> None:
        """After a step: stop on a failed background write, and seal a finished one without
        waiting for one in progress (the sooner sealed, the less a kill sets aside)."""
        self.check_async_save(step)
        if not self.manager.is_saving_in_progress():
            self._seal_written()

    def _seal_written(self) -> None:
        for step in self._unsealed:
            # a write that raised is reported by check_async_save; its step has no directory
            if jax.process_index() == 0 and self.step_dir(step).is_dir():
                try:
                    write_manifest(self.step_dir(step))
                except OSError as e:
                    raise self._write_error(step, e) from e
        self._unsealed = []
        self._rotate()

    def _rotate(self) -> None:
        """Remove the checkpoints older than the newest ``max_to_keep`` sealed ones, except
        those of ``keep_also``."""
        steps = self.all_steps()
        sealed = [s for s in steps if has_manifest(self.step_dir(s))]
        if len(sealed) <= self.max_to_keep:
            return
        oldest_kept = sorted(sealed)[-self.max_to_keep]
        for step in (s for s in steps if s < oldest_kept and s not in self.keep_also):
            if jax.process_index() == 0:
                shutil.rmtree(self.step_dir(step))
        self.manager.reload()

    def last_good(self) -> str:
        self.seal()
        good = [s for s in self.all_steps() if verify_manifest(self.step_dir(s)) == []]
        return str(self.step_dir(max(good))) if good else "none"

    def _set_aside(self, step: int, reason: str) -> pathlib.Path:
        """Move a damaged checkpoint out of the manager's directory (never delete it), with a
        note of why beside it (``<name>.json``, read by :func:`verify_checkpoint`)."""
        target = self.directory.parent / SET_ASIDE / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target = next(t for t in (target.with_name(f"{target.name}{s}") for s in
                                  ("", *(f"-{i}" for i in range(1, 1000)))) if not t.exists())
        if jax.process_index() == 0:
            target.parent.mkdir(exist_ok=True)
            self.step_dir(step).rename(target)
            target.with_name(target.name + ".json").write_text(json.dumps(
                {"step": step, "from": str(self.step_dir(step)), "reason": reason}))
        self.manager.reload()
        logging.warning("checkpoint %s %s; moved to %s", self.step_dir(step), reason, target)
        return target

    def restore_latest(self, like: dict[str, Any]) -> tuple[dict[str, Any], dict] | None:
        """``(state, train_state)`` of the newest checkpoint that verifies, its pytrees shaped
        and placed like ``like``; the newer ones that do not verify are set aside with a
        warning. None when there is none. A verified checkpoint that does not restore is
        refused, not set aside: its files are as written, so the run's state differs."""
        set_aside = []
        for step in sorted(self.all_steps(), reverse=True):
            problems = verify_manifest(self.step_dir(step))
            if problems is None:
                problems = [f"no {MANIFEST}: its write was cut short or it was changed since, "
                            "so nothing verifies it"]
            if problems:
                set_aside.append((step, self._set_aside(
                    step, "fails verification: " + "; ".join(problems[:3]))))
                continue
            self.check_model(step)  # raises, naming the differing fields
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    **{name: ocp.args.StandardRestore(_abstract(tree))
                       for name, tree in like.items()},
                    model_config=ocp.args.JsonRestore(), train_state=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 (orbax raises many kinds)
                raise CheckpointError(
                    f"{self.step_dir(step)}: verified, but does not restore into this run's "
                    f"state ({first_line(e, 200)}); resume with the settings the run was made "
                    "with (its config.json), or use another --workdir") from None
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
