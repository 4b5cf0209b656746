"""What the plotting tools share: their command line (runs, --out) and a headless pyplot."""

from __future__ import annotations

import argparse
import pathlib


def plot_args(doc: str, runs_help: str,
              default_out: str | None = None) -> tuple[argparse.Namespace, object]:
    """(``args`` with ``.runs`` and ``.out``, ``matplotlib.pyplot`` on the Agg backend);
    ``--out`` is required unless there is a ``default_out``."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help=runs_help)
    p.add_argument("--out", type=pathlib.Path, required=default_out is None, default=default_out)
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return args, plt
