"""Convert between Hugging Face model directories and our orbax checkpoints.

    # HF directory -> orbax checkpoint
    python tools/convert_checkpoint.py hf-to-orbax assets/models/SmolLM2-135M-Instruct /tmp/smol_ckpt
    # orbax checkpoint (standalone or a training checkpoint step) -> HF directory
    python tools/convert_checkpoint.py orbax-to-hf /tmp/smol_ckpt /tmp/smol_hf [--dtype bfloat16]

The exported directory (config.json, safetensors, tokenizer files, chat
template) loads with ``transformers.AutoModelForCausalLM.from_pretrained``. From a training
checkpoint (``<workdir>/checkpoints/<step>``) its chat template renders the run's own prompt,
``generation_config.json`` stops at ``</answer>`` with the run's sampling, and README.md is a
model card (alphaalign_jax/export.py).

A checkpoint is verified before it is read (sealed, every file as its manifest says, not set
aside by a trainer). The output is written into a temporary directory beside it and renamed
into place when complete; a non-empty output directory is refused unless ``--overwrite``.
Every error of what was given is one line, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import warnings
from collections.abc import Callable

import jax.numpy as jnp

from alphaalign_jax import checkpoint, export
from alphaalign_jax import config as config_lib
from alphaalign_jax.models import CheckpointError, ConfigError, from_pretrained, save_pretrained
from alphaalign_jax.models.hf_io import has_tokenizer_files


class UsageError(ValueError):
    """A bad argument: one line, exit status 2, before anything is read or written."""


def _check_target(out: pathlib.Path, source: pathlib.Path, overwrite: bool) -> pathlib.Path:
    """The output directory: new or empty, or replaced with ``overwrite``; never the input
    or a directory holding it or inside it."""
    out, source = out.absolute(), source.absolute()
    if out == source or source in out.parents or out in source.parents:
        raise UsageError(f"out={out}: overlaps the input {source}; a directory apart from it")
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={out}: a file, not a directory; a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"out={out}: not empty; a new or empty directory, or --overwrite to "
                         "replace it")
    return out


def _write_into_place(out: pathlib.Path, write: Callable[[pathlib.Path], object]
                      ) -> pathlib.Path:
    """``write(tmp)`` into a temporary directory beside ``out``, renamed into place once it
    returns: a conversion cut short or failed leaves ``out`` as it was. An ``out`` being
    replaced is moved aside first and removed once the new one is in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    replaced = out.parent / f".{out.name}.replaced-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if out.exists():
            out.rename(replaced)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(replaced, ignore_errors=True)
    return out


def hf_to_orbax(hf_dir: pathlib.Path, out: pathlib.Path, *, overwrite: bool = False
                ) -> pathlib.Path:
    if not (pathlib.Path(hf_dir) / "config.json").is_file():
        raise UsageError(f"hf_dir={hf_dir}: no config.json; a Hugging Face model directory")
    out = _check_target(pathlib.Path(out), pathlib.Path(hf_dir), overwrite)
    model = from_pretrained(hf_dir)
    tokenizer_dir = hf_dir if has_tokenizer_files(hf_dir) else None
    if tokenizer_dir is None:  # named here: save_model sees the temporary directory
        warnings.warn(f"{hf_dir} has no tokenizer files: the checkpoint {out} will name no "
                      "tokenizer (give one with --tokenizer-dir when exporting or evaluating)",
                      stacklevel=2)
    return _write_into_place(out, lambda tmp: checkpoint.save_model(
        tmp, model, tokenizer_dir=tokenizer_dir))


def orbax_to_hf(ckpt: pathlib.Path, out: pathlib.Path, *, dtype: str | None = None,
                tokenizer_dir: pathlib.Path | None = None,
                max_shard_bytes: int = 4 << 30, overwrite: bool = False) -> pathlib.Path:
    checkpoint.verify_checkpoint(ckpt, "ckpt")
    out = _check_target(pathlib.Path(out), pathlib.Path(ckpt), overwrite)
    if tokenizer_dir is not None and not has_tokenizer_files(tokenizer_dir):
        raise UsageError(f"--tokenizer-dir={tokenizer_dir}: no tokenizer files (tokenizer.json, "
                         "tokenizer.model or vocab.json); a tokenizer's directory")
    _, stored_tokenizer = checkpoint.read_model_config(ckpt)
    model = checkpoint.load_model(ckpt)
    tok = tokenizer_dir or stored_tokenizer
    if tok is None or not has_tokenizer_files(tok):
        print(f"WARNING: {ckpt} names no usable tokenizer ({tok}); the export {out} will have "
              "none: pass --tokenizer-dir", file=sys.stderr)
        tok = None
    run = export.run_of_checkpoint(ckpt)  # a step of a training workdir: the trained prompt,

    def write(tmp: pathlib.Path) -> None:
        exported = save_pretrained(model, tmp, tokenizer_dir=tok, dtype=dtype,
                                   max_shard_bytes=max_shard_bytes)
        if run is not None and tok is not None:  # stop string and model card (export.py)
            export.write_run_files(pathlib.Path(exported), *run)

    return _write_into_place(out, write)


def _dtype(text: str) -> str:
    """An argparse type: a floating dtype name."""
    try:
        ok = jnp.issubdtype(jnp.dtype(text), jnp.floating)
    except TypeError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is not a floating dtype; float32, bfloat16 "
                                         "or float16")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = config_lib.OneLineParser(prog="convert_checkpoint", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("hf-to-orbax", help="HF directory -> orbax checkpoint")
    a.add_argument("hf_dir", type=pathlib.Path)
    a.add_argument("out", type=pathlib.Path)
    a.add_argument("--overwrite", action="store_true", help="replace a non-empty out")
    b = sub.add_parser("orbax-to-hf", help="orbax checkpoint -> HF directory")
    b.add_argument("ckpt", type=pathlib.Path)
    b.add_argument("out", type=pathlib.Path)
    b.add_argument("--dtype", type=_dtype, default=None,
                   help="cast weights on export, e.g. bfloat16")
    b.add_argument("--tokenizer-dir", type=pathlib.Path, default=None)
    b.add_argument("--max-shard-gb", type=config_lib.number(float, above=0), default=4.0)
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty out")
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # named with the options of the direction given
        {"hf-to-orbax": a, "orbax-to-hf": b}[args.direction].error(
            f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.direction == "hf-to-orbax":
            out = hf_to_orbax(args.hf_dir, args.out, overwrite=args.overwrite)
        else:
            out = orbax_to_hf(args.ckpt, args.out, dtype=args.dtype,
                              tokenizer_dir=args.tokenizer_dir,
                              max_shard_bytes=int(args.max_shard_gb * (1 << 30)),
                              overwrite=args.overwrite)
    except (UsageError, CheckpointError, ConfigError) as e:
        config_lib.usage_error(f"convert_checkpoint: {e}")
    except OSError as e:  # the output is left as it was (written aside, renamed when whole)
        if not checkpoint.disk_full(e):
            raise
        sys.exit(f"convert_checkpoint: {args.out}: the disk is full ({e}); it is as it was")
    print(out)


if __name__ == "__main__":
    main()
