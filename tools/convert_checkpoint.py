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
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from alphaalign_jax import checkpoint, export
from alphaalign_jax.models import from_pretrained, save_pretrained
from alphaalign_jax.models.hf_io import has_tokenizer_files


def hf_to_orbax(hf_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    model = from_pretrained(hf_dir)
    return checkpoint.save_model(out, model, tokenizer_dir=hf_dir)


def orbax_to_hf(ckpt: pathlib.Path, out: pathlib.Path, *, dtype: str | None = None,
                tokenizer_dir: pathlib.Path | None = None,
                max_shard_bytes: int = 4 << 30) -> pathlib.Path:
    _, stored_tokenizer = checkpoint.read_model_config(ckpt)
    model = checkpoint.load_model(ckpt)
    tok = tokenizer_dir or stored_tokenizer
    if tok is None or not has_tokenizer_files(tok):
        print(f"WARNING: {ckpt} names no usable tokenizer ({tok}); the export {out} will have "
              "none: pass --tokenizer-dir", file=sys.stderr)
        tok = None
    exported = save_pretrained(model, out, tokenizer_dir=tok, dtype=dtype,
                               max_shard_bytes=max_shard_bytes)
    run = export.run_of_checkpoint(ckpt)  # a step of a training workdir: the trained prompt,
    if run is not None and tok is not None:  # stop string and model card (export.py)
        export.write_run_files(pathlib.Path(exported), *run)
    return exported


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("hf-to-orbax", help="HF directory -> orbax checkpoint")
    a.add_argument("hf_dir", type=pathlib.Path)
    a.add_argument("out", type=pathlib.Path)
    b = sub.add_parser("orbax-to-hf", help="orbax checkpoint -> HF directory")
    b.add_argument("ckpt", type=pathlib.Path)
    b.add_argument("out", type=pathlib.Path)
    b.add_argument("--dtype", default=None, help="cast weights on export, e.g. bfloat16")
    b.add_argument("--tokenizer-dir", type=pathlib.Path, default=None)
    b.add_argument("--max-shard-gb", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.direction == "hf-to-orbax":
        out = hf_to_orbax(args.hf_dir, args.out)
    else:
        out = orbax_to_hf(args.ckpt, args.out, dtype=args.dtype, tokenizer_dir=args.tokenizer_dir,
                          max_shard_bytes=int(args.max_shard_gb * (1 << 30)))
    print(out)


if __name__ == "__main__":
    main()
